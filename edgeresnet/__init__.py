"""edgeresnet: Keras ResNets to int8 TFLite for CPU (XNNPACK), Coral Edge TPU and mobile GPU.

Importing this package is cheap and imports no TensorFlow: the public API
below is an index, each name imported on first use (PEP 562). ``convert`` and
``report`` need TensorFlow when called; ``inspect``, ``predict``,
``Classifier`` and ``benchmark`` never import it (see docs/api.md)::

    import edgeresnet

    run = edgeresnet.convert(int8=True, targets=["cpu", "edgetpu"], out="out")
    info = edgeresnet.inspect(run.variants[0].path)
    print(edgeresnet.benchmark(run.variants[0].path, repeats=20).median_ms)
"""

from edgeresnet.errors import (
    BudgetNotMet,
    ClusterError,
    ConfigError,
    ConversionError,
    DataError,
    DeviceCheckError,
    DriftBudgetExceeded,
    EdgeResNetError,
    EdgeResNetWarning,
    MissingDependencyError,
    ModelLoadError,
    OutputError,
    OutputExistsError,
    PruningError,
    QATError,
    TargetError,
    TFLiteFileError,
    UnsafeModelError,
)

__version__ = "0.1.0"

# name -> the module that defines it, imported on first access.
_LAZY = {
    "convert": "edgeresnet.api",
    "optimize": "edgeresnet.api",
    "inspect": "edgeresnet.api",
    "predict": "edgeresnet.api",
    "benchmark": "edgeresnet.api",
    "Classifier": "edgeresnet.device.predict",
    "ConvertOptions": "edgeresnet.host.pipeline",
}

# ``report`` is the edgeresnet.report package, which is callable: edgeresnet.report(...) is edgeresnet.api.report.
__all__ = [
    "convert", "report", "optimize", "inspect", "predict", "Classifier", "benchmark", "ConvertOptions",
    "EdgeResNetError", "ClusterError", "ConfigError", "ConversionError", "DataError", "DeviceCheckError",
    "DriftBudgetExceeded", "BudgetNotMet",
    "MissingDependencyError", "ModelLoadError", "OutputError", "OutputExistsError", "PruningError", "QATError",
    "TargetError", "TFLiteFileError", "UnsafeModelError", "EdgeResNetWarning",
    "__version__",
]


def __getattr__(name: str):
    import importlib

    if name == "report":
        return importlib.import_module("edgeresnet.report")  # importing it sets the attribute: asked once
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgeresnet' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
