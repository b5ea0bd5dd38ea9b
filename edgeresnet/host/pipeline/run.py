"""The ``convert`` and ``report`` jobs: check before any work, run the stages in a staged output folder,
write the report and judge the run."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from edgeresnet import __version__
from edgeresnet._util.files import (
    MiB,
    StagedDir,
    atomic_write_bytes,
    check_free_space,
    check_output,
    clean_stale_partials,
    clean_stale_tempdirs,
    failed_path,
    run_tempdir,
    tree_bytes,
    write_error,
)
from edgeresnet._util.outlock import output_lock
from edgeresnet._util.tf import require_host
from edgeresnet.device.metadata import LABELS_FILE, labels_text, read_labels_file
from edgeresnet.device.verify import baseline
from edgeresnet.errors import ConfigError, ConversionError, DataError, DeviceCheckError, DriftBudgetExceeded
from edgeresnet.host import device_check, shipping
from edgeresnet.device.presets import get_preset
from edgeresnet.host.device_check import check_variants, pi_python
from edgeresnet.host.memory import MemoryMeter
from edgeresnet.host.pipeline.context import NotifyFn, ProgressFn, RunContext, Source, stage_progress
from edgeresnet.host.pipeline.data import check_train, class_order, converter_calibration, folder_classes, load_data, same_data
from edgeresnet.host.pipeline.emit import Emitter, emit_all
from edgeresnet.host.pipeline.finetune import build_models, fine_tune_batch, fine_tuning_cluster, transfer
from edgeresnet.host.pipeline.model import (
    check_finite_weights,
    load_run_model,
    random_weights,
    random_weights_reason,
    timing_only,
    zoo_model_spec,
)
from edgeresnet.host.pipeline.options import ConvertOptions
from edgeresnet.host.pipeline.plan import convert_plan, sweep_plan
from edgeresnet.host.pipeline.worker import run_worker
from edgeresnet.report import WRITERS, RunReport, Status, write_reports
from edgeresnet.report.records import Timings
from edgeresnet.targets.edgetpu.compiler import COMPILER_HINT

_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


@dataclass(frozen=True)
class _Job:
    """What a run makes: the planned variants, how each is timed, the report formats; and when it started."""

    plan: list
    bench_config: object
    formats: tuple
    started: float


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
    return _run(_context(opts, progress, notify), convert_plan(opts))


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
    if random_weights(opts):
        opts = timing_only(opts)
    return _run(
        _context(opts, progress, notify), sweep_plan(opts, tuple(sparsities)),
        bench_config=bench_config, formats=tuple(WRITERS),
    )


def _context(opts: ConvertOptions, progress: Optional[ProgressFn], notify: Optional[NotifyFn]) -> RunContext:
    return RunContext(opts, progress, notify or (lambda msg: None))


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


def _run(ctx: RunContext, plan, bench_config=None, formats=None) -> RunReport:
    """Check --out and the inputs, then run in a staged output folder and a run-scoped temp folder."""
    opts = ctx.opts
    job = _Job(plan, bench_config, formats or opts.formats, time.perf_counter())
    cluster = fine_tuning_cluster(opts)
    if cluster is not None and not cluster.is_chief:  # only the chief writes --out
        return run_worker(ctx, plan, cluster)
    inputs = _inputs(opts)
    needs_calib, device_python = _check_before_work(opts, plan, inputs)
    with output_lock(opts.out):  # one run per --out: a second one is refused here, before any work
        for note in clean_stale_partials(opts.out) + clean_stale_tempdirs():
            ctx.notify(note)
        if same_data(opts.calib, opts.eval):
            ctx.notify(
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
                return _run_staged(ctx, job, staged, needs_calib, device_python)
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
    if opts.model is not None and zoo_model_spec(opts) is None:  # the model first: a wrong path is said before any data problem
        from edgeresnet.host.models.loading import check_model_path

        check_model_path(opts.model)
    if opts.weights is not None and not Path(opts.weights).is_file():
        raise DataError(f"--weights {opts.weights}: no such file; pass a local .h5 written by model.save_weights()")
    for p in (opts.calib, opts.eval, opts.train):
        if p is not None and not Path(p).exists():
            raise DataError(f"{p}: no such file or folder; pass an image folder or a .npy/.npz file")
    if opts.labels is not None:  # a bad --labels file fails before anything is loaded (its count: once the model is)
        read_labels_file(opts.labels)
    check_train(opts)
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


def _run_staged(ctx: RunContext, job: _Job, staged, needs_calib: bool, device_python=None) -> RunReport:
    """The job's stages in order: data, models, float baseline, emit (and recover) each variant, report."""
    ctx = replace(ctx, timings=Timings(), meter=MemoryMeter())  # time and memory are counted from here
    ctx, src, batch = _prepare(ctx)
    timings, meter = ctx.timings, ctx.meter
    with timings("prune"), meter("fine-tune"):
        transfer_info = transfer(ctx, src, ctx.notify)  # --classes: the new classifier, trained first
    with timings("calibration data"), meter("convert"):
        data = load_data(ctx, src, needs_calib)
    with timings("prune"), meter("fine-tune"):  # pruning and quantization-aware fine-tuning
        models, clustering = build_models(ctx, job.plan, src)
    with meter("convert"):
        converter_calibration(ctx.opts, data, src.preset)
    float_out, labels = _float_outputs(ctx, src, data)
    report = _start_report(ctx, src, data, models, (float_out, labels), transfer_info)
    report.cluster = _run_cluster_record(clustering)
    with timings("write"), meter("convert"):
        ship_info = _ship_info(ctx, src, data, report, staged)
    emit = Emitter(ctx, data, float_out, labels, job.bench_config, ship_info)
    report.recovery = ctx.opts.recover and ctx.opts.max_drop is not None
    with meter("convert"):
        if ctx.opts.jobs > 1:
            with timings("quantize"):
                emit.convert_in_parallel(job.plan, models)
        emit_all(ctx.opts, job.plan, models, emit, report, staged.path, clustering)
    _check_on_device(ctx, report, staged, device_python)
    _mark_at_chance(report)
    _warn_budget_within_margin(report, ctx.opts.max_drop, ctx.notify)
    if any(COMPILER_HINT in v.checks.get("edgetpu", {}).get("notes", ()) for v in report.variants):
        ctx.notify(f"note: {COMPILER_HINT}")  # once per run, not once per model
    report.memory = (batch or {}) | meter.to_dict()
    report.finish(time.perf_counter() - job.started)
    return _write_and_judge(ctx.opts, report, staged, job.formats)


