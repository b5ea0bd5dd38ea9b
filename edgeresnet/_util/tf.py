"""Lazy, single entry point to TensorFlow and tf_keras.

tensorflow-model-optimization only prunes tf_keras (Keras 2) models, so
``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first imported. Every
module that needs TensorFlow calls :func:`tf` / :func:`tf_keras` inside its
functions, never at import time, so ``edgeresnet --help`` stays fast and the
device-side modules (runtime, inspect) work without TensorFlow installed.
"""

from __future__ import annotations

import os
import sys

from edgeresnet.errors import MissingDependencyError

_HOST_HINT = "install the host extras: pip install 'edgeresnet[host]'"


#: What ``convert`` and ``report`` import; a device install (edgeresnet[device]) has none of them.
HOST_MODULES = ("tensorflow", "tf_keras", "h5py")


def require_host(command: str) -> None:
    """Raise MissingDependencyError naming what is missing when the host packages are not installed.

    Looks the modules up without importing them, so it costs nothing on a host.
    """
    import importlib.util

    missing = []
    for name in HOST_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: blocked (sys.modules[name] is None)
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise MissingDependencyError(
            f"{command} needs the host install ({', '.join(missing)} not installed here; this looks like "
            "a device install, which runs inspect and bench): pip install 'edgeresnet[host]'"
        )


def _prepare_env() -> None:
    if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        # Too late to switch tf.keras to tf_keras; we use tf_keras explicitly anyway.
        return
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tf():
    """Return the ``tensorflow`` module, imported with legacy Keras enabled."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    _prepare_env()
    from edgeresnet._util.capture import capture_output

    # TensorFlow's C++ side logs start-up notices (CUDA probing, CPU features,
    # absl) straight to the terminal; keep them out of the user's output.
    with capture_output():
        try:
            import tensorflow
        except ImportError as exc:  # pragma: no cover - depends on the install
            failure = exc
        else:
            failure = None
            # The CUDA probe ("failed call to cuInit" on a machine without a GPU) runs on the first device
            # query; do it here, inside the capture. Listing physical devices does not start the runtime, so
            # a fine-tuning cluster can still be joined afterwards.
            tensorflow.config.list_physical_devices("GPU")
    if failure is not None:
        raise MissingDependencyError(f"TensorFlow is not installed ({failure}); {_HOST_HINT}")
    return tensorflow


def tf_keras():
    """Return the ``tf_keras`` (Keras 2) module."""
    tf()
    try:
        import tf_keras as keras2
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError(f"tf-keras is not installed ({exc}); {_HOST_HINT}") from None
    return keras2


def tfmot():
    """Return ``tensorflow_model_optimization``."""
    tf_keras()
    try:
        import tensorflow_model_optimization as mot
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError(
            f"tensorflow-model-optimization is not installed ({exc}); {_HOST_HINT}"
        ) from None
    return mot
