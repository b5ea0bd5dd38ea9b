"""edgeresnet: Keras ResNets to int8 TFLite for CPU (XNNPACK), Coral Edge TPU and mobile GPU.

Importing this package is cheap: TensorFlow is imported only by the functions
that need it (see ``edgeresnet._util.tf``).
"""

__version__ = "0.1.0"