def _prepare(ctx: RunContext) -> tuple:
    """Load the model and decide what can be before any long work: the fine-tuning batch, whether QAT can
    quantize the model, the preset, --labels' class order. Returns (the context with the tuned options,
    the Source, the report's record of the batch or None)."""
    opts = ctx.opts
    with ctx.timings("load"), ctx.meter("load"):
        loaded, reference_meta = load_run_model(opts)
        check_finite_weights(loaded, opts.model or "the reference model")
    opts, batch = fine_tune_batch(opts, loaded, ctx.notify)
    if opts.qat is not None:
        from edgeresnet.host.training.qat import check_quantizable

        check_quantizable(loaded)  # Keras 3, layers tfmot cannot quantize: refused before any long work
    if opts.cluster is not None:
        from edgeresnet.host.training.clustering import check_clusterable

        loaded.require_tf_keras("--cluster")
        check_clusterable(loaded.model)  # nested models: refused before any long work
    preset_name = opts.preset or (reference_meta or {}).get("preset") or "raw"
    preset = get_preset(preset_name)
    names, order_warning = class_order(opts, loaded, ctx.notify)  # before any long work
    src = Source(loaded, reference_meta, preset, preset_name, names, order_warning)
    return replace(ctx, opts=opts), src, batch


def _run_cluster_record(clustering: dict) -> Optional[dict]:
    """The run's --cluster record: the unpruned model's (else the first model's), with its per-layer values."""
    if not clustering:
        return None
    return clustering.get((None, False)) or next(iter(clustering.values()))


def _float_outputs(ctx: RunContext, src: Source, data) -> tuple:
    """The float model's outputs on the evaluation images and their labels (None, None: no evaluation)."""
    if data.eval is None:
        return None, None
    with ctx.timings("evaluate"), ctx.meter("evaluate"):
        float_out = data.eval_float.predict(
            src.loaded.predict, progress=stage_progress(ctx.progress, "evaluate float model", "images"))
    return float_out, data.eval.labels if data.eval.labelled else None


