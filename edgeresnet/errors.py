"""The project's own exceptions.

Library code raises these and never prints or exits; ``edgeresnet.cli`` turns
them into one-line messages. Every message names what was received and what to
do about it, on one line.
"""

from __future__ import annotations


class EdgeResNetError(Exception):
    """Base class: something the user can fix; the message says how."""

    exit_code = 2

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


class PruningError(EdgeResNetError):
    """Pruning cannot be applied to this model or with these settings."""


class QATError(EdgeResNetError):
    """Quantization-aware training cannot be applied to this model (Keras 3, layers tfmot cannot quantize)."""


class TFLiteFileError(EdgeResNetError):
    """A file is not a TFLite flatbuffer, or cannot be loaded by any interpreter."""


class DriftBudgetExceeded(EdgeResNetError):
    """A model's accuracy drop exceeds ``--max-drop``; the report was still written."""

    exit_code = 3


class EdgeResNetWarning(UserWarning):
    """Something worth telling the user that does not stop the run (the CLI prints it as one line)."""
