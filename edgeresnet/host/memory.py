"""Memory: the fine-tuning batch chosen to fit a bound, and the peak resident memory of each stage of a run.

Training memory grows with the batch: TensorFlow keeps every layer's output of
the batch for the backward pass, and its oneDNN allocator keeps the largest
step's memory as a pool. :func:`choose_batch` estimates a fine-tuning
process's peak as a fixed part (TensorFlow, the model, its gradients and
optimizer slots, the input pipeline) plus the batch times the model's
per-image activations, and takes the largest batch of :data:`BATCHES` (at
most the configured one) whose estimate fits the bound: the smaller of
:data:`BUDGET` and the memory the machine has available.

:class:`MemoryMeter` records the peak resident memory (RSS, ``getrusage``) at
the end of each stage of a run: this process's peak so far (it is never reset,
so ``/usr/bin/time`` and a parent's ``RUSAGE_CHILDREN`` still see the whole
run's peak; the stage that first reaches the run's peak shows it), or the peak
of a child process (the fine-tuning process) that ended in the stage when that
is larger.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Optional

MiB = 2**20
BUDGET = 3 * 2**30  # the bound a convert keeps each of its processes under when it chooses the batch
BATCHES = (64, 32, 16, 8)  # below 8, BatchNorm's batch statistics get too noisy to train on
# Fitted to the highest peaks measured for ResNet-18 at 224x224 (benchmarks/RESULTS.md): 2,467 MiB at batch 32,
# 3,512 MiB at batch 64 (9.2 M activation values an image). Bytes per activation value of one image (the
# outputs kept for the backward pass, their gradients, the allocator's pool) and the fixed part (TensorFlow).
BYTES_PER_ACTIVATION = 3.7
FIXED_BYTES = 1165 * MiB
BYTES_PER_PARAM = 24  # weights, gradients, two Adam slots, pruning masks, float32


def available_bytes() -> Optional[int]:
    """``MemAvailable`` of ``/proc/meminfo`` (what can be used without swapping), or None where there is none."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _output_shapes(layer) -> list:
    """The shapes of ``layer``'s outputs, in tf_keras and Keras 3 alike (Keras 3 layers have no ``output_shape``)."""
    try:
        out = layer.output
    except (AttributeError, ValueError, RuntimeError):  # a layer called more than once has no single output
        out = None
    if out is None:
        shape = getattr(layer, "output_shape", None)
        return [] if shape is None else (shape if isinstance(shape, list) else [shape])
    return [tuple(t.shape) for t in (out if isinstance(out, (list, tuple)) else [out])]


def activation_values(model) -> int:
    """Values every layer of ``model`` outputs for one image (what training keeps for the backward pass)."""
    total = 0
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        for shape in _output_shapes(layer):
            n = 1
            for d in shape[1:]:
                n *= int(d or 1)
            total += n
    return total


def training_estimate(model, batch: int) -> int:
    """Estimated peak bytes of a process fine-tuning ``model`` at ``batch``."""
    return int(FIXED_BYTES + BYTES_PER_PARAM * model.count_params() + batch * BYTES_PER_ACTIVATION * activation_values(model))


@dataclass(frozen=True)
class BatchChoice:
    """The fine-tuning batch, where it came from, and the memory bound it was chosen for."""

    batch_size: int
    given: bool  # passed by the user (--batch-size), not chosen
    bound: int  # bytes: each process of the run is to stay under this
    estimate: int  # bytes: the estimated peak of fine-tuning at batch_size
    largest: int  # the batch asked for (the configured default when not given)

    @property
    def fits(self) -> bool:
        return self.estimate <= self.bound

    def why(self, name: str, side: str) -> str:
        if self.given:
            return (f"batch {self.batch_size} as given; fine-tuning {name} at {side} is estimated to peak at "
                    f"{self.estimate // MiB} MiB, {'within' if self.fits else 'above'} {self.bound // MiB} MiB")
        if not self.fits:
            return (f"batch {self.batch_size}, the smallest tried, chosen for {side} {name}: its fine-tuning is "
                    f"estimated to peak at {self.estimate // MiB} MiB, above the {self.bound // MiB} MiB "
                    "available; free memory")
        return (f"batch {self.batch_size} chosen for {side} {name} to stay under {self.bound // MiB} MiB "
                f"(estimated fine-tuning peak {self.estimate // MiB} MiB); pass --batch-size to override")

    def to_dict(self, name: str, side: str) -> dict:
        out = {"batch_size": self.batch_size, "batch_size_from": "given" if self.given else "chosen",
               "estimate_mib": self.estimate // MiB, "why": self.why(name, side)}
        if self.fits:  # the bound is claimed only where the estimate is within it
            out["bound_mib"] = self.bound // MiB
        return out


def memory_bound(budget: int = BUDGET) -> int:
    """The smaller of ``budget`` and the memory the machine has available now."""
    available = available_bytes()
    return budget if available is None else min(budget, available)


def choose_batch(model, largest: int, given: Optional[int] = None, budget: int = BUDGET) -> BatchChoice:
    """The fine-tuning batch for ``model``: ``given`` as it is, else the largest of :data:`BATCHES` up to
    ``largest`` whose :func:`training_estimate` fits :func:`memory_bound` (the smallest when none fits)."""
    bound = memory_bound(budget)
    if given is not None:
        return BatchChoice(given, True, bound, training_estimate(model, given), given)
    tried = [b for b in BATCHES if b < largest]
    for batch in [largest] + tried:
        if training_estimate(model, batch) <= bound:
            break
    return BatchChoice(batch, False, bound, training_estimate(model, batch), largest)


def _peak_kib(who) -> int:
    return resource.getrusage(who).ru_maxrss  # KiB on Linux


class MemoryMeter:
    """Peak RSS (MiB) per stage: ``with meter("evaluate"): ...``; stages nest and may repeat (the max is kept)."""

    def __init__(self):
        self.peaks: dict = {}
        self._stack = [None]  # outside every stage: not recorded
        self._children = _peak_kib(resource.RUSAGE_CHILDREN)

    def _fold(self) -> None:
        """Give the current stage the peak so far, or a child's that ended since the last change and was larger."""
        peak = _peak_kib(resource.RUSAGE_SELF)
        children = _peak_kib(resource.RUSAGE_CHILDREN)
        if children > self._children:  # a child that ended here set a new high: its own peak
            peak, self._children = max(peak, children), children
        stage = self._stack[-1]
        if stage is not None:
            self.peaks[stage] = max(self.peaks.get(stage, 0), round(peak / 1024))

    def __call__(self, stage: str):
        return _Metered(self, stage)

    def to_dict(self) -> dict:
        self._fold()
        return {"peak_rss_mib": dict(self.peaks),
                "measured": "getrusage: this process's peak RSS up to the end of the stage, or the peak of a "
                            "(fine-tuning) child process that ended in the stage when that is larger"}


class _Metered:
    def __init__(self, meter: MemoryMeter, stage: str):
        self.meter, self.stage = meter, stage

    def __enter__(self):
        self.meter._fold()
        self.meter._stack.append(self.stage)
        return self

    def __exit__(self, *exc):
        self.meter._fold()
        self.meter._stack.pop()
        return False
