"""What ``edgeresnet convert`` can be asked: :class:`ConvertOptions`, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgeresnet._util.validate import is_whole, whole_number
from edgeresnet.errors import ConfigError
from edgeresnet.defaults import DEFAULT_SAMPLES, RESIZE_POLICIES, require_train_for_qat
from edgeresnet.host.converter import QAT_METHOD, ConversionSpec
from edgeresnet.host.device_check import DEVICES
from edgeresnet.host.quantize.registry import DEFAULT_METHOD
from edgeresnet.report import DEFAULT_FORMATS, check_formats
from edgeresnet.targets import PRECISIONS, Target, get_target, target_names

DEFAULT_OUT = "edgeresnet-out"


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``edgeresnet convert`` can be asked; validated on construction."""

    model: Optional[str] = None  # None: the built-in reference ResNet
    targets: tuple[str, ...] = ("cpu",)
    int8: bool = False
    precision: Optional[str] = None
    io_type: Optional[str] = None
    calib: Optional[str] = None
    calib_samples: int = DEFAULT_SAMPLES
    seed: int = 0
    preset: Optional[str] = None
    resize: str = "crop"
    fold_preprocessing: bool = False
    eval: Optional[str] = None
    eval_samples: Optional[int] = None
    max_drop: Optional[float] = None
    out: str = DEFAULT_OUT
    overwrite: bool = False
    prune: Optional[object] = None  # a prune.PruneConfig: how pruned variants are made
    train: Optional[str] = None
    int8_method: str = DEFAULT_METHOD  # a name in the quantize method registry: how int8 ranges and weights are chosen
    recover: bool = True  # over --max-drop: return the worst layers to float (targets that allow it)
    strict: bool = False  # target compatibility checks (Edge TPU mapping, GPU screen) fail the run
    trust_model_code: bool = False  # load Lambda layers, custom classes, file ops: the model's code runs here
    labels: Optional[str] = None  # --labels FILE: class names in output order, class folders matched by name (else the folders)
    device_check: Optional[str] = None  # "pi": evaluate every emitted model inside the emulated Raspberry Pi
    jobs: int = 1  # conversions run in this many child processes at once (edgeresnet.host.pipeline.parallel)
    formats: tuple[str, ...] = DEFAULT_FORMATS  # report writers (json, md, csv, png, html); `report` writes all
    weights: Optional[str] = None  # a zoo MODEL: a local .h5 to load by layer name
    classes: Optional[int] = None  # a zoo MODEL: a new classifier for N classes, fine-tuned on --train
    input_size: Optional[int] = None  # a zoo MODEL: square input side (default: the architecture's)
    transfer: Optional[object] = None  # a transfer.TransferConfig for --classes (epochs, batch, learning rate)
    qat: Optional[object] = None  # a qat.QATConfig: also emit quantization-aware fine-tuned int8 models
    cluster: Optional[object] = None  # a clustering.ClusterConfig: every emitted model's kernels clustered (--cluster N)
    timing_only: bool = False  # `report` of a zoo MODEL with random weights: sizes and latency, no accuracy
    # Fine-tune (pruning, --qat, --classes) in a child process, whose training memory dies with it. None: when the
    # model's input is at least finetune.CHILD_TRAINING_MIN_SIDE pixels a side, it is not on a cluster, and its
    # layers are tf_keras built-ins (train_data.portable); below that the pool is small and the child's start (a
    # TensorFlow import, ~5 s) would dominate.
    train_in_child: Optional[bool] = None
    # The fine-tuning batch for pruning, --qat, --cluster and --classes, as given (--batch-size). None: each
    # config's batch, lowered where needed to keep fine-tuning under the memory bound (memory.choose_batch; not on
    # a cluster).
    batch_size: Optional[int] = None

    def __post_init__(self):
        for check in _CHECKS:  # in this order: the first problem found is the one said
            check(self)

    def variant_plan(self) -> list[tuple[Target, ConversionSpec]]:
        """One (target, spec) per requested target."""
        plan = []
        for name in self.targets:
            target = get_target(name)
            precision = target.precision_for(self.int8 or self.qat is not None, self.precision)
            integer_io = PRECISIONS[precision].integer_only
            io = target.io_type_for(precision, self.io_type if integer_io else None)
            plan.append((target, ConversionSpec(precision=precision, io_type=io, method=self.int8_method)))
        return plan


def _check_run(o: ConvertOptions) -> None:
    """Report formats, batch, jobs, targets and seed."""
    check_formats(o.formats)
    if o.batch_size is not None:
        whole_number("--batch-size", o.batch_size, 1)
    whole_number("--jobs", o.jobs, 1)
    if not o.targets:
        raise ConfigError(f"no target given; pass --target with one of {', '.join(target_names())}")
    names = [get_target(name).name for name in o.targets]  # raises TargetError with a suggestion
    if len(set(names)) != len(names):  # names are case-insensitive: cpu and CPU are one target
        raise ConfigError(f"a target is repeated in {list(o.targets)}; give each once")
    whole_number("--seed", o.seed, 0)