def _start_report(ctx: RunContext, src: Source, data, models, float_result: tuple, transfer_info) -> RunReport:
    """The report of the run so far: the model, its data, the float baseline, the fine-tuning."""
    opts, loaded = ctx.opts, src.loaded
    float_out, labels = float_result
    report = RunReport.start(
        model=loaded,
        source=opts.model or "built-in reference (digits-resnet8)",
        preset=src.preset_name,
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
    report.timings = ctx.timings
    report.at_chance = _float_at_chance(report, loaded, ctx.notify)
    return report


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


def _warn_budget_within_margin(report, max_drop, notify) -> None:
    """A warning when --max-drop is finer than what the evaluation images can measure: some variant's drop has a
    95 % margin (verify.drop_margin) wider than the budget, so passing or failing it is largely chance."""
    margins = [v.drift.drop_margin_pts for v in report.variants
               if v.drift is not None and v.drift.drop_margin_pts is not None and v.status != Status.FLOAT_AT_CHANCE]
    if max_drop is None or not margins or max(margins) <= max_drop:
        return
    count = report.evaluation.get("count")
    notify(
        f"warning: on {count} evaluation images a drop is known only to within ±{max(margins):.2f} points (95 %), "
        f"wider than --max-drop {max_drop:g}: whether a model meets the budget is partly chance; evaluate on more "
        "images (--eval; the margin shrinks with the square root of their number)"
    )


def _evaluation_record(data, labels, loaded) -> dict:
    if data.eval is None:  # a timing-only run (random weights): no accuracy, and the report says why
        return {"source": None, "origin": "not measured", "count": 0, "labelled": False,
                "not_measured": random_weights_reason(loaded.name)}
    from edgeresnet.device.image_files import image_set_sha256

    record = {"source": data.eval.source, "origin": data.eval_origin, "count": len(data.eval), "labelled": labels is not None}
    digest = image_set_sha256(data.eval.paths) if data.eval.source and Path(data.eval.source).is_dir() else None
    return record | ({"images_sha256": digest} if digest else {})  # eval on the device knows the same images by it


def _ship_info(ctx: RunContext, src: Source, data, report, staged):
    """The metadata every emitted model carries (and labels.txt beside them): ``src.names`` (--labels), else the
    class folders'."""
    opts, loaded = ctx.opts, src.loaded
    if src.names is not None:
        class_names, names_from = src.names, f"--labels {opts.labels}"
    else:
        class_names, names_from = shipping.resolve_labels(
            [("the evaluation data", data.eval), ("the calibration data", data.calib), ("--train", folder_classes(opts.train))],
            loaded.num_classes,
        )
    if class_names is None:
        ctx.notify("warning: the data is unlabelled, so the models carry no class names (apps show none); "
                   "pass --labels FILE with one name per line")
    # The metadata version is the release, never the clock: identical runs give bit-identical models.
    ship_info = shipping.model_info(
        loaded.name, src.preset, opts.fold_preprocessing, loaded.input_shape[-1], class_names,
        version=f"edgeresnet {__version__}", source=Path(str(report.model["source"])).name,
    )
    report.metadata = ship_info.to_dict() | {"labels_from": names_from, "labels_order": src.order_warning}
    if class_names is not None:
        atomic_write_bytes(staged.path / LABELS_FILE, labels_text(class_names).encode("utf-8"))
    return ship_info


def _check_on_device(ctx: RunContext, report, staged, device_python) -> None:
    """--device-check: evaluate every emitted model on the emulated device; its findings are warnings."""
    if device_python is None:
        return
    opts = ctx.opts
    with ctx.meter("evaluate"):
        check_variants(report.variants, staged.path, opts.eval, opts.eval_samples, opts.seed, device_python,
                       progress=stage_progress(ctx.progress, f"evaluate on the emulated {opts.device_check}", "images"))
    for finding in device_check.findings(report.variants):
        ctx.notify(f"warning: {finding}")


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
            + (f"; {_retry_reason(hint)}, try: {hint.suggestion}" if hint else "")
        )
    if failed:
        raise ConversionError(
            f"{failed[0].name}: {failed[0].status.value.replace('_', ' ')}: {failed[0].error}; "
            f"the report is in {dest} ({opts.out} was left as it was)"
        )
    if device_failure:
        raise DeviceCheckError(f"{device_failure}; the report is in {dest} ({opts.out} was left as it was)")
    return report


def _retry_reason(v) -> str:
    """Why the over-budget error suggests ``v.suggestion`` (a command from emit.retry_command)."""
    from edgeresnet.targets import get_target

    if not get_target(v.target).float_layers:  # emit._suggest_retry suggested --qat
        return f"{v.target} cannot keep layers in float"
    if v.recovered_by:
        return f"keeping layers in float did not meet the budget on {v.target}"
    return "16-bit activations (int16x8) agree more with the float model"
