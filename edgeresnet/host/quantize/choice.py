"""``auto`` (the default): try the methods on the model, score them on held-out calibration samples, keep the best.

No method wins on every model: GPTQ rounding with learned activation
ranges is often best, GPTQ alone sometimes, and plain bias correction now
and then, at a fraction of the cost (learned rounding, ``mse+learned``, is
not a candidate: on the ResNet-8 it agreed less often with the float model
than GPTQ on held-out training images, at twenty times the cost). ``auto`` holds out every fifth calibration sample (never the
``--eval`` images), has each candidate method (:data:`CANDIDATES`, those
whose cost suits the model: ``Method.max_choice_macs``) quantize the model
from the other samples, runs each int8 model in the interpreter on the
held-out samples and keeps the one whose top-1 agrees most often with the
float model's. The candidates are tried in order, the most often best first
(GPTQ), and a later one must agree on :data:`MIN_LEAD` more held-out samples
than the one it would replace to be kept (a few dozen held-out samples cannot
tell finer differences from chance), so once one agrees on so many that no
later one could lead it by that much, the later ones are not tried. The winner then quantizes the
model again from every calibration sample, the held-out fifth included: the
held-out samples chose the method, and a method calibrated on all the samples
does at least as well as on four fifths of them (on the ResNet-8, seeds 0-2:
98.30 % test agreement against 97.93 % for the scored four-fifths model). When only one
candidate suits the model (a ResNet-50: learned ranges and GPTQ would cost
minutes), it runs on all samples, as fast as that method alone; with fewer
than ``HELD_EVERY * MIN_HELD`` calibration samples there is nothing fair to
score on, and :data:`FALLBACK` runs on all of them. The candidates depend on
the model's size only, never on this machine's speed, and everything is
seeded: the same samples and seed choose the same method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgeresnet._util.capture import capture_output
from edgeresnet.host.quantize import graph as g
from edgeresnet.host.quantize.registry import Method, get_method, register_method

# Most often best first (on the MLPerf ResNet-8, eight seeds: GPTQ agreed more often than mse+bias on 7 of 8 sets of
# held-out training images, with a higher SQNR on all 8), then the cheaper fallback, then the slowest.
CANDIDATES = ("mse+gptq", "mse+bias", "mse+gptq+ranges")
FALLBACK = "mse+bias"
HELD_EVERY = 5  # every fifth calibration sample is held out for scoring
MIN_HELD = 32
# A later candidate is kept only when it agrees on at least this many more held-out images than the one kept
# before it: on a few dozen images one image is chance (measured on the ResNet-8, seed 0: learned rounding won 60 of 60
# against 59 of 60 and lost 0.9 top-1 points against mse+bias on 1,000 test images).
MIN_LEAD = 2


@register_method
class Auto(Method):
    name = "auto"
    description = (
        "tries mse+gptq, mse+bias and mse+gptq+ranges (as the model's size allows) and keeps the one that agrees "
        "best with the float model on held-out calibration images"
    )
    chooses = True


@dataclass(frozen=True)
class Scored:
    """One candidate method's int8 model, scored on the held-out samples."""

    method: str
    agreement: float  # % of held-out samples whose top-1 matches the float model's
    sqnr_db: float  # of the outputs against the float model's
    seconds: float  # to quantize with this method (statistics, edits, quantizer)

    def to_dict(self) -> dict:
        return {"method": self.method, "agreement": round(self.agreement, 2), "sqnr_db": round(self.sqnr_db, 2),
                "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class Choice:
    """What ``auto`` tried, on how many samples, and what it kept."""

    winner: str
    scored: tuple = ()  # Scored, in the order tried
    skipped: tuple = ()  # (method, why) of candidates not tried
    held_out: int = 0
    fit: int = 0  # samples each scored model was calibrated on
    kept_fit: int = 0  # samples the kept model was calibrated on (all of them)
    note: str = ""  # why nothing was scored, when so
    calibrated: bytes = field(default=b"", repr=False, compare=False)  # the winner's calibrated model
    model: bytes = field(default=b"", repr=False, compare=False)  # the winner's int8 model
    details: dict = field(default_factory=dict, repr=False, compare=False)  # what the winner's edit reported

    @property
    def margin(self) -> float:
        """Agreement points the winner is ahead of the best other candidate (0 when it was alone; negative when a
        later one agreed more often, but by fewer than MIN_LEAD samples)."""
        others = [s.agreement for s in self.scored if s.method != self.winner]
        best = next((s.agreement for s in self.scored if s.method == self.winner), 0.0)
        return round(best - max(others), 2) if others else 0.0

    def to_dict(self) -> dict:
        return {
            "winner": self.winner, "held_out": self.held_out, "fit": self.fit, "kept_fit": self.kept_fit or self.fit,
            "margin": self.margin,
            "scored": [s.to_dict() for s in self.scored],
            "skipped": [{"method": m, "why": why} for m, why in self.skipped],
            **({"note": self.note} if self.note else {}),
        }


def model_macs(graph: g.Graph) -> float:
    """Multiply-accumulates of the convolutions and fully-connected layers for one input."""
    total = 0.0
    for code, op in graph.ops:
        if code not in g.WEIGHT_OPS or len(op.inputs) < 2:
            continue
        w = graph.sg.tensors[int(op.inputs[1])].shape
        out = graph.sg.tensors[int(op.outputs[0])].shape
        per_output = float(np.prod(w[1:]))
        total += per_output * float(np.prod(out[1:]))
    return total


def choose(session, calibrated: bytes, saved_model_names: bool, tick) -> Choice:
    """Quantize with every candidate on four fifths of ``session.calibration``, score each on the rest, and quantize
    again with the best on all of it."""
    from edgeresnet.host.quantize.engine import hold_out

    x = session.calibration
    graph = g.Graph(calibrated)
    tried, skipped = candidates(model_macs(graph))
    fit, held = hold_out(len(x), HELD_EVERY)
    note = ""
    if len(tried) == 1:
        note = f"only {tried[0]} suits a model of this size: nothing to compare"
    elif len(held) < MIN_HELD:
        note = (f"{len(x)} calibration samples are too few to compare methods on held-out ones "
                f"(at least {HELD_EVERY * MIN_HELD} are needed); used {FALLBACK}")
    if note:  # one method, on every sample
        winner = tried[0] if len(tried) == 1 else FALLBACK
        edited, details = session.edit(calibrated, get_method(winner), x, tick, saved_model_names)
        return Choice(winner, skipped=tuple(skipped), fit=len(x), kept_fit=len(x), note=note, calibrated=edited,
                      model=session.quantize(edited, io_type=session.io_type), details=details)
    reference = _float_outputs(graph, x[held])
    scored = []
    best = None
    for k, name in enumerate(tried):
        if best is not None and _count(best, len(held)) + MIN_LEAD > len(held):  # no later method can lead it
            skipped += [(rest, _unbeatable(best, len(held))) for rest in tried[k:]]
            break
        tick.section(f"calibration images ({name})", len(fit))
        start = time.perf_counter()
        edited, details = session.edit(calibrated, get_method(name), x[fit], tick, saved_model_names)
        model = session.quantize(edited, io_type=session.io_type)
        scored.append(_score(name, model, x[held], reference, time.perf_counter() - start))
        if best is None or _count(scored[-1], len(held)) >= _count(best, len(held)) + MIN_LEAD:
            best = scored[-1]
    tick.section(f"calibration images ({best.method}, all of them)", len(x))
    edited, details = session.edit(calibrated, get_method(best.method), x, tick, saved_model_names)
    return Choice(best.method, tuple(scored), tuple(skipped), len(held), len(fit), len(x), calibrated=edited,
                  model=session.quantize(edited, io_type=session.io_type), details=details)


def _unbeatable(best: Scored, held: int) -> str:
    """Why the later candidates are not tried once ``best`` agrees on so many held-out samples."""
    n = _count(best, held)
    if n == held:
        return f"{best.method} already agrees with the float model on every held-out image"
    return (f"{best.method} already agrees with the float model on {n} of {held} held-out images: "
            f"no other method could lead it by {MIN_LEAD}")


def _count(s: Scored, held: int) -> int:
    """Held-out images on which ``s`` agrees with the float model."""
    return int(round(s.agreement * held / 100.0))


def candidates(macs: float, names: tuple = CANDIDATES) -> tuple[list, list]:
    """Of ``names`` (default: the candidate methods auto tries), those whose size limit admits a model of ``macs``
    multiply-accumulates per input, and (method, why) of those it leaves out."""
    tried, skipped = [], []
    for name in names:
        limit = get_method(name).max_choice_macs
        if limit is not None and macs > limit:
            skipped.append((name, f"the model has {macs / 1e6:,.0f} M multiply-accumulates per input; "
                                  f"{name} is tried up to {limit / 1e6:,.0f} M"))
        else:
            tried.append(name)
    return tried, skipped


def _float_outputs(graph: g.Graph, samples: np.ndarray) -> np.ndarray:
    out = int(graph.sg.outputs[0])
    got = []
    with capture_output():
        g.run_probe(graph, [out], samples, lambda values, rows: got.append(np.array(values[out])), lambda k=1: None)
    return np.concatenate(got)


def _score(name: str, model: bytes, samples: np.ndarray, reference: np.ndarray, seconds: float) -> Scored:
    from edgeresnet.device import verify
    from edgeresnet.device.runtime import TFLiteModel

    with capture_output():
        out = TFLiteModel(model).predict(samples, batch=16)
    return Scored(name, verify.agreement(reference, out), verify.sqnr_db(reference, out), seconds)
