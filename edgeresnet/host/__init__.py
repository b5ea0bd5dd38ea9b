"""The host side: needs TensorFlow (models, training, quantization, the convert pipeline)."""
