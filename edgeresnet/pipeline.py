"""The ``convert`` job: load, calibrate, convert per target, verify, report.

This is the Python API behind ``edgeresnet convert``. It never prints: progress
goes to an optional ``progress(stage, done, total)`` callback and notices to an
optional ``notify(message)`` callback; everything else is in the returned
:class:`~edgeresnet.report.RunReport`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import checks as checks_mod
from .calibration import (
    DEFAULT_SAMPLES,
    ImageSet,
    calibration_record,
    get_preset,
    load_images,
)
from .convert import ConversionSpec, convert
from .errors import ConfigError, ConversionError, DataError, DriftBudgetExceeded, TFLiteFileError
from .edgetpu import COMPILER_HINT
from .fsutil import StagedDir, atomic_write_bytes, check_output_free
from .report import RunReport, VariantRecord, write_reports
from .runtime import TFLiteModel
from .targets import PRECISIONS, Target, get_target
from .verify import baseline, drift, over_budget

ProgressFn = Callable[[str, int, int], None]
NotifyFn = Callable[[str], None]

DEFAULT_OUT = "edgeresnet-out"
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
    prune: Optional[object] = None  # a prune.PruneConfig
    train: Optional[str] = None

    def __post_init__(self):
        if not self.targets:
            raise ConfigError("no target given; pass --target cpu, edgetpu or gpu")
        for name in self.targets:
            get_target(name)  # raises TargetError with a suggestion
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"a target is repeated in {list(self.targets)}; give each once")
        if self.calib_samples is None or self.calib_samples <= 0:
            raise ConfigError(f"--calib-samples must be a positive number of images, got {self.calib_samples}")
        if self.eval_samples is not None and self.eval_samples <= 0:
            raise ConfigError(f"--eval-samples must be positive, got {self.eval_samples}")
        if self.max_drop is not None and not (self.max_drop >= 0):
            raise ConfigError(f"--max-drop must be zero or more accuracy points, got {self.max_drop}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        if self.resize not in ("crop", "stretch"):
            raise ConfigError(f"--resize must be crop or stretch, got {self.resize!r}")
        if self.train is not None and self.prune is None:
            raise ConfigError("--train is used for pruning fine-tuning; add --prune SPARSITY")

    def variant_plan(self) -> list[tuple[Target, ConversionSpec]]:
        """One (target, spec) per requested target."""
        plan = []
        for name in self.targets:
            target = get_target(name)
            precision = target.precision_for(self.int8, self.precision)
            integer_io = PRECISIONS[precision].integer_only
            io = target.io_type_for(precision, self.io_type if integer_io else None)
            plan.append((target, ConversionSpec(precision=precision, io_type=io)))
        return plan


@dataclass
class _Data:
    calib: Optional[ImageSet] = None
    calib_float: Optional[np.ndarray] = None
    eval: Optional[ImageSet] = None
    eval_float: Optional[np.ndarray] = None
    eval_note: str = ""
    notes: list = field(default_factory=list)


def _load_model(opts: ConvertOptions):
    from .models.loading import LoadedModel, load_model

    if opts.model is None:
        from . import demo

        loaded = load_model(demo.reference_model_path())
        return loaded, demo.reference_metadata()
    return load_model(opts.model), None


def _eval_set(opts, loaded, reference_meta, calib: Optional[ImageSet], progress) -> tuple[ImageSet, str]:
    shape = loaded.input_shape
    if opts.eval is not None:
        images = load_images(
            opts.eval, shape, samples=opts.eval_samples, seed=opts.seed, resize=opts.resize,
            progress=_stage(progress, "load eval images"),
        )
        return images, "--eval"
    if reference_meta is not None and opts.calib is None:
        from . import demo

        return demo.digits_images("eval"), "built-in held-out split"
    if opts.calib is not None and Path(opts.calib).is_dir():
        # Images of the calibration folder that calibration did not use.
        try:
            images = load_images(
                opts.calib, shape, samples=opts.eval_samples or HELD_OUT_EVAL_SAMPLES,
                seed=opts.seed + 1, resize=opts.resize, exclude=set(calib.paths) if calib is not None else None,
                progress=_stage(progress, "load eval images"),
            )
            return images, "calibration folder, images not used for calibration (no --eval given)"
        except DataError:
            pass
    if calib is None:
        raise DataError("nothing to evaluate on; pass --eval with a folder of images")
    return calib, "the calibration images themselves (no --eval given; in-sample)"


def _stage(progress: Optional[ProgressFn], stage: str):
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _check_classes(images: ImageSet, num_classes: int, flag: str):
    if images.labelled and images.class_names is not None and len(images.class_names) != num_classes:
        raise DataError(
            f"{flag} has {len(images.class_names)} class folders but the model has {num_classes} outputs; "
            "use one sub-folder per model class (sorted names give the label order)"
        )


def _file_name(model_name: str, target: Target, spec: ConversionSpec) -> str:
    io = "" if spec.io_type in ("float32",) or spec.io_type == target.int8_io_types[0] else f"_{spec.io_type}io"
    return f"{model_name}_{target.name}_{spec.precision}{io}.tflite"


def run_convert(
    opts: ConvertOptions,
    progress: Optional[ProgressFn] = None,
    notify: Optional[NotifyFn] = None,
) -> RunReport:
    """Run the whole convert job and return its report (also written to ``opts.out``).

    Raises :class:`DriftBudgetExceeded` *after* writing everything when a
    model's drop exceeds ``opts.max_drop``.
    """
    notify = notify or (lambda msg: None)
    started = time.perf_counter()
    plan = opts.variant_plan()
    check_output_free(opts.out, opts.overwrite)
    for p in (opts.calib, opts.eval, opts.train):
        if p is not None and not Path(p).exists():
            raise DataError(f"{p}: no such file or folder; pass an image folder or a .npy/.npz file")
    needs_calib = any(t.needs_calibration(s.precision) for t, s in plan)
    if needs_calib and opts.calib is None and opts.model is not None:
        names = ", ".join(f"{t.name}/{s.precision}" for t, s in plan if t.needs_calibration(s.precision))
        raise ConfigError(
            f"{names} needs calibration data; pass --calib with a folder of images like the ones the model will see"
        )

    loaded, reference_meta = _load_model(opts)
    preset_name = opts.preset or (reference_meta or {}).get("preset") or "raw"
    preset = get_preset(preset_name)
    data = _Data()
    calib_record = None

    # Calibration data.
    if needs_calib or opts.calib is not None:
        if opts.calib is None:
            from . import demo

            full = demo.digits_images("calib")
            data.calib = full.subset(_seeded_pick(len(full), opts.calib_samples, opts.seed))
        else:
            data.calib = load_images(
                opts.calib, loaded.input_shape, samples=opts.calib_samples, seed=opts.seed,
                resize=opts.resize, progress=_stage(progress, "load calibration images"),
            )
        calib_record = calibration_record(data.calib, preset_name, opts.seed, opts.resize)
        for w in calib_record.warnings:  # e.g. fewer than MIN_RECOMMENDED_SAMPLES images
            notify(f"warning: {w}")
        data.calib_float = preset.apply(data.calib.images)

    data.eval, eval_origin = _eval_set(opts, loaded, reference_meta, data.calib, progress)
    _check_classes(data.eval, loaded.num_classes, "--eval" if opts.eval else "the evaluation data")
    data.eval_float = preset.apply(data.eval.images)

    model_for_conversion = loaded
    prune_info = None
    if opts.prune is not None:
        model_for_conversion, prune_info = _prune(opts, loaded, preset, progress, notify)

    if opts.fold_preprocessing:
        from .calibration import fold_preprocessing
        from .models.loading import LoadedModel

        loaded.require_tf_keras("--fold-preprocessing")
        folded = fold_preprocessing(model_for_conversion.model, preset)
        model_for_conversion = LoadedModel.from_keras(folded, loaded.name)
        conv_calib = None if data.calib is None else data.calib.images.astype(np.float32)
        conv_eval = data.eval.images.astype(np.float32)
    else:
        conv_calib, conv_eval = data.calib_float, data.eval_float

    float_out = loaded.predict(data.eval_float, progress=_stage(progress, "evaluate float model"))
    labels = data.eval.labels if data.eval.labelled else None
    base = baseline(float_out, labels)

    report = RunReport.start(
        model=loaded,
        source=opts.model or "built-in reference (digits-resnet8)",
        preset=preset_name,
        folded=opts.fold_preprocessing,
        calibration=calib_record.to_dict() if data.calib is not None else None,
        evaluation={
            "source": data.eval.source,
            "origin": eval_origin,
            "count": len(data.eval),
            "labelled": labels is not None,
        },
        baseline=base,
        max_drop=opts.max_drop,
        prune=prune_info,
    )

    with StagedDir(opts.out, opts.overwrite) as staged:
        for target, spec in plan:
            name = _file_name(model_for_conversion.name, target, spec)
            rec = VariantRecord(name=name, target=target.name, precision=spec.precision, io_type=spec.io_type)
            try:
                result = convert(
                    model_for_conversion.tflite_converter,
                    spec,
                    conv_calib if spec.needs_calibration else None,
                    progress=_stage(progress, f"calibrate {target.name}/{spec.precision}"),
                )
            except ConversionError as exc:
                rec.fail("convert_failed", str(exc))
                report.add(rec)
                notify(f"{target.name}/{spec.precision}: conversion failed: {exc}")
                continue
            rec.convert_seconds = round(result.seconds, 3)
            try:
                tfl = TFLiteModel(result.model)
                out = tfl.predict(conv_eval, progress=_stage(progress, f"evaluate {name}"))
            except TFLiteFileError as exc:
                rec.fail("validation_failed", f"emitted model does not run: {exc}")
                report.add(rec)
                continue
            rec.interpreter = f"{tfl.backend.name} {tfl.backend.version}"
            rec.set_drift(drift(float_out, out, labels))
            path = staged.path / name
            atomic_write_bytes(path, result.model)
            rec.set_file(path, opts.out)
            rec.checks = checks_mod.run_checks(target, spec, result.model, path)
            failed = [k for k, v in rec.checks.items() if v.get("ok") is False and v.get("blocking", True)]
            if failed:
                rec.fail("validation_failed", "failed checks: " + ", ".join(failed))
            elif over_budget(rec.drift, opts.max_drop):
                rec.fail("over_budget", f"drop exceeds --max-drop {opts.max_drop}")
            report.add(rec)
        if any(COMPILER_HINT in v.checks.get("edgetpu", {}).get("notes", ()) for v in report.variants):
            notify(f"note: {COMPILER_HINT}")  # once per run, not once per model
        report.finish(time.perf_counter() - started)
        write_reports(report, staged.path)
        staged.commit()

    bad = [v for v in report.variants if v.status == "over_budget"]
    if bad:
        worst = max(bad, key=lambda v: v.drift.drop_pts if v.drift.drop_pts is not None else 100 - v.drift.agreement)
        raise DriftBudgetExceeded(
            f"{worst.name}: accuracy drop {worst.drop_text()} exceeds --max-drop {opts.max_drop}; "
            f"the report is in {opts.out}"
        )
    failed = [v for v in report.variants if v.status in ("convert_failed", "validation_failed")]
    if failed:
        raise ConversionError(
            f"{failed[0].name}: {failed[0].status.replace('_', ' ')}: {failed[0].error}; the report is in {opts.out}"
        )
    return report


def _seeded_pick(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[: min(k, n)])


def _prune(opts, loaded, preset, progress, notify):
    """Prune (and fine-tune when --train is given); returns (LoadedModel, report dict)."""
    from .models.loading import LoadedModel
    from .prune import prune_model

    train = None
    if opts.train is not None:
        images = load_images(
            opts.train, loaded.input_shape, samples=None, seed=opts.seed, resize=opts.resize,
            progress=_stage(progress, "load training images"),
        )
        if not images.labelled:
            raise DataError(f"{opts.train} has no class sub-folders; --train needs one sub-folder per class")
        _check_classes(images, loaded.num_classes, "--train")
        train = (preset.apply(images.images), images.labels)
    result = prune_model(loaded, opts.prune, train=train, progress=_stage(progress, "fine-tune pruned model"))
    for w in result.warnings:
        notify(f"warning: {w}")
    return LoadedModel.from_keras(result.model, loaded.name + f"_pruned{int(round(opts.prune.sparsity * 100))}"), result.to_dict()
