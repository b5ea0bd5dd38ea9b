"""Emitting the planned variants: convert, ship (metadata), run, measure and check each (:class:`Emitter`),
recover an over-budget int8 one, and say what quantization-aware training would retry."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from edgeresnet._util.files import atomic_write_bytes
from edgeresnet.device.runtime import EVAL_BATCH, TFLiteModel
from edgeresnet.device.verify import baseline, drift, over_budget
from edgeresnet.errors import ConversionError, TFLiteFileError
from edgeresnet.host import shipping
from edgeresnet.host.converter import convert
from edgeresnet.host.pipeline.context import RunContext, stage_progress
from edgeresnet.host.pipeline.data import RunData
from edgeresnet.host.pipeline.finetune import cluster_fine_tune_record, fine_tune_record
from edgeresnet.host.pipeline.options import ConvertOptions
from edgeresnet.host.pipeline.plan import PlannedVariant, file_name
from edgeresnet.report import Status, VariantRecord
from edgeresnet.targets.checks import run_checks


class Emitter:
    """Converts, runs, measures and checks one planned variant; caches identical conversions."""

    def __init__(self, ctx: RunContext, data: RunData, float_out, labels, bench_config, ship_info):
        self.timings, self.meter = ctx.timings, ctx.meter
        self.opts, self.float_out, self.labels = ctx.opts, float_out, labels
        self.ship_info = ship_info
        self.conv_calib, self.conv_eval = data.conv_calib, data.conv_eval
        self.progress, self.notify, self.bench_config = ctx.progress, ctx.notify, bench_config
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
        name = file_name(model.name, target, spec)
        rec = VariantRecord(name=name, target=target.name, precision=spec.precision, io_type=spec.io_type)
        result = self._convert(model, planned, name, rec)
        if result is None:
            return rec
        rec.convert_seconds = round(result.seconds, 3)
        if spec.precision == "int8":
            rec.int8_method = spec.method
        if result.session is not None:  # the engine's own account: the method auto kept (int16x8: the method
            rec.int8_method = result.session.method.name  # that chose its int8 weights), what each cost
            rec.int8_quantization = result.session.record(spec.method)
        with self.timings("checks"):
            shipped = self._ship(result.model, rec)  # what is written, run and checked: the model with its metadata
        if not self._evaluate(shipped, name, rec):
            return rec
        self._write_and_check(shipped, planned, folder, rec)
        return rec

    def _convert(self, model, planned: PlannedVariant, name: str, rec: VariantRecord):
        """The conversion of ``planned`` (once per model and spec), or None when it failed (``rec`` says why)."""
        spec = planned.spec
        key = (planned.model_key, spec)
        try:
            if key not in self.cache:
                self.cache[key] = convert(
                    model.tflite_converter,
                    spec,
                    self.conv_calib if spec.needs_calibration else None,
                    progress=stage_progress(self.progress, f"calibrate {name}"),
                )
                session_seconds = getattr(self.cache[key].session, "seconds", None) or {}
                for stage, sec in session_seconds.items():
                    self.timings.add(stage, sec)
                if not session_seconds:
                    self.timings.add("quantize", self.cache[key].seconds)
            return self.cache[key]
        except ConversionError as exc:
            rec.fail(Status.CONVERT_FAILED, str(exc))
            self.notify(f"{name}: conversion failed: {exc}")
            return None

    def _evaluate(self, shipped: bytes, name: str, rec: VariantRecord) -> bool:
        """Run the shipped model on the evaluation images (once, timing only); False when it does not run."""
        try:
            with self.timings("evaluate"), self.meter("evaluate"):
                tfl = TFLiteModel(shipped)
                if self.conv_eval is None:  # timing only: one run proves the model runs; accuracy is not measured
                    tfl.predict(self.sample())
                else:
                    out = self.conv_eval.predict(partial(tfl.predict, batch=EVAL_BATCH),
                                                 progress=stage_progress(self.progress, f"evaluate {name}", "images"))
        except TFLiteFileError as exc:
            rec.fail(Status.VALIDATION_FAILED, f"emitted model does not run: {exc}")
            return False
        rec.interpreter = f"{tfl.backend.name} {tfl.backend.version}"
        if self.conv_eval is not None:
            rec.set_drift(drift(self.float_out, out, self.labels))
            self.outputs[name] = out
        return True

    def _write_and_check(self, shipped: bytes, planned: PlannedVariant, folder: Path, rec: VariantRecord) -> None:
        """Write the shipped model, run the target's checks (and the benchmark), and judge it."""
        target, spec, name = planned.target, planned.spec, rec.name
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
                    shipped, self.bench_config, progress=stage_progress(self.progress, f"benchmark {name}", "runs"),
                    isolate=False,  # a model this run wrote and already ran
                ).to_dict()
        failed = [k for k, v in rec.checks.items() if v.get("ok") is False and v.get("blocking", True)]
        if failed:
            rec.fail(Status.VALIDATION_FAILED, "failed checks: " + ", ".join(failed))
        elif over_budget(rec.drift, self.opts.max_drop):
            rec.fail(Status.OVER_BUDGET, f"drop exceeds --max-drop {self.opts.max_drop}")

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
            progress=stage_progress(self.progress, f"recover {rec.name}"), method=spec.method, session=session,
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

    def convert_in_parallel(self, plan, models) -> None:
        """--jobs N: fill the conversion cache from N child processes (see edgeresnet.host.pipeline.parallel)."""
        import tempfile

        from edgeresnet.host.converter import ConversionResult
        from edgeresnet.host.pipeline.parallel import convert_in_parallel

        work = {}
        for planned in plan:
            key = (planned.model_key, planned.spec)
            if key not in self.cache and not planned.qat:  # quantization-aware models convert in-process
                work[key] = (key, models[planned.model_key][0], planned.spec)
        if len(work) < 2:
            return
        folder = Path(tempfile.mkdtemp(prefix="jobs-"))  # inside the run's temporary folder
        jobs = self.opts.jobs
        done = convert_in_parallel(
            jobs, list(work.values()), self.conv_calib, folder, trust_code=self.opts.trust_model_code,
            progress=stage_progress(self.progress, f"convert {len(work)} variants in {jobs} processes", "variants"),
        )
        for key, (model_bytes, seconds) in done.items():
            self.cache[key] = ConversionResult(spec=key[1], model=model_bytes, seconds=seconds, log="")