def _check_precision_and_data(o: ConvertOptions) -> None:
    """--int8 against --precision, the sample counts, --max-drop, the precision's name, --resize."""
    if o.int8 and o.precision not in (None, "int8"):
        raise ConfigError(
            f"--int8 and --precision {o.precision} contradict each other (--int8 never falls back to "
            f"another precision); drop --int8 to get {o.precision}, or drop --precision"
        )
    if o.calib_samples is None or o.calib_samples <= 0:
        raise ConfigError(f"--calib-samples must be a positive number of images, got {o.calib_samples}")
    if o.eval_samples is not None and o.eval_samples <= 0:
        raise ConfigError(f"--eval-samples must be positive, got {o.eval_samples}")
    if o.max_drop is not None and not (0 <= o.max_drop < float("inf")):
        raise ConfigError(f"--max-drop must be a finite number of accuracy points, zero or more, got {o.max_drop}")
    if o.precision is not None and o.precision not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {o.precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if o.resize not in RESIZE_POLICIES:
        raise ConfigError(f"--resize must be {' or '.join(RESIZE_POLICIES)}, got {o.resize!r}")


def _check_device_check(o: ConvertOptions) -> None:
    """--device-check names a known device and has an --eval folder to evaluate on."""
    if o.device_check is not None and o.device_check not in DEVICES:
        raise ConfigError(f"unknown --device-check {o.device_check!r}; choose one of {', '.join(DEVICES)}")
    if o.device_check is not None and (o.eval is None or not Path(o.eval).is_dir()):
        raise ConfigError(
            f"--device-check {o.device_check} evaluates on the device from image files; "
            "pass --eval DIR (one sub-folder of images per class)"
        )


# The fine-tuning settings: (field, module, class). A bare number there is not one (edgeresnet.convert() makes it).
_CONFIGS = (
    ("prune", "edgeresnet.host.training.prune", "PruneConfig"),
    ("qat", "edgeresnet.host.training.qat", "QATConfig"),
    ("transfer", "edgeresnet.host.training.transfer", "TransferConfig"),
    ("cluster", "edgeresnet.host.training.clustering", "ClusterConfig"),
)


def _check_configs(o: ConvertOptions) -> None:
    """prune, qat, transfer and cluster hold their settings records, or None."""
    import importlib

    for name, module, kind in _CONFIGS:
        value = getattr(o, name)
        if value is not None and not isinstance(value, getattr(importlib.import_module(module), kind)):
            raise ConfigError(f"{name} must be a {kind} (or None), got {value!r}")


def _check_fine_tuning(o: ConvertOptions) -> None:
    """--classes (at least 2, with --train), --input-size (1 to MAX_INPUT_SIZE), --train without anything to
    fine-tune, qat as a calibration method."""
    if o.classes is not None and (not is_whole(o.classes) or o.classes < 2):
        raise ConfigError(
            f"--classes {o.classes!r}: a classifier needs a whole number of at least 2 classes (with one, "
            "every image is that class and accuracy is 100 % whatever the model does); give --train one "
            "sub-folder per class and --classes their number"
        )
    if o.classes is not None and o.train is None:
        raise ConfigError("--classes N gives the model a new, untrained classifier; add --train DIR (one sub-folder per class) to fine-tune it")
    if o.input_size is not None:
        from edgeresnet.host.models.zoo import check_input_size

        check_input_size(o.input_size)
    if o.train is not None and o.prune is None and o.classes is None and o.qat is None and o.cluster is None:
        raise ConfigError(
            "--train is used for fine-tuning (pruning, --qat, --cluster or --classes); add --prune SPARSITY "
            "(or --sparsity for report) or --qat"
        )
    if o.int8_method == QAT_METHOD:
        raise ConfigError("qat is not a calibration method for --int8-method; use --qat --train DIR")


def _check_qat(o: ConvertOptions) -> None:
    """--qat: labelled images to train on, an int8 precision and target, no folded preprocessing."""
    if o.qat is None:
        return
    require_train_for_qat(True, o.train)
    if o.precision not in (None, "int8"):
        raise ConfigError(f"--qat makes full-int8 models; drop --precision {o.precision} or use --int8")
    if o.fold_preprocessing:
        raise ConfigError(
            "--qat cannot be combined with --fold-preprocessing (tfmot cannot quantize the folded "
            "preprocessing layers); drop one of them"
        )
    if not any(get_target(t).int8_precision == "int8" for t in o.targets):
        raise ConfigError(
            f"--qat makes int8 models, but none of the targets ({', '.join(o.targets)}) runs int8; "
            "add --target cpu or --target edgetpu"
        )


_CHECKS = (_check_run, _check_precision_and_data, _check_device_check, _check_configs, _check_fine_tuning, _check_qat)
