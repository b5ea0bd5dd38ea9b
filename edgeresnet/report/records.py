"""The run report's records: one typed record per emitted variant, and the run around them.

``report.json`` is their ``to_dict()``; its JSON Schema ships next to this
module (``schema.json``, checked by :func:`edgeresnet.report.schema.validate_report`).
In short:

- ``model``: name, source, flavor, input_shape, classes, params, safe_mode (loaded with the
  code checks on; false after ``--trust-model-code``)
- ``preprocessing``: preset, folded
- ``calibration``: the calibration record (source, count, seed, preset, ...)
- ``evaluation``: source, origin, count, labelled
- ``float``: the float Keras model's count, top1, top5
- ``variants``: :class:`VariantRecord` dicts: ``target``, ``precision``,
  ``path``, ``sha256`` (of the file), ``size_bytes``, ``top1``, ``drop_pts``, ``agreement``, ...
  and a :class:`Status`: ``ok``, ``over_budget``, ``convert_failed`` (no model was
  produced), ``validation_failed`` (a model was produced, and it failed a check) or
  ``float_at_chance`` (the float model scores at chance: its drift figures mean nothing)
- ``prune`` / ``cluster``: with --prune or --cluster N, how the models were pruned or clustered
- ``max_drop``, ``passed``, ``seconds``, ``edgeresnet_version``, ``created``
- ``timings``: seconds per stage (:data:`STAGES`) summed over the run, so a user sees where the time goes
- ``memory``: peak RSS (MiB) per stage, and with fine-tuning the batch it used and the bound it was chosen for
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional

from edgeresnet import __version__
from edgeresnet.device.sparsity import compressed_size
from edgeresnet.device.verify import Baseline, Drift


class Status(str, Enum):
    """What happened to one variant (the value is what ``report.json`` says)."""

    OK = "ok"
    OVER_BUDGET = "over_budget"  # a model was produced and runs, but lost more than --max-drop
    CONVERT_FAILED = "convert_failed"  # no model was produced
    VALIDATION_FAILED = "validation_failed"  # a model was produced, and it failed a check or did not run
    FLOAT_AT_CHANCE = "float_at_chance"  # a model was produced, but the float model it is compared with scores at chance

    def __str__(self) -> str:
        return self.value

    @property
    def failed(self) -> bool:
        """Conversion or validation failed (over budget is a measurement, not a failure)."""
        return self in (Status.CONVERT_FAILED, Status.VALIDATION_FAILED)


STATUSES = tuple(s.value for s in Status)

# Optional fields of a variant: written to report.json only when set, in this order.
OPTIONAL_FIELDS = (
    "int8_method", "int8_quantization", "runtimes", "weight_sparsity", "latency", "input_note", "prune", "cluster",
    "worst_layers", "recovered_by", "recovery", "device", "fine_tune", "suggestion",
)


@dataclass
class VariantRecord:
    """One emitted (or failed) model: declared fields only; the JSON Schema has the same ones."""

    name: str
    target: str
    precision: str
    io_type: str
    status: Status = Status.OK
    error: Optional[str] = None
    path: Optional[str] = None
    sha256: Optional[str] = None  # of the emitted file: a device finds its numbers by it (edgeresnet eval --report)
    size_bytes: Optional[int] = None
    compressed_bytes: Optional[int] = None
    convert_seconds: Optional[float] = None
    interpreter: Optional[str] = None
    drift: Optional[Drift] = None
    checks: dict = field(default_factory=dict)  # check name -> {ok, blocking, summary, ...} (targets.checks)
    int8_method: Optional[str] = None  # the quantize method of an int8 (or recovered int8+float) model; of int16x8:
    # the method that chose its int8 weights (quantize.int16x8)
    # How that method came to be and what it cost (quantize.choice.quantization_record): asked, seconds,
    # and for --int8-method auto the methods it scored on held-out calibration samples.
    int8_quantization: Optional[dict] = None
    runtimes: Optional[dict] = None  # which runtimes take the shipped file (shipping.runtimes)
    weight_sparsity: Optional[float] = None  # share of conv/fc weights stored as zero in the file
    latency: Optional[dict] = None  # bench.BenchResult.to_dict(), when timed
    input_note: Optional[str] = None
    prune: Optional[dict] = None  # the pruning summary of a pruned variant
    cluster: Optional[dict] = None  # --cluster N: the clustering summary (training.clustering.cluster_record, no layers)
    worst_layers: Optional[list] = None  # over budget where float layers cannot run: the worst int8 layers
    recovered_by: Optional[str] = None  # over budget: the name of the recovered variant
    recovery: Optional[dict] = None  # a recovered variant: quantize.recovery.RecoveryResult.to_dict() + cost
    device: Optional[dict] = None  # --device-check: the model evaluated on the device (device_check)
    # How the model was fine-tuned (pipeline.finetune.fine_tune_record, cluster_fine_tune_record): method
    # prune/qat/pqat/cluster, epochs, learning_rate, data.
    fine_tune: Optional[dict] = None
    suggestion: Optional[str] = None  # over budget: the command to try (--qat without float layers, else int16x8)

    def fail(self, status, error: str) -> None:
        self.status = Status(status)  # ValueError for an unknown status
        self.error = error

    def set_drift(self, d: Drift) -> None:
        self.drift = d

    def set_file(self, path: Path, out_dir) -> None:
        data = Path(path).read_bytes()
        self.size_bytes = len(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.compressed_bytes = compressed_size(data)
        self.path = str(Path(out_dir) / Path(path).name)

    def drop_text(self) -> str:
        if self.drift is None:
            return "n/a"
        if self.drift.drop_pts is not None:
            return f"{self.drift.drop_pts:.2f} pts"
        return f"{100 - self.drift.agreement:.2f} pts disagreement"

    def to_dict(self) -> dict:
        d = self.drift.to_dict() if self.drift is not None else {}
        return {
            "name": self.name,
            "target": self.target,
            "precision": self.precision,
            "io_type": self.io_type,
            "status": self.status.value,
            "error": self.error,
            "path": self.path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "compressed_bytes": self.compressed_bytes,
            "top1": d.get("top1"),
            "top5": d.get("top5"),
            "drop_pts": d.get("drop_pts"),
            "drop_margin_pts": d.get("drop_margin_pts"),
            "agreement": d.get("agreement"),
            "cosine": d.get("cosine"),
            "sqnr_db": d.get("sqnr_db"),
            "eval_count": d.get("count"),
            "convert_seconds": self.convert_seconds,
            "interpreter": self.interpreter,
            "checks": self.checks,
            **{k: getattr(self, k) for k in OPTIONAL_FIELDS if getattr(self, k) is not None},
        }


STAGES = ("load", "prune", "calibration data", "statistics", "quantize", "evaluate", "checks", "benchmark",
          "recover", "write")


class Timings:
    """Seconds per stage of a run (:data:`STAGES`), summed: ``with timings("evaluate"): ...``.

    ``write`` counts the models and labels written; the report files, written
    last, are not in it.
    """

    def __init__(self):
        self.seconds = {s: 0.0 for s in STAGES}

    def add(self, stage: str, seconds: float) -> None:
        if stage not in self.seconds:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        self.seconds[stage] += max(float(seconds), 0.0)

    def __call__(self, stage: str):
        return _Timed(self, stage)

    def to_dict(self) -> dict:
        return {s: round(v, 3) for s, v in self.seconds.items()}


class _Timed:
    def __init__(self, timings: Timings, stage: str):
        self.timings, self.stage = timings, stage

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.timings.add(self.stage, time.perf_counter() - self.start)
        return False


@dataclass
class RunReport:
    model: dict
    preprocessing: dict
    calibration: Optional[dict]
    evaluation: dict
    baseline: Baseline
    max_drop: Optional[float]
    prune: Optional[dict] = None
    cluster: Optional[dict] = None  # --cluster N: clusters, fine-tuning and each clustered layer's distinct values
    variants: list = field(default_factory=list)
    recovery: bool = False  # whether over-budget int8 models were allowed to keep layers in float
    metadata: Optional[dict] = None  # the TFLite metadata every emitted model carries (shipping.model_info)
    seconds: Optional[float] = None
    created: str = ""
    timings: Timings = field(default_factory=Timings)
    memory: Optional[dict] = None  # peak RSS per stage and the fine-tuning batch (memory.MemoryMeter, BatchChoice)
    at_chance: Optional[dict] = None  # the float model scores at chance (verify.at_chance)

    @classmethod
    def start(cls, *, model, source, preset, folded, calibration, evaluation, baseline, max_drop, prune=None):
        info = {
            "name": model.name,
            "source": str(source),
            "flavor": model.flavor,
            "input_shape": list(model.input_shape),
            "classes": model.num_classes,
            "safe_mode": model.safe_mode,
        }
        params = getattr(model, "params", None)
        if params is not None:
            info["params"] = params
        return cls(
            model=info,
            preprocessing={"preset": preset, "folded_into_model": bool(folded)},
            calibration=calibration,
            evaluation=evaluation,
            baseline=baseline,
            max_drop=max_drop,
            prune=prune,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )

    def add(self, rec: VariantRecord) -> None:
        self.variants.append(rec)

    def finish(self, seconds: float) -> None:
        self.seconds = round(seconds, 2)

    @property
    def passed(self) -> bool:
        """Every variant is ok, or was over budget and replaced by a recovered variant that is ok."""
        ok = {v.name for v in self.variants if v.status == Status.OK}
        return all(v.status == Status.OK or v.recovered_by in ok for v in self.variants)

    def to_dict(self) -> dict:
        out = {
            "edgeresnet_version": __version__,
            "created": self.created,
            "model": self.model,
            "preprocessing": self.preprocessing,
            "calibration": self.calibration,
            "evaluation": self.evaluation,
            "float": self.baseline.to_dict() | ({"at_chance": self.at_chance} if self.at_chance else {}),
            "max_drop": self.max_drop,
            "recovery": self.recovery,
            "passed": self.passed,
            "seconds": self.seconds,
            "timings": self.timings.to_dict(),
            "variants": [v.to_dict() for v in self.variants],
        }
        if self.prune is not None:
            out["prune"] = self.prune
        if self.cluster is not None:
            out["cluster"] = self.cluster
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.memory is not None:
            out["memory"] = self.memory
        return out