def _zero_fraction(model: bytes) -> float:
    """Share of conv/fc weights stored as zero in the emitted model."""
    from edgeresnet.device.sparsity import tflite_weight_sparsity

    return round(float(tflite_weight_sparsity(model)["fraction"]), 4)


def _vs_pruned_float(float_out, out, labels, info, clustered: bool = False) -> dict:
    """A pruned variant against its own pruned (fine-tuned) float model: the conversion's error alone.

    The variant's own ``drop_pts`` and ``agreement`` compare it with the unpruned float model,
    so they mix pruning, fine-tuning and quantization.
    """
    d = drift(float_out, out, labels).to_dict()
    ref = baseline(float_out, labels).to_dict()
    how = "pruned and fine-tuned" if info.get("fine_tuned") else "pruned one-shot"
    how += ", then clustered (--cluster)" if clustered else ""
    return {
        "reference": f"the {how} float Keras model (before conversion)",
        "float_top1": ref["top1"],
        "float_top5": ref["top5"],
        **{k: d.get(k) for k in ("top1", "drop_pts", "agreement", "cosine", "sqnr_db")},
    }


def _prune_record(emit: Emitter, planned: PlannedVariant, model, info, rec: VariantRecord, own_float: dict,
                  clustered: bool = False) -> None:
    """A pruned variant's pruning record, and how it compares with its own pruned (``clustered``: and clustered)
    float model."""
    prune = (info or {}).get("pruning") if planned.qat else info
    if planned.sparsity is None or prune is None:
        return
    rec.prune = {k: v for k, v in prune.items() if k != "layers"}
    if rec.name in emit.outputs and not planned.qat:
        if planned.sparsity not in own_float:
            with emit.meter("evaluate"):
                own_float[planned.sparsity] = emit.conv_eval.predict(model.predict, progress=stage_progress(
                    emit.progress, f"evaluate pruned float model ({planned.sparsity:g})", "images"))
        rec.prune["vs_pruned_float"] = _vs_pruned_float(
            own_float[planned.sparsity], emit.outputs[rec.name], emit.labels, info, clustered)


