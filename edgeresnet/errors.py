"""The project's own exceptions.

Library code raises these and never prints or exits; ``edgeresnet.cli`` turns
them into one-line messages. Every message names what was received and what to
do about it, on one line.
"""

from __future__ import annotations

# Exit codes of the ``edgeresnet`` command (README, "Exit codes": one row per code).
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: "internal error: ..." (EDGERESNET_DEBUG=1 shows the traceback)
EXIT_USAGE = 2  # bad input or settings, refused (before any work where it can be told)
EXIT_FAILED = 3  # a model failed to convert or a check, or exceeded --max-drop: the report is in OUT.failed
EXIT_INCOMPATIBLE = 4  # inspect --strict: the model would not run on every target
EXIT_DEVICE_CHECK = 5  # --device-check could not evaluate a model on the device
EXIT_SIGINT = 130  # Ctrl-C (128 + SIGINT)
EXIT_SIGTERM = 143  # SIGTERM (128 + SIGTERM)


def exit_codes() -> dict[str, int]:
    """Every exit code the command can return, by constant name."""
    return {name: value for name, value in globals().items() if name.startswith("EXIT_") and isinstance(value, int)}


class EdgeResNetError(Exception):
    """Base class: something the user can fix; the message says how."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str):
        # One line, always: the CLI prints str(exc) as-is.
        super().__init__(" ".join(str(message).split()))


class MissingDependencyError(EdgeResNetError):
    """An optional package (TensorFlow, tf-keras, an interpreter) is not installed."""


class ModelLoadError(EdgeResNetError):
    """A model file is missing, corrupt, or of a kind we cannot read."""


class UnsafeModelError(ModelLoadError):
    """A model file carries code (Lambda bytecode, custom classes, file or process ops) and was not trusted."""


class DataError(EdgeResNetError):
    """Calibration, evaluation or training data is missing, empty or unusable."""


class ConfigError(EdgeResNetError):
    """A setting is out of range or settings contradict each other."""


class TargetError(ConfigError):
    """An unknown deployment target, or a target that cannot take this model."""


class OutputError(EdgeResNetError):
    """--out cannot be used (it would touch the user's files) or cannot be written."""


class OutputExistsError(OutputError):
    """The output already exists and --overwrite was not given (or may not replace it)."""


class ClusterError(EdgeResNetError):
    """The fine-tuning cluster described by TF_CONFIG cannot be formed (a worker never answered)."""


class ConversionError(EdgeResNetError):
    """The TFLite converter failed, or its output does not run in an interpreter."""

    exit_code = EXIT_FAILED


class PruningError(EdgeResNetError):
    """Pruning cannot be applied to this model or with these settings."""


class QATError(EdgeResNetError):
    """Quantization-aware training cannot be applied to this model (Keras 3, layers tfmot cannot quantize)."""


class TFLiteFileError(EdgeResNetError):
    """A file is not a TFLite flatbuffer, or cannot be loaded by any interpreter."""


class DriftBudgetExceeded(EdgeResNetError):
    """A model's accuracy drop exceeds ``--max-drop``; the report was still written."""

    exit_code = EXIT_FAILED


class BudgetNotMet(EdgeResNetError):
    """``optimize``: no measured candidate meets every budget; the message names the closest one."""

    exit_code = EXIT_FAILED


class DeviceCheckError(EdgeResNetError):
    """``--device-check`` could not evaluate a model on the device (it crashed, hung or gave no result)."""

    exit_code = EXIT_DEVICE_CHECK


class EdgeResNetWarning(UserWarning):
    """Something worth telling the user that does not stop the run (the CLI prints it as one line)."""
