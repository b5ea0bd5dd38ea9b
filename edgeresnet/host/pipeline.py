"""The ``convert`` job: load, calibrate, convert per target, verify, report.

This is the Python API behind ``edgeresnet convert``. It never prints: progress
goes to an optional ``progress(stage, done, total)`` callback and notices to an
optional ``notify(message)`` callback; everything else is in the returned
:class:`~edgeresnet.report.RunReport`.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgeresnet._util.progress import Stage
from edgeresnet.device.images import ImageStream, load_images, stream_images
from edgeresnet.device.imageset import ImageSet
from edgeresnet.device.presets import get_preset
from edgeresnet.defaults import DEFAULT_SAMPLES
from edgeresnet.host.calibration import calibration_record
from edgeresnet.host.converter import QAT_METHOD, ConversionSpec, convert
from edgeresnet._util.tf import require_host
from edgeresnet._util.validate import is_whole, whole_number
from edgeresnet.host import device_check
from edgeresnet.host.device_check import DEVICES, check_variants, pi_python
from edgeresnet.errors import (
    ConfigError, ConversionError, DataError, DeviceCheckError, DriftBudgetExceeded, ModelLoadError, TFLiteFileError,
)
from edgeresnet.targets.edgetpu.analysis import COMPILER_HINT
from edgeresnet.host.quantize.registry import DEFAULT_METHOD
from edgeresnet._util.files import (
    MiB,
    StagedDir,
    atomic_write_bytes,
    check_free_space,
    check_output,
    clean_stale_partials,
    clean_stale_tempdirs,
    failed_path,
    output_lock,
    run_tempdir,
    tree_bytes,
    write_error,
)
from edgeresnet import __version__
from edgeresnet.host import shipping
from edgeresnet.host.memory import MemoryMeter
from edgeresnet.device.metadata import LABELS_FILE, labels_text, read_labels_file
from edgeresnet.report import DEFAULT_FORMATS, WRITERS, RunReport, Status, VariantRecord, check_formats, write_reports
from edgeresnet.report.records import Timings
from edgeresnet.device.runtime import EVAL_BATCH, TFLiteModel
from edgeresnet.targets import PRECISIONS, Target, get_target, target_names
from edgeresnet.targets.checks import run_checks
from edgeresnet.device.verify import baseline, drift, over_budget

ProgressFn = Callable[[str, int, int], None]
NotifyFn = Callable[[str], None]

DEFAULT_OUT = "edgeresnet-out"
CHILD_TRAINING_MIN_SIDE = 96  # see ConvertOptions.train_in_child
HELD_OUT_EVAL_SAMPLES = 500


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
    jobs: int = 1  # conversions run in this many child processes at once (edgeresnet.host.parallel)
    formats: tuple[str, ...] = DEFAULT_FORMATS  # report writers (json, md, csv, png, html); `report` writes all
    weights: Optional[str] = None  # a zoo MODEL: a local .h5 to load by layer name
    classes: Optional[int] = None  # a zoo MODEL: a new classifier for N classes, fine-tuned on --train
    input_size: Optional[int] = None  # a zoo MODEL: square input side (default: the architecture's)
    transfer: Optional[object] = None  # a transfer.TransferConfig for --classes (epochs, batch, learning rate)
    qat: Optional[object] = None  # a qat.QATConfig: also emit quantization-aware fine-tuned int8 models
    timing_only: bool = False  # `report` of a zoo MODEL with random weights: sizes and latency, no accuracy
    # Fine-tune (pruning, --qat, --classes) in a child process, whose training memory dies with it. None: when the
    # model's input is at least CHILD_TRAINING_MIN_SIDE pixels a side, it is not on a cluster, and its layers
    # are tf_keras built-ins (train_data.portable); below that the pool is small and the child's start (a
    # TensorFlow import, ~5 s) would dominate.
    train_in_child: Optional[bool] = None
    # The fine-tuning batch for pruning, --qat and --classes, as given (--batch-size). None: each config's batch,
    # lowered where needed to keep fine-tuning under the memory bound (memory.choose_batch; not on a cluster).
    batch_size: Optional[int] = None

    def __post_init__(self):
        check_formats(self.formats)
        if self.batch_size is not None:
            whole_number("--batch-size", self.batch_size, 1)
        whole_number("--jobs", self.jobs, 1)
        if not self.targets:
            raise ConfigError(f"no target given; pass --target with one of {', '.join(target_names())}")
        names = [get_target(name).name for name in self.targets]  # raises TargetError with a suggestion
        if len(set(names)) != len(names):  # names are case-insensitive: cpu and CPU are one target
            raise ConfigError(f"a target is repeated in {list(self.targets)}; give each once")
        whole_number("--seed", self.seed, 0)
        if self.int8 and self.precision not in (None, "int8"):
            raise ConfigError(
                f"--int8 and --precision {self.precision} contradict each other (--int8 never falls back to "
                f"another precision); drop --int8 to get {self.precision}, or drop --precision"
            )
        if self.calib_samples is None or self.calib_samples <= 0:
            raise ConfigError(f"--calib-samples must be a positive number of images, got {self.calib_samples}")
        if self.eval_samples is not None and self.eval_samples <= 0:
            raise ConfigError(f"--eval-samples must be positive, got {self.eval_samples}")
        if self.max_drop is not None and not (0 <= self.max_drop < float("inf")):
            raise ConfigError(f"--max-drop must be a finite number of accuracy points, zero or more, got {self.max_drop}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        if self.resize not in ("crop", "stretch"):
            raise ConfigError(f"--resize must be crop or stretch, got {self.resize!r}")
        if self.device_check is not None and self.device_check not in DEVICES:
            raise ConfigError(f"unknown --device-check {self.device_check!r}; choose one of {', '.join(DEVICES)}")
        if self.device_check is not None and (self.eval is None or not Path(self.eval).is_dir()):
            raise ConfigError(
                f"--device-check {self.device_check} evaluates on the device from image files; "
                "pass --eval DIR (one sub-folder of images per class)"
            )
        self._check_fine_tuning()
        if self.int8_method == QAT_METHOD:
            raise ConfigError("qat is not a calibration method for --int8-method; use --qat --train DIR")
        if self.qat is not None:
            if self.train is None:
                raise ConfigError(
                    "--qat fine-tunes the model with fake quantization on labelled images; add --train DIR "
                    "(one sub-folder per class)"
                )
            if self.precision not in (None, "int8"):
                raise ConfigError(f"--qat makes full-int8 models; drop --precision {self.precision} or use --int8")
            if self.fold_preprocessing:
                raise ConfigError(
                    "--qat cannot be combined with --fold-preprocessing (tfmot cannot quantize the folded "
                    "preprocessing layers); drop one of them"
                )
            if not any(get_target(t).int8_precision == "int8" for t in self.targets):
                raise ConfigError(
                    f"--qat makes int8 models, but none of the targets ({', '.join(self.targets)}) runs int8; "
                    "add --target cpu or --target edgetpu"
                )

    def _check_fine_tuning(self):
        """--classes (at least 2, with --train), --input-size (1 to MAX_INPUT_SIZE) and --train (fine-tunes)."""
        if self.classes is not None and (not is_whole(self.classes) or self.classes < 2):
            raise ConfigError(
                f"--classes {self.classes!r}: a classifier needs a whole number of at least 2 classes (with one, "
                "every image is that class and accuracy is 100 % whatever the model does); give --train one "
                "sub-folder per class and --classes their number"
            )
        if self.classes is not None and self.train is None:
            raise ConfigError("--classes N gives the model a new, untrained classifier; add --train DIR (one sub-folder per class) to fine-tune it")
        if self.input_size is not None:
            from edgeresnet.host.models.zoo import check_input_size

            check_input_size(self.input_size)
        if self.train is not None and self.prune is None and self.classes is None and self.qat is None:
            raise ConfigError(
                "--train is used for fine-tuning (pruning, --qat or --classes); add --prune SPARSITY "
                "(or --sparsity for report) or --qat"
            )

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


@dataclass
class _Data:
    """The images of one run: as loaded, preprocessed, and as the converter takes them."""

    calib: Optional[ImageSet] = None
    calib_record: Optional[object] = None  # calibration.CalibrationRecord, for the report
    eval: Optional[ImageStream] = None  # read a batch at a time: never all in memory
    eval_float: Optional[ImageStream] = None  # the same stream, preprocessed for the float model
    eval_origin: str = ""
    conv_calib: Optional[np.ndarray] = None  # calibration samples the converter sees (raw when folded)
    conv_eval: Optional[ImageStream] = None  # the evaluation stream as the converted models take it


def _zoo(opts: ConvertOptions):
    """The zoo architecture MODEL names (None for a file); --weights/--classes/--input-size need one;
    random weights are refused for accuracy work."""
    from edgeresnet.host.models.zoo import zoo_spec

    spec = zoo_spec(opts.model)
    zoo_only = [f for f, v in (("--weights", opts.weights), ("--classes", opts.classes), ("--input-size", opts.input_size))
                if v is not None]
    if spec is None and zoo_only:
        raise ConfigError(f"{zoo_only[0]} applies to a built-in architecture MODEL (e.g. resnet50; see `edgeresnet models`), "
                          "not to a model file")
    if spec is not None and opts.weights is None and opts.train is None and not opts.timing_only:
        raise ConfigError(
            f"{spec.name} has random weights, so its accuracy and drift would mean nothing; pass --weights FILE.h5 "
            "(trained weights) or --classes N --train DIR (fine-tune it on your images)"
        )
    if spec is not None and opts.weights is None and opts.classes is None and not opts.timing_only:
        raise ConfigError(
            f"{spec.name} without --weights would fine-tune random weights only while pruning; "
            "pass --weights FILE.h5, or --classes N to train it on --train DIR first"
        )
    return spec


def _load_model(opts: ConvertOptions):
    from edgeresnet.host.models.loading import LoadedModel, load_model

    if opts.model is None:
        from edgeresnet.host import demo
        from edgeresnet.host.calibration import grey_from_rgb

        # The reference model reads one grey channel; it ships taking RGB, as phone runtimes feed it.
        loaded = load_model(demo.reference_model_path())
        loaded = LoadedModel.from_keras(grey_from_rgb(loaded.model), loaded.name)
        return loaded, demo.reference_metadata()
    spec = _zoo(opts)
    if spec is not None:
        from edgeresnet.host.models.zoo import build_zoo_model

        model = build_zoo_model(spec, opts.weights, opts.classes, opts.input_size, seed=opts.seed)
        return LoadedModel.from_keras(model, spec.name), None
    return load_model(opts.model, trust_code=opts.trust_model_code), None


def _eval_set(opts, loaded, reference_meta, calib: Optional[ImageSet]) -> tuple[ImageStream, str]:
    """The evaluation images as a stream (decoded a batch at a time), and where they came from."""
    shape = loaded.input_shape
    if opts.eval is not None:
        images = stream_images(opts.eval, shape, samples=opts.eval_samples, seed=opts.seed, resize=opts.resize)
        return images, "--eval"
    if reference_meta is not None and opts.calib is None:
        from edgeresnet.host import demo

        return ImageStream.from_imageset(demo.digits_images("eval", shape[-1])), "built-in held-out split"
    if opts.calib is not None and Path(opts.calib).is_dir():
        # Images of the calibration folder that calibration did not use.
        try:
            images = stream_images(
                opts.calib, shape, samples=opts.eval_samples or HELD_OUT_EVAL_SAMPLES,
                seed=opts.seed + 1, resize=opts.resize, exclude=set(calib.paths) if calib is not None else None,
            )
            return images, "calibration folder, images not used for calibration (no --eval given)"
        except DataError:
            pass
    if calib is None:
        raise DataError("nothing to evaluate on; pass --eval with a folder of images")
    return ImageStream.from_imageset(calib), "the calibration images themselves (no --eval given; in-sample)"


def _stage(progress: Optional[ProgressFn], stage: str, unit: str = ""):
    """``progress(done, total[, what])`` for one stage; the stage name carries what is counted (``Stage.unit``)."""
    if progress is None:
        return None
    return lambda done, total, what=None: progress(Stage(stage, what or unit), done, total)


def _check_classes(images, num_classes: int, flag: str):
    if images.labelled and images.class_names is not None and len(images.class_names) != num_classes:
        raise DataError(
            f"{flag} has {len(images.class_names)} class folders but the model has {num_classes} outputs; "
            "use one sub-folder per model class (sorted names give the label order)"
        )
    if images.labels is not None and len(images.labels) and int(images.labels.max()) >= num_classes:
        raise DataError(
            f"{flag} ({images.source}) has labels up to {int(images.labels.max())} but the model has "
            f"{num_classes} outputs (classes 0..{num_classes - 1}); an accuracy on these labels would mean "
            "nothing: pass the labels of this model's classes"
        )


def _check_finite_weights(loaded, label: str) -> None:
    """NaN or infinite weights make every converted model (and the float accuracy) meaningless: name the layers."""
    bad = []
    for layer in getattr(loaded.model, "layers", ()):
        count = sum(int(np.size(w) - np.isfinite(w).sum()) for w in layer.get_weights()
                    if np.issubdtype(np.asarray(w).dtype, np.floating))
        if count:
            bad.append(f"{layer.name} ({count})")
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ModelLoadError(
            f"{label} has NaN or infinite weights in layer {shown}; the model is broken "
            "(a diverged training run?): fix or retrain it before converting"
        )


def _same_data(a: Optional[str], b: Optional[str]) -> bool:
    try:
        return a is not None and b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _file_name(model_name: str, target: Target, spec: ConversionSpec) -> str:
    io = "" if spec.io_type in ("float32",) or spec.io_type == target.int8_io_types[0] else f"_{spec.io_type}io"
    return f"{model_name}_{target.name}_{spec.precision}{io}.tflite"


@dataclass(frozen=True)
class PlannedVariant:
    """One model to emit: a target, a precision/io spec, and which model (pruned or not)."""

    target: Target
    spec: ConversionSpec
    sparsity: Optional[float] = None  # None: the model as given; else pruned to this sparsity
    qat: bool = False  # quantization-aware fine-tuned (sparsity-preserving when pruned); spec.method is "qat"

    @property
    def model_key(self) -> tuple:
        return (self.sparsity, self.qat)


def _qat_variant(target: Target, spec: ConversionSpec, sparsity: Optional[float]) -> PlannedVariant:
    from dataclasses import replace

    return PlannedVariant(target, replace(spec, method="qat"), sparsity, qat=True)


def _plan(opts: ConvertOptions) -> list[PlannedVariant]:
    """The requested variants; with --prune, each target gets the unpruned and the pruned model,
    side by side, so the report shows what pruning bought."""
    plan = [PlannedVariant(t, s) for t, s in opts.variant_plan()]
    if opts.prune is not None:
        plan += [PlannedVariant(v.target, v.spec, opts.prune.sparsity) for v in plan]
    if opts.qat is not None:
        # QAT fine-tunes the model that is shipped: the pruned one with --prune (keeping its zeros).
        s = opts.prune.sparsity if opts.prune is not None else None
        plan += [_qat_variant(v.target, v.spec, s) for v in plan if v.sparsity == s and v.spec.precision == "int8"]
    return plan


def sweep_plan(opts: ConvertOptions, sparsities: tuple = ()) -> list[PlannedVariant]:
    """Every precision each target takes, plus a pruned int8 model per sparsity and int8 target."""
    plan = []
    for name in opts.targets:
        target = get_target(name)
        for precision in target.precisions:
            io = target.io_type_for(precision, opts.io_type if PRECISIONS[precision].integer_only else None)
            plan.append(PlannedVariant(target, ConversionSpec(precision, io, opts.int8_method)))
    for s in sparsities:
        for name in opts.targets:
            target = get_target(name)
            if "int8" in target.precisions:
                spec = ConversionSpec("int8", target.io_type_for("int8", opts.io_type), opts.int8_method)
                plan.append(PlannedVariant(target, spec, s))
    if opts.qat is not None:
        plan += [_qat_variant(v.target, v.spec, v.sparsity) for v in list(plan) if v.spec.precision == "int8"]
    return plan


def run_convert(
    opts: ConvertOptions,
    progress: Optional[ProgressFn] = None,
    notify: Optional[NotifyFn] = None,
) -> RunReport:
    """Run the whole convert job and return its report (also written to ``opts.out``).

    Raises :class:`DriftBudgetExceeded` (a model's drop exceeds
    ``opts.max_drop``) or :class:`ConversionError` (a variant failed) *after*
    writing everything to ``OUT.failed`` beside ``opts.out``, which is left as
    it was (see :func:`edgeresnet._util.files.failed_path`).
    """
    require_host("convert")
    return _run(opts, _plan(opts), progress=progress, notify=notify)


def run_report(
    opts: ConvertOptions,
    sparsities: tuple = (),
    bench_config=None,
    progress: Optional[ProgressFn] = None,
    notify: Optional[NotifyFn] = None,
) -> RunReport:
    """Sweep every sensible variant of one model, measure each, and write all report formats.

    Besides report.json and report.md this writes report.csv, report.html and
    accuracy_vs_size.png. ``bench_config`` (a ``bench.BenchConfig``) times each
    model on this machine; ``None`` skips latency.
    """
    require_host("report")
    from edgeresnet.host.training.prune import PruneConfig

    for s in sparsities:
        PruneConfig(sparsity=s)  # validates the range before any work
    if _random_weights(opts):
        opts = _timing_only(opts)
    return _run(
        opts, sweep_plan(opts, tuple(sparsities)), progress=progress, notify=notify,
        bench_config=bench_config, formats=tuple(WRITERS),
    )


def _random_weights(opts: ConvertOptions) -> bool:
    """A zoo MODEL with nothing to give it weights: no --weights, no --train to fine-tune it on."""
    from edgeresnet.host.models.zoo import zoo_spec

    return zoo_spec(opts.model) is not None and opts.weights is None and opts.train is None


def random_weights_reason(name: str) -> str:
    return f"{name} has random weights (no --weights), so its accuracy and drift would mean nothing"


def _timing_only(opts: ConvertOptions) -> ConvertOptions:
    """`report` of a zoo MODEL with random weights: it may be timed (sizes, latency), never judged on accuracy."""
    from dataclasses import replace

    from edgeresnet.host.models.zoo import zoo_spec

    name = zoo_spec(opts.model).name
    asked = [flag for flag, value in (("--eval", opts.eval), ("--eval-samples", opts.eval_samples),
                                      ("--max-drop", opts.max_drop), ("--device-check", opts.device_check))
             if value is not None]
    if asked:
        raise ConfigError(
            f"{random_weights_reason(name)}: {asked[0]} asks for accuracy; pass --weights FILE.h5 (trained weights), "
            f"or drop {asked[0]} to time the architecture (sizes and latency only)"
        )
    return replace(opts, timing_only=True)


def _inputs(opts: ConvertOptions) -> dict:
    """The paths a run reads; --out may not be, contain or lie inside any of them."""
    from edgeresnet.host.models.zoo import zoo_spec

    model = None if zoo_spec(opts.model) is not None else opts.model
    return {"model": model, "--weights": opts.weights, "--calib": opts.calib, "--eval": opts.eval, "--train": opts.train}


def _space_needed(opts: ConvertOptions, plan) -> int:
    """A generous estimate of the bytes a run writes: a few times the model per variant, plus slack."""
    if opts.model is None:
        from edgeresnet.host import demo

        model = demo.reference_model_path()
    else:
        model = _inputs(opts)["model"] or opts.weights
    if model is None:
        return 64 * MiB * (len(plan) + 1)  # a zoo model without weights: built here
    return 16 * MiB + 2 * tree_bytes([model]) * (len(plan) + 1)


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _run(opts, plan, progress=None, notify=None, bench_config=None, formats=None) -> RunReport:
    """Check --out and the inputs, then run in a staged output folder and a run-scoped temp folder."""
    notify = notify or (lambda msg: None)
    started = time.perf_counter()
    cluster = _fine_tuning_cluster(opts)
    if cluster is not None and not cluster.is_chief:  # only the chief writes --out
        return _run_worker(opts, plan, cluster, progress, notify)
    inputs = _inputs(opts)
    needs_calib, device_python = _check_before_work(opts, plan, inputs)
    with output_lock(opts.out):  # one run per --out: a second one is refused here, before any work
        for note in clean_stale_partials(opts.out) + clean_stale_tempdirs():
            notify(note)
        if _same_data(opts.calib, opts.eval):
            notify(
                f"warning: --eval is the same data as --calib ({opts.eval}): accuracy is measured in-sample, "
                "on the calibration images, and will look better than on new images"
            )
        if cluster is not None:  # before TensorFlow runs anything (collective ops are set up at start)
            from edgeresnet.host.training.cluster import join

            join(cluster)
        try:
            # The staged folder is made first: it proves --out's parent is writable before any work.
            with StagedDir(opts.out, opts.overwrite, inputs) as staged, run_tempdir() as tmp:
                check_free_space(Path(opts.out).resolve().parent, _space_needed(opts, plan))
                check_free_space(tmp.parent, _space_needed(opts, ()), "temporary files", "set TMPDIR to a folder on a disk with room")
                return _run_staged(opts, plan, staged, needs_calib, started, progress, notify, bench_config,
                                   formats or opts.formats, device_python)
        except OSError as exc:
            err = write_error(exc, opts.out) if exc.errno in _DISK_ERRNOS else None
            if err is None:
                raise
            raise err from None


def _check_before_work(opts, plan, inputs) -> tuple:
    """Everything a user can fix that can be told before any work: --out, the inputs, calibration, the device.

    Returns (whether the plan needs calibration data, the device's python or None).
    """
    check_output(opts.out, opts.overwrite, inputs)
    check_output(failed_path(opts.out), True, inputs)
    if opts.model is not None and _zoo(opts) is None:  # the model first: a wrong path is said before any data problem
        from edgeresnet.host.models.loading import check_model_path

        check_model_path(opts.model)
    if opts.weights is not None and not Path(opts.weights).is_file():
        raise DataError(f"--weights {opts.weights}: no such file; pass a local .h5 written by model.save_weights()")
    for p in (opts.calib, opts.eval, opts.train):
        if p is not None and not Path(p).exists():
            raise DataError(f"{p}: no such file or folder; pass an image folder or a .npy/.npz file")
    if opts.labels is not None:  # a bad --labels file fails before anything is loaded (its count: once the model is)
        read_labels_file(opts.labels)
    _check_train(opts)
    needs_calib = any(v.target.needs_calibration(v.spec.precision) for v in plan)
    if needs_calib and opts.calib is None and opts.model is not None and not opts.timing_only:
        names = ", ".join(
            sorted({f"{v.target.name}/{v.spec.precision}" for v in plan if v.target.needs_calibration(v.spec.precision)})
        )
        raise ConfigError(
            f"{names} needs calibration data; pass --calib with a folder of images like the ones the model will see"
        )
    device_python = pi_python() if opts.device_check else None  # is the device there, and does its python run?
    if device_python is not None:
        device_check.probe(device_python)
    return needs_calib, device_python


def _run_staged(opts, plan, staged, needs_calib, started, progress, notify, bench_config, formats,
                device_python=None) -> RunReport:
    """The job's stages in order: data, models, float baseline, emit (and recover) each variant, report."""
    timings, meter = Timings(), MemoryMeter()
    with timings("load"), meter("load"):
        loaded, reference_meta = _load_model(opts)
        _check_finite_weights(loaded, opts.model or "the reference model")
    opts, batch = _fine_tune_batch(opts, loaded, notify)
    if opts.qat is not None:
        from edgeresnet.host.training.qat import check_quantizable

        check_quantizable(loaded)  # Keras 3, layers tfmot cannot quantize: refused before any long work
    preset_name = opts.preset or (reference_meta or {}).get("preset") or "raw"
    preset = get_preset(preset_name)
    names, order_warning = _class_order(opts, loaded, notify)  # before any long work
    with timings("prune"), meter("fine-tune"):
        transfer_info = _transfer(opts, loaded, preset, progress, names, notify)  # --classes: the new classifier, trained first
    with timings("calibration data"), meter("convert"):
        data = _load_data(opts, loaded, reference_meta, preset, preset_name, needs_calib, progress, notify, names)
    with timings("prune"), meter("fine-tune"):  # pruning and quantization-aware fine-tuning
        models = _build_models(opts, plan, loaded, preset, progress, notify, names)
    with meter("convert"):
        _converter_calibration(opts, data, preset)
    float_out, labels = None, None
    if data.eval is not None:
        with timings("evaluate"), meter("evaluate"):
            float_out = data.eval_float.predict(loaded.predict, progress=_stage(progress, "evaluate float model", "images"))
        labels = data.eval.labels if data.eval.labelled else None
    report = RunReport.start(
        model=loaded,
        source=opts.model or "built-in reference (digits-resnet8)",
        preset=preset_name,
        folded=opts.fold_preprocessing,
        calibration=data.calib_record.to_dict() if data.calib_record is not None else None,
        evaluation=_evaluation_record(data, labels, loaded),
        baseline=baseline(float_out if float_out is not None else np.zeros((0, loaded.num_classes)), labels),
        max_drop=opts.max_drop,
        prune=next((info for (_, qat), (_, info) in models.items() if info is not None and not qat), None),
    )
    if opts.weights is not None:
        report.model["weights"] = str(opts.weights)
    if transfer_info is not None:
        report.model["transfer"] = transfer_info  # the new classifier's fine-tuning (backbone frozen first)
    report.timings = timings
    report.at_chance = _float_at_chance(report, loaded, notify)
    with timings("write"), meter("convert"):
        ship_info = _ship_info(opts, loaded, preset, data, report, staged, notify, names, order_warning)
    emit = _Emitter(opts, float_out, labels, data.conv_calib, data.conv_eval, progress, notify, bench_config, ship_info,
                    timings, meter)
    report.recovery = opts.recover and opts.max_drop is not None
    with meter("convert"):
        if opts.jobs > 1:
            with timings("quantize"):
                _convert_in_parallel(opts, plan, models, emit, progress)
        _emit_all(opts, plan, models, emit, report, staged)
    if device_python is not None:
        with meter("evaluate"):
            check_variants(report.variants, staged.path, opts.eval, opts.eval_samples, opts.seed, device_python,
                           progress=_stage(progress, f"evaluate on the emulated {opts.device_check}", "images"))
        for finding in device_check.findings(report.variants):
            notify(f"warning: {finding}")
    _mark_at_chance(report)
    if any(COMPILER_HINT in v.checks.get("edgetpu", {}).get("notes", ()) for v in report.variants):
        notify(f"note: {COMPILER_HINT}")  # once per run, not once per model
    report.memory = (batch or {}) | meter.to_dict()
    report.finish(time.perf_counter() - started)
    return _write_and_judge(opts, report, staged, formats)


def _fine_tune_configs(opts) -> dict:
    """The fine-tuning configs of a run that fine-tunes on --train (a --classes run has one even if not given)."""
    from edgeresnet.host.training.transfer import TransferConfig

    transfer = opts.transfer or (TransferConfig(seed=opts.seed) if opts.classes is not None else None)
    configs = {"prune": opts.prune, "qat": opts.qat, "transfer": transfer}
    return {k: c for k, c in configs.items() if c is not None} if opts.train is not None else {}


def _fine_tune_batch(opts, loaded, notify) -> tuple:
    """``opts`` with the fine-tuning batch decided (memory.choose_batch), and the report's record of it (or None:
    nothing is fine-tuned). On a cluster every worker keeps the configured batch (they must agree)."""
    from dataclasses import replace

    from edgeresnet.host.memory import choose_batch

    configs = _fine_tune_configs(opts)
    if not configs or (_fine_tuning_cluster(opts) is not None and opts.batch_size is None):
        return opts, None
    choice = choose_batch(loaded.model, max(c.batch_size for c in configs.values()), opts.batch_size)
    side = "x".join(str(d) for d in loaded.input_shape[:2])
    why = choice.why(loaded.name, side)
    if not choice.fits:
        notify(f"warning: {why}; lower --batch-size if the run is killed for memory")
    elif choice.batch_size < choice.largest:
        notify(f"note: {why}")
    batch = choice.batch_size
    tuned = {k: replace(c, batch_size=batch if choice.given else min(c.batch_size, batch)) for k, c in configs.items()}
    return replace(opts, **tuned), choice.to_dict(loaded.name, side)


def _float_at_chance(report, loaded, notify) -> Optional[dict]:
    """verify.at_chance of the float model, with a warning that says what to do."""
    from edgeresnet.device.verify import at_chance

    found = at_chance(report.baseline, loaded.num_classes)
    if found is not None:
        notify(
            f"warning: the float model scores {found['top1']:.2f} % top-1 on {found['count']} images, at chance for "
            f"{found['classes']} classes (a model that learned nothing scores up to {found['threshold']:.2f} % here), "
            "so its variants' drift figures mean nothing (status float_at_chance): fine-tune longer (--epochs), "
            "start from trained weights (--weights), or check that --eval's class folders match the model's classes"
        )
    return found


def _mark_at_chance(report) -> None:
    """Variants that would be ok are float_at_chance when the float model they are compared with is at chance."""
    if report.at_chance is None:
        return
    reason = (f"the float model scores {report.at_chance['top1']:.2f} % top-1, at chance "
              f"(up to {report.at_chance['threshold']:.2f} %): drift not meaningful")
    for v in report.variants:
        if v.status == Status.OK:
            v.fail(Status.FLOAT_AT_CHANCE, reason)


def _evaluation_record(data, labels, loaded) -> dict:
    if data.eval is None:  # a timing-only run (random weights): no accuracy, and the report says why
        return {"source": None, "origin": "not measured", "count": 0, "labelled": False,
                "not_measured": random_weights_reason(loaded.name)}
    return {"source": data.eval.source, "origin": data.eval_origin, "count": len(data.eval), "labelled": labels is not None}


def _convert_in_parallel(opts, plan, models, emit, progress) -> None:
    """--jobs N: fill the emitter's conversion cache from N child processes (see edgeresnet.host.parallel)."""
    import tempfile

    from edgeresnet.host.converter import ConversionResult
    from edgeresnet.host.parallel import convert_in_parallel

    work = {}
    for planned in plan:
        key = (planned.model_key, planned.spec)
        if key not in emit.cache and not planned.qat:  # quantization-aware models convert in-process
            work[key] = (key, models[planned.model_key][0], planned.spec)
    if len(work) < 2:
        return
    folder = Path(tempfile.mkdtemp(prefix="jobs-"))  # inside the run's temporary folder
    done = convert_in_parallel(
        opts.jobs, list(work.values()), emit.conv_calib, folder, trust_code=opts.trust_model_code,
        progress=_stage(progress, f"convert {len(work)} variants in {opts.jobs} processes", "variants"),
    )
    for key, (model_bytes, seconds) in done.items():
        emit.cache[key] = ConversionResult(spec=key[1], model=model_bytes, seconds=seconds, log="")


def _load_data(opts, loaded, reference_meta, preset, preset_name, needs_calib, progress, notify, names=None) -> "_Data":
    """Calibration and evaluation images, preprocessed, and the arrays the converter takes. Evaluation images
    are labelled by the output index of their class's name in ``names`` (``--labels``) when given; calibration
    keeps its folder labels, which only balance the classes (the same images in any label order)."""
    data = _Data()
    # Calibration data.
    if needs_calib or opts.calib is not None or opts.timing_only:  # timing only: one calibration image runs each model
        if opts.calib is None and opts.timing_only:
            data.calib = _random_pixels(loaded.input_shape, min(opts.calib_samples, TIMING_CALIB_SAMPLES), opts.seed)
        elif opts.calib is None:
            from edgeresnet.host import demo

            full = demo.digits_images("calib", loaded.input_shape[-1])
            data.calib = full.sample(opts.calib_samples, opts.seed)  # as --calib folders: seeded, class-balanced
        else:
            data.calib = load_images(
                opts.calib, loaded.input_shape, samples=opts.calib_samples, seed=opts.seed,
                resize=opts.resize, progress=_stage(progress, "load calibration images", "images"),
            )
        data.calib_record = calibration_record(data.calib, preset_name, opts.seed, opts.resize)
        for w in data.calib_record.warnings if not opts.timing_only else ():  # e.g. fewer than 100 images
            notify(f"warning: {w}")

    if not opts.timing_only:
        data.eval, data.eval_origin = _eval_set(opts, loaded, reference_meta, data.calib)
        flag = "--eval" if opts.eval else "the evaluation data"
        _check_classes(data.eval, loaded.num_classes, flag)
        data.eval = _match_classes(data.eval, names, flag, opts)
        data.eval_float = data.eval.with_preset(preset)  # what the float model takes

    if opts.fold_preprocessing:
        loaded.require_tf_keras("--fold-preprocessing")
        data.conv_eval = None if data.eval is None else data.eval.with_preset(None)  # raw 0..255 pixels as float32
    else:
        data.conv_eval = data.eval_float
    return data


def _converter_calibration(opts, data: "_Data", preset) -> None:
    """The calibration samples as the converter takes them (float32, preprocessed unless folded). Made after
    fine-tuning: a float copy of 300 224x224 images is 180 MB the training step does not need beside it."""
    if data.calib is None:
        return
    data.conv_calib = data.calib.images.astype(np.float32) if opts.fold_preprocessing else preset.apply(data.calib.images)


TIMING_CALIB_SAMPLES = 32  # random pixels calibrate a random-weights model for timing: the values do not matter


def _random_pixels(input_shape, count: int, seed: int) -> ImageSet:
    """Seeded random 0..255 pixels: calibration for a model that is only timed (ranges, not accuracy)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(count,) + tuple(input_shape), dtype=np.uint8)
    return ImageSet(images=pixels, source="random pixels (timing only)")


def zoo_timing_model(name: str, precision: str = "int8", input_size: Optional[int] = None, seed: int = 0) -> bytes:
    """The .tflite of built-in architecture ``name`` with random weights, for timing only (``bench resnet50``).

    Full-integer precisions are calibrated on seeded random pixels: the ranges
    do not change how long a model takes, and its accuracy is never measured.
    """
    require_host("bench of a built-in architecture")
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.host.models.zoo import build_zoo_model, check_input_size, zoo_spec

    spec = zoo_spec(name)
    if spec is None:
        raise ConfigError(f"{name} is not a built-in architecture; see `edgeresnet models`")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if input_size is not None:
        check_input_size(input_size)
    loaded = LoadedModel.from_keras(build_zoo_model(spec, input_size=input_size, seed=seed), spec.name)
    conversion = ConversionSpec(precision, get_target("cpu").io_type_for(precision), DEFAULT_METHOD)
    calib = _random_pixels(loaded.input_shape, TIMING_CALIB_SAMPLES, seed).images.astype(np.float32)
    return convert(loaded.tflite_converter, conversion, calib if conversion.needs_calibration else None).model


def _build_models(opts, plan, loaded, preset, progress, notify, names=None) -> dict:
    """The models to convert: the one given, one pruned model per sparsity in the plan (fine-tuned on
    --train when given) and, with --qat, a quantization-aware fine-tuned copy of each (sparsity-preserving
    for pruned ones); each built once. (sparsity, qat) -> (LoadedModel, prune or QAT info)."""
    fine_tunes = opts.prune is not None or opts.qat is not None
    train = _load_train(opts, loaded, preset, progress, names) if fine_tunes else None
    models: dict = {}
    for sparsity, qat in dict.fromkeys(v.model_key for v in plan):
        model, info = loaded, None
        if qat:
            base = models[(sparsity, False)]
            model, info = _qat(opts.qat, *base, train, progress, _train_in_child(opts, base[0], train))
        elif sparsity is not None:
            from dataclasses import replace

            from edgeresnet.host.training.prune import PruneConfig

            config = replace(opts.prune, sparsity=sparsity) if opts.prune else PruneConfig(sparsity=sparsity)
            model, info = _prune(config, loaded, train, progress, notify, _train_in_child(opts, loaded, train))
        if opts.fold_preprocessing:
            from edgeresnet.host.calibration import fold_preprocessing
            from edgeresnet.host.models.loading import LoadedModel

            model = LoadedModel.from_keras(fold_preprocessing(model.model, preset), model.name)
        models[(sparsity, qat)] = (model, info)
    return models


def _ship_info(opts, loaded, preset, data, report, staged, notify, names=None, order_warning=None):
    """The metadata every emitted model carries (and labels.txt beside them): ``names`` (--labels), else the
    class folders'."""
    if names is not None:
        class_names, names_from = names, f"--labels {opts.labels}"
    else:
        class_names, names_from = shipping.resolve_labels(
            [("the evaluation data", data.eval), ("the calibration data", data.calib), ("--train", _folder_classes(opts.train))],
            loaded.num_classes,
        )
    if class_names is None:
        notify("warning: the data is unlabelled, so the models carry no class names (apps show none); "
               "pass --labels FILE with one name per line")
    # The metadata version is the release, never the clock: identical runs give bit-identical models.
    ship_info = shipping.model_info(
        loaded.name, preset, opts.fold_preprocessing, loaded.input_shape[-1], class_names,
        version=f"edgeresnet {__version__}", source=Path(str(report.model["source"])).name,
    )
    report.metadata = ship_info.to_dict() | {"labels_from": names_from, "labels_order": order_warning}
    if class_names is not None:
        atomic_write_bytes(staged.path / LABELS_FILE, labels_text(class_names).encode("utf-8"))
    return ship_info


def _emit_all(opts, plan, models, emit, report, staged) -> None:
    """Every planned variant, converted, measured and checked; an over-budget int8 one also recovered."""
    own_float: dict = {}  # sparsity -> the pruned float model's outputs on the evaluation images
    for planned in plan:
        model, info = models[planned.model_key]
        rec = emit(model, planned, staged.path)
        prune = (info or {}).get("pruning") if planned.qat else info
        if planned.sparsity is not None and prune is not None:
            rec.prune = {k: v for k, v in prune.items() if k != "layers"}
            if rec.name in emit.outputs and not planned.qat:
                if planned.sparsity not in own_float:
                    with emit.meter("evaluate"):
                        own_float[planned.sparsity] = emit.conv_eval.predict(model.predict, progress=_stage(
                            emit.progress, f"evaluate pruned float model ({planned.sparsity:g})", "images"))
                rec.prune["vs_pruned_float"] = _vs_pruned_float(
                    own_float[planned.sparsity], emit.outputs[rec.name], emit.labels, info)
        rec.fine_tune = _fine_tune_record(opts.train, info, planned.qat)
        report.add(rec)
        if rec.status == Status.OVER_BUDGET and planned.qat:
            rec.error += "; quantization-aware models are not recovered by keeping layers in float"
        elif rec.status == Status.OVER_BUDGET and opts.recover and planned.spec.precision == "int8":
            with emit.timings("recover"):
                recovered = emit.recover(model, planned, rec, staged.path)
            if recovered is not None:
                report.add(recovered)
        if rec.status == Status.OVER_BUDGET and not planned.qat and not planned.target.float_layers:
            # No layer can stay float there: quantization-aware training is the way to win accuracy back.
            rec.suggestion = qat_command(opts, planned.target.name, planned.sparsity)
            rec.error += f"; try quantization-aware training: {rec.suggestion}"


def _write_and_judge(opts, report, staged, formats) -> RunReport:
    """Write the report and commit the output; raise when a variant failed or missed the budget."""
    # A failed run never replaces the previous output: its report goes beside it, to OUT.failed.
    recovered_ok = {v.name for v in report.variants if v.status == Status.OK}
    bad = [v for v in report.variants if v.status == Status.OVER_BUDGET and v.recovered_by not in recovered_ok]
    failed = [v for v in report.variants if v.status.failed]
    device_failure = device_check.failure(report.variants)
    dest = failed_path(opts.out) if bad or failed or device_failure else Path(opts.out)
    for v in report.variants:
        if v.path:
            v.path = str(dest / Path(v.path).name)
    write_reports(report, staged.path, formats)
    staged.commit(dest)

    if bad:
        worst = max(bad, key=lambda v: v.drift.drop_pts if v.drift.drop_pts is not None else 100 - v.drift.agreement)
        hint = next((v for v in bad if v.suggestion), None)
        raise DriftBudgetExceeded(
            f"{worst.name}: accuracy drop {worst.drop_text()} exceeds --max-drop {opts.max_drop}; "
            f"the report is in {dest} ({opts.out} was left as it was)"
            + (f"; {hint.target} cannot keep layers in float, try: {hint.suggestion}" if hint else "")
        )
    if failed:
        raise ConversionError(
            f"{failed[0].name}: {failed[0].status.value.replace('_', ' ')}: {failed[0].error}; "
            f"the report is in {dest} ({opts.out} was left as it was)"
        )
    if device_failure:
        raise DeviceCheckError(f"{device_failure}; the report is in {dest} ({opts.out} was left as it was)")
    return report


def _vs_pruned_float(float_out, out, labels, info) -> dict:
    """A pruned variant against its own pruned (fine-tuned) float model: the conversion's error alone.

    The variant's own ``drop_pts`` and ``agreement`` compare it with the unpruned float model,
    so they mix pruning, fine-tuning and quantization.
    """
    d = drift(float_out, out, labels).to_dict()
    ref = baseline(float_out, labels).to_dict()
    how = "pruned and fine-tuned" if info.get("fine_tuned") else "pruned one-shot"
    return {
        "reference": f"the {how} float Keras model (before conversion)",
        "float_top1": ref["top1"],
        "float_top5": ref["top5"],
        **{k: d.get(k) for k in ("top1", "drop_pts", "agreement", "cosine", "sqnr_db")},
    }


class _Emitter:
    """Converts, runs, measures and checks one planned variant; caches identical conversions."""

    def __init__(self, opts, float_out, labels, conv_calib, conv_eval, progress, notify, bench_config, ship_info,
                 timings=None, meter=None):
        self.timings = timings if timings is not None else Timings()
        self.meter = meter if meter is not None else MemoryMeter()
        self.opts, self.float_out, self.labels = opts, float_out, labels
        self.ship_info = ship_info
        self.conv_calib, self.conv_eval = conv_calib, conv_eval
        self.progress, self.notify, self.bench_config = progress, notify, bench_config
        self.cache: dict = {}
        self.outputs: dict = {}  # variant name -> its outputs on the evaluation images
        self._eval_array: Optional[np.ndarray] = None

    def sample(self) -> np.ndarray:
        """One input as the converted models take it (from the calibration images)."""
        return np.asarray(self.conv_calib[:1], dtype=np.float32)

    def eval_array(self) -> np.ndarray:
        """All evaluation inputs in memory: only accuracy recovery needs them (its layer-by-layer debugger)."""
        if self._eval_array is None:
            self._eval_array = self.conv_eval.inputs(range(len(self.conv_eval)))
        return self._eval_array

    def __call__(self, model, planned: PlannedVariant, folder: Path) -> VariantRecord:
        target, spec = planned.target, planned.spec
        name = _file_name(model.name, target, spec)
        rec = VariantRecord(name=name, target=target.name, precision=spec.precision, io_type=spec.io_type)
        key = (planned.model_key, spec)
        try:
            if key not in self.cache:
                self.cache[key] = convert(
                    model.tflite_converter,
                    spec,
                    self.conv_calib if spec.needs_calibration else None,
                    progress=_stage(self.progress, f"calibrate {name}"),
                )
                session_seconds = getattr(self.cache[key].session, "seconds", None) or {}
                for stage, sec in session_seconds.items():
                    self.timings.add(stage, sec)
                if not session_seconds:
                    self.timings.add("quantize", self.cache[key].seconds)
            result = self.cache[key]
        except ConversionError as exc:
            rec.fail(Status.CONVERT_FAILED, str(exc))
            self.notify(f"{name}: conversion failed: {exc}")
            return rec
        rec.convert_seconds = round(result.seconds, 3)
        if spec.precision == "int8":
            rec.int8_method = spec.method
        with self.timings("checks"):
            shipped = self._ship(result.model, rec)  # what is written, run and checked: the model with its metadata
        try:
            with self.timings("evaluate"), self.meter("evaluate"):
                tfl = TFLiteModel(shipped)
                if self.conv_eval is None:  # timing only: one run proves the model runs; accuracy is not measured
                    tfl.predict(self.sample())
                else:
                    out = self.conv_eval.predict(partial(tfl.predict, batch=EVAL_BATCH),
                                                 progress=_stage(self.progress, f"evaluate {name}", "images"))
        except TFLiteFileError as exc:
            rec.fail(Status.VALIDATION_FAILED, f"emitted model does not run: {exc}")
            return rec
        rec.interpreter = f"{tfl.backend.name} {tfl.backend.version}"
        if self.conv_eval is not None:
            rec.set_drift(drift(self.float_out, out, self.labels))
            self.outputs[name] = out
        path = folder / name
        with self.timings("write"):
            atomic_write_bytes(path, shipped)
        rec.set_file(path, self.opts.out)
        with self.timings("checks"):
            rec.checks = run_checks(target, spec, shipped, path, strict=self.opts.strict)
            rec.runtimes = shipping.runtimes(shipped, self.ship_info, rec.interpreter, rec.checks)
            rec.weight_sparsity = _zero_fraction(shipped)
        if self.bench_config is not None:
            from edgeresnet.device.bench import benchmark

            with self.timings("benchmark"):
                rec.latency = benchmark(
                    shipped, self.bench_config, progress=_stage(self.progress, f"benchmark {name}", "runs"),
                    isolate=False,  # a model this run wrote and already ran
                ).to_dict()
        failed = [k for k, v in rec.checks.items() if v.get("ok") is False and v.get("blocking", True)]
        if failed:
            rec.fail(Status.VALIDATION_FAILED, "failed checks: " + ", ".join(failed))
        elif over_budget(rec.drift, self.opts.max_drop):
            rec.fail(Status.OVER_BUDGET, f"drop exceeds --max-drop {self.opts.max_drop}")
        return rec

    def _ship(self, model: bytes, rec: VariantRecord) -> bytes:
        """The converter's model with its metadata (and a uint8 input that takes raw pixels exactly)."""
        shipped, note = shipping.prepare(model, self.ship_info)
        if note:
            rec.input_note = note
        return shipped

    def recover(self, model, planned: PlannedVariant, rec: VariantRecord, folder: Path) -> Optional[VariantRecord]:
        """An over-budget int8 variant: keep its worst layers in float where the target can run float.

        Returns the recovered variant (status ``ok`` when the budget is met) or
        None when the target cannot run float layers (Edge TPU); then the worst
        layers are only named in ``rec``.
        """
        from dataclasses import replace

        from edgeresnet.host.quantize.recovery import RecoveryConfig, edgetpu_worst_layers, measure_cost, recover_int8

        target, spec = planned.target, planned.spec
        session = self.cache[(planned.model_key, spec)].session  # the over-budget model's own int8 session
        if not target.float_layers:
            rec.worst_layers = edgetpu_worst_layers(
                model.tflite_converter, self.conv_calib, self.eval_array(), method=spec.method, session=session
            )
            rec.error += f"; {target.name} cannot run float layers, so accuracy cannot be recovered there (worst layers in the report)"
            return None
        result = recover_int8(
            model.tflite_converter, self.conv_calib, self.eval_array(), self.float_out, self.labels,
            RecoveryConfig(max_drop=self.opts.max_drop), io_type=spec.io_type,
            progress=_stage(self.progress, f"recover {rec.name}"), method=spec.method, session=session,
        )
        name = rec.name.replace(f"_{spec.precision}", "_int8mixed", 1)
        new = VariantRecord(name=name, target=target.name, precision=result.precision, io_type=spec.io_type)
        path = folder / name
        shipped = self._ship(result.model, new)
        atomic_write_bytes(path, shipped)
        new.set_file(path, self.opts.out)
        tfl = TFLiteModel(shipped)
        new.interpreter = f"{tfl.backend.name} {tfl.backend.version}"
        new.set_drift(drift(self.float_out, self.conv_eval.predict(partial(tfl.predict, batch=EVAL_BATCH)), self.labels))
        new.runtimes = shipping.runtimes(shipped, self.ship_info, new.interpreter, {})
        # Both sides of the cost as shipped (with their metadata), so "final" is the written file's size.
        as_shipped = replace(result, model=shipped, initial_model=shipping.prepare(result.initial_model, self.ship_info)[0])
        new.int8_method = result.method
        new.recovery = result.to_dict() | {"cost": measure_cost(as_shipped, self.bench_config)}
        new.weight_sparsity = _zero_fraction(result.model)
        if over_budget(new.drift, self.opts.max_drop):
            kept = ", ".join(new.recovery["float_layers"]) or "none"
            new.fail(Status.OVER_BUDGET, f"still over --max-drop {self.opts.max_drop} with {kept} in float ({result.stopped})")
        rec.recovered_by = name
        return new


def _zero_fraction(model: bytes) -> float:
    """Share of conv/fc weights stored as zero in the emitted model."""
    from edgeresnet.device.sparsity import tflite_weight_sparsity

    return round(float(tflite_weight_sparsity(model)["fraction"]), 4)


def _folder_classes(path) -> Optional[tuple[str, ...]]:
    """The class folder names of an image folder (a scan, no decoding), or None (no folder, no classes)."""
    if path is None or not Path(path).is_dir():
        return None
    from edgeresnet.device.image_files import list_images

    return list_images(path)[2]


def _class_order(opts, loaded, notify) -> tuple[Optional[tuple[str, ...]], Optional[str]]:
    """(``--labels``' class names in output order, or None; the warning said when the class folders scored or
    trained on list them in another order). Folders with other names are refused here, before any long work."""
    if opts.labels is None:
        return None, None
    names = shipping.read_labels_file(opts.labels, loaded.num_classes)
    scored = ("--eval", opts.eval) if opts.eval is not None else ("--calib", opts.calib)  # without --eval: calib's
    folders = [(flag, _folder_classes(path)) for flag, path in (scored, ("--train", opts.train))]
    warning = shipping.order_note(names, f"--labels {opts.labels}", [(f, c) for f, c in folders if c])
    if warning is not None:
        notify(f"warning: {warning}")
    return names, warning


def _match_classes(images, names, flag: str, opts):
    """``images`` labelled by the output index of each class's name in ``names`` (see shipping.match_classes)."""
    return shipping.match_classes(images, names, flag, f"--labels {opts.labels}")


@dataclass(frozen=True)
class WorkerRun:
    """What a non-chief worker of a fine-tuning cluster did: it trained, and wrote nothing."""

    task: str
    address: str
    chief: str
    models: tuple  # (name, weights sha256) of each fine-tuned model: the chief's report.json has the same
    shard: Optional[dict] = None  # this worker's share of --train (train_data.TrainData.shard)


def _fine_tuning_cluster(opts):
    """The cluster this run fine-tunes in (pruning, --qat or --classes on --train), or None."""
    configs = [c for c in (opts.prune, opts.qat, opts.transfer) if c is not None]
    if opts.train is None or not configs or configs[0].strategy not in ("auto", "multiworker"):
        return None
    from edgeresnet.host.training.cluster import read_tf_config, resolve

    cluster = read_tf_config()
    resolve(configs[0].strategy, cluster, gpus=0)  # multiworker without a cluster: refused before any work
    return cluster


def _run_worker(opts, plan, cluster, progress, notify) -> WorkerRun:
    """A non-chief worker: load the model and --train, fine-tune with the chief, write nothing in --out."""
    from edgeresnet.host.training.cluster import join

    _check_train(opts)  # as the chief does, before joining it
    with run_tempdir():
        join(cluster)
        loaded, reference_meta = _load_model(opts)
        preset = get_preset(opts.preset or (reference_meta or {}).get("preset") or "raw")
        names, _ = _class_order(opts, loaded, notify)
        transfer_info = _transfer(opts, loaded, preset, progress, names)  # the same new classifier as the chief's
        models = _build_models(opts, plan, loaded, preset, progress, notify, names)
    trained = [(loaded.name, transfer_info)] if transfer_info is not None else []
    trained += [(m.name, info) for m, info in models.values() if info is not None]
    return WorkerRun(
        task=f"{cluster.task_type} {cluster.task_index}", address=cluster.address, chief=cluster.chief_address,
        models=tuple((name, info.get("weights_sha256", "")) for name, info in trained),
        shard=next((info["shard"] for _, info in trained if info.get("shard")), None),
    )


def _transfer(opts, loaded, preset, progress, names=None, notify=None) -> Optional[dict]:
    """With --classes: fine-tune the zoo model's new classifier on --train (in place); its report, else None."""
    if opts.classes is None:
        return None
    from edgeresnet.host.training.transfer import TransferConfig, fine_tune, fine_tune_in_child

    train = _load_train(opts, loaded, preset, names=names)
    in_child = _train_in_child(opts, loaded, train)
    info = (fine_tune_in_child if in_child else fine_tune)(
        loaded.model, train, opts.transfer or TransferConfig(seed=opts.seed),
        progress=_stage(progress, f"fine-tune new {opts.classes}-class classifier", "steps"),
        freeze_backbone=opts.weights is not None,
    )
    loss = info["history"].get("loss") or [None]
    if notify is not None and loss[-1] is not None and info.get("initial_loss") is not None \
            and loss[-1] >= info["initial_loss"]:
        notify(
            f"warning: fine-tuning the new {opts.classes}-class classifier ended with a training loss of {loss[-1]:.3f} "
            f"(last epoch's mean), no lower than it started ({info['initial_loss']:.3f} on the first batch): "
            "it learned nothing; fine-tune longer (--epochs), start from trained weights (--weights), "
            "or lower --learning-rate"
        )
    return {**info, "process": _process(in_child, train)}


def _check_train(opts) -> None:
    """A --train folder before any work (a scan, then each file's header; no pixel decoded): at least 2 class
    folders, none without images, as many as --classes asks for, every file an image."""
    if opts.train is None or not Path(opts.train).is_dir():
        return
    from edgeresnet.device.images import check_image_files, training_folder

    files, names = training_folder(opts.train)
    if opts.classes is not None and len(names) != opts.classes:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise DataError(
            f"--classes {opts.classes} but --train {opts.train} has {len(names)} class folders ({shown}); the new "
            f"classifier learns one output per class folder: pass --classes {len(names)}, or one folder per class"
        )
    check_image_files(files)


def _load_train(opts, loaded, preset, progress=None, names=None) -> Optional[ImageStream]:
    """The --train images as a labelled stream of model inputs (decoded per batch), or None without --train;
    labelled by the output index of each class's name in ``names`` (--labels) when given."""
    if opts.train is None:
        return None
    images = stream_images(opts.train, loaded.input_shape, samples=None, seed=opts.seed, resize=opts.resize)
    if not images.labelled:
        raise DataError(f"{opts.train} has no class sub-folders; --train needs one sub-folder per class")
    _check_classes(images, loaded.num_classes, "--train")
    return _match_classes(images, names, "--train", opts).with_preset(preset)


def _train_in_child(opts, loaded, train) -> bool:
    """Does fine-tuning run in a child process (ConvertOptions.train_in_child)?"""
    if train is None or _fine_tuning_cluster(opts) is not None:  # a cluster's collectives live in this process
        return False
    from edgeresnet.host.training.child import portable

    if opts.train_in_child is not None:
        return opts.train_in_child and portable(loaded.model)
    side = min(loaded.input_shape[:2]) if len(loaded.input_shape) == 3 else 0
    return side >= CHILD_TRAINING_MIN_SIDE and portable(loaded.model)


def _process(in_child: bool, train) -> Optional[str]:
    """The report's record of where fine-tuning ran: "child" (a process of its own), "this", or None (none ran)."""
    return None if train is None else ("child" if in_child else "this")


def _prune(config, loaded, train, progress, notify, in_child: bool = False):
    """Prune (and fine-tune when ``train`` is given); returns (LoadedModel, report dict)."""
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.host.training.prune import prune_model, prune_model_in_child

    stage = f"fine-tune pruned model ({config.sparsity:g})"
    run = prune_model_in_child if in_child else prune_model
    result = run(loaded, config, train=train, progress=_stage(progress, stage, "training batches"))
    for w in result.warnings:
        notify(f"warning: {w}")
    name = loaded.name + f"_pruned{int(round(config.sparsity * 100))}"
    return LoadedModel.from_keras(result.model, name), {**result.to_dict(), "process": _process(in_child, train)}


def _qat(config, base, base_info, train, progress, in_child: bool = False):
    """Quantization-aware fine-tuning of ``base`` (sparsity-preserving when it was pruned).

    Returns (LoadedModel, info): ``info`` is the QAT record, with the pruning
    record of ``base`` under ``pruning`` when there is one.
    """
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.host.training.qat import quantize_aware_train, quantize_aware_train_in_child

    pruned = base_info is not None
    stage = "quantization-aware fine-tuning" + (" (sparsity-preserving)" if pruned else "")
    result = (quantize_aware_train_in_child if in_child else quantize_aware_train)(
        base, config, train, preserve_sparsity=pruned, progress=_stage(progress, stage, "training batches")
    )
    info = {**result.to_dict(), "process": _process(in_child, train)}
    if pruned:
        info["pruning"] = base_info
    return LoadedModel.from_keras(result.model, base.name + "_qat"), info


def _fine_tune_record(train_path, info, qat: bool) -> Optional[dict]:
    """How a variant's model was fine-tuned (None: not at all): method, epochs, learning rate, data."""
    if info is None:
        return None
    if qat:
        record = {k: info[k] for k in ("method", "epochs", "learning_rate", "schedule", "batch_size", "train_samples",
                                       "train_seconds", "strategy", "replicas", "shard", "weights_sha256")}
        pruning = info.get("pruning")
        if pruning is not None and pruning.get("fine_tuned"):
            record["after_pruning"] = _fine_tune_record(train_path, pruning, False)
    elif info.get("fine_tuned"):
        config = info.get("config") or {}
        record = {"method": "prune", "epochs": info.get("epochs"), "learning_rate": config.get("learning_rate"),
                  "batch_size": config.get("batch_size"), "train_samples": info.get("train_samples"),
                  "train_seconds": info.get("train_seconds")}
    else:
        return None
    record["data"] = train_path
    record["process"] = info.get("process")  # "child": fine-tuned in a process of its own
    return record


def qat_command(opts: ConvertOptions, target: str, sparsity: Optional[float] = None) -> str:
    """The ``edgeresnet convert ... --qat`` command that retries ``target`` with quantization-aware training."""
    import shlex

    args = ["edgeresnet", "convert"] + ([opts.model] if opts.model else []) + ["--int8", "--target", target]
    args += (["--prune", f"{sparsity:g}"] if sparsity is not None else []) + ["--qat", "--train", opts.train or "TRAIN_DIR"]
    for flag, value in (("--calib", opts.calib), ("--eval", opts.eval), ("--preset", opts.preset),
                        ("--io", opts.io_type), ("--max-drop", opts.max_drop)):
        if value is not None:
            args += [flag, str(value)]
    args += ["--out", opts.out + "-qat"]
    return " ".join(a if a == "TRAIN_DIR" else shlex.quote(a) for a in args)