def emit_all(opts: ConvertOptions, plan, models, emit: Emitter, report, folder: Path,
             clustering: Optional[dict] = None) -> None:
    """Every planned variant, converted, measured and checked; an over-budget int8 one also recovered.
    ``clustering``: model_key -> the --cluster record of that model (finetune.build_models)."""
    own_float: dict = {}  # sparsity -> the pruned float model's outputs on the evaluation images
    for planned in plan:
        model, info = models[planned.model_key]
        rec = emit(model, planned, folder)
        clustered = (clustering or {}).get(planned.model_key)
        _prune_record(emit, planned, model, info, rec, own_float, clustered is not None)
        rec.fine_tune = fine_tune_record(opts.train, info, planned.qat)
        if clustered is not None:
            rec.cluster = {k: v for k, v in clustered.items() if k != "layers"}  # the run's record has the layers
            if not planned.qat:  # a QAT model's record is its (cluster-preserving) QAT
                rec.fine_tune = cluster_fine_tune_record(opts.train, clustered, rec.fine_tune)
        report.add(rec)
        recovered = None
        if rec.status == Status.OVER_BUDGET and planned.qat:
            rec.error += "; quantization-aware models are not recovered by keeping layers in float"
        elif rec.status == Status.OVER_BUDGET and opts.recover and planned.spec.precision == "int8":
            with emit.timings("recover"):
                recovered = emit.recover(model, planned, rec, folder)
            if recovered is not None:
                report.add(recovered)
        if rec.status == Status.OVER_BUDGET and not planned.qat:
            _suggest_retry(opts, plan, planned, rec, recovered)


def _suggest_retry(opts: ConvertOptions, plan, planned, rec, recovered) -> None:
    """An over-budget model: the command most likely to win the accuracy back, in ``rec.suggestion`` and its error.

    Where no layer can stay float (Edge TPU): quantization-aware training. Where the target runs 16-bit
    activations and keeping layers in float did not meet the budget (or was turned off): int16x8, whose
    activations remove most of int8's disagreement with the float model (docs/int8.md), unless this run
    (a ``report`` sweep) already emits it."""
    target = planned.target
    if not target.float_layers:
        rec.suggestion = retry_command(opts, target.name, planned.sparsity, "qat")
        rec.error += f"; try quantization-aware training: {rec.suggestion}"
        return
    swept = any(p.target.name == target.name and p.sparsity == planned.sparsity and p.spec.precision == "int16x8"
                for p in plan)
    if (planned.spec.precision == "int8" and "int16x8" in target.precisions and not swept
            and (recovered is None or recovered.status != Status.OK)):
        rec.suggestion = retry_command(opts, target.name, planned.sparsity, "int16x8")
        rec.error += f"; try 16-bit activations (closer to float, several times slower): {rec.suggestion}"


def retry_command(opts: ConvertOptions, target: str, sparsity: Optional[float], how: str) -> str:
    """The ``edgeresnet convert`` command that retries ``target`` with ``how``: "qat" (quantization-aware
    training, ``--qat``) or "int16x8" (``--precision int16x8``), the run's other options kept."""
    import shlex

    from edgeresnet.host.quantize.registry import DEFAULT_METHOD

    args = ["edgeresnet", "convert"] + ([opts.model] if opts.model else [])
    args += ["--int8"] if how == "qat" else ["--precision", "int16x8"]
    args += ["--target", target] + (["--prune", f"{sparsity:g}"] if sparsity is not None else [])
    if how == "qat":
        args += ["--qat", "--train", opts.train or "TRAIN_DIR"]
    options = (("--calib", opts.calib), ("--eval", opts.eval), ("--preset", opts.preset), ("--max-drop", opts.max_drop))
    if how == "qat":
        options += (("--io", opts.io_type),)
    elif opts.int8_method != DEFAULT_METHOD:
        options += (("--int8-method", opts.int8_method),)
    for flag, value in options:
        if value is not None:
            args += [flag, str(value)]
    args += ["--out", f"{opts.out}-{how}"]
    return " ".join(a if a == "TRAIN_DIR" else shlex.quote(a) for a in args)
