"""Per-layer precision in the search: int8 with its worst layers in float (cpu), and the Edge TPU's on-chip memory.

The *mixed* family keeps the K layers with the largest int8 error in float, K in FLOAT_COUNTS, on top of
the plain int8 model. The layers are ranked once by the int8 engine's own error ranking (the one
``convert --max-drop`` recovers accuracy with: ``quantize.ranking``, mean per-channel relative RMS
error of each layer's int8 output, run on calibration images), and each chosen layer goes to float with
the int8 layers that read its output, as accuracy recovery does (a float layer feeding an int8 one would
keep its output-rounding error). With an integer model input/output, layers that read the input or
write the output stay int8. The candidate is ``Int8Session.mixed``: the same ranges and weights for
every layer left int8. Float layers store float32 weights, so the file grows: the budgets are measured
on the real file like every other candidate's.

Only for targets that run float layers (``Target.float_layers``): the Edge TPU has no float fallback,
so there the family is left out (and said so). There instead every candidate's parameters are checked
against the Edge TPU's on-chip parameter memory (:func:`edgetpu_memory`, the estimate ``inspect`` makes).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from edgeresnet.host.optimize.candidates import Candidate

FLOAT_COUNTS = (1, 2, 3)  # worst layers kept in float, one candidate each
RANK_SAMPLES = 64  # calibration images the ranking runs on
RANKING = "channel_error"
PROFILE_FILE = "int8_ranking.json"
NO_FLOAT_NOTE = ("{target} cannot run float layers: the mixed-precision family (worst int8 layers in float) "
                 "is not searched there")


def rank_layers_int8(keras_model, opts, calib: np.ndarray) -> list[dict]:
    """Every int8 layer of ``keras_model``'s int8 model (--int8-method), worst int8 error first.

    Each entry: ``name`` (the node name ``Int8Session.mixed`` takes), ``layer`` (short label), ``op``,
    ``channel_error``, ``consumers`` (int8 layers reading its output), ``boundary`` (reads the model input
    or writes its output)."""
    from edgeresnet.host.optimize.evaluate import convert_result
    from edgeresnet.host.quantize.engine import spread
    from edgeresnet.host.quantize.ranking import DebugSession, rank_layers

    session = convert_result(keras_model, opts, calib).session
    samples = np.asarray(calib, np.float32)[spread(len(calib), RANK_SAMPLES)]
    ranked = rank_layers(DebugSession(session, samples), samples, RANKING)
    return [{"name": r.name, "layer": r.layer, "op": r.op, "channel_error": round(r.channel_error, 5),
             "consumers": list(r.consumers), "boundary": bool(r.reads_input or r.writes_output)} for r in ranked]


def float_nodes(ranking: list[dict], count: int, integer_io: bool) -> tuple[tuple, tuple]:
    """(the ``count`` worst layers, every node they put in float: each with its int8 readers).

    Layers on the model's input or output are skipped when the model keeps integer input/output."""
    allowed = {r["name"] for r in ranking if not (integer_io and r["boundary"])}
    picked, nodes = [], []
    for row in ranking:
        if len(picked) == count:
            break
        if row["name"] not in allowed or row["name"] in nodes:
            continue
        picked.append(row["name"])
        nodes += [n for n in (row["name"], *row["consumers"]) if n in allowed and n not in nodes]
    if len(nodes) >= len(ranking):  # keep one layer int8: an all-float model is the fp32 precision's job
        return (), ()
    return tuple(picked), tuple(nodes)


def mixed_candidates(ranking: list[dict], integer_io: bool) -> list[Candidate]:
    """One candidate per FLOAT_COUNTS (distinct float sets only)."""
    labels = {r["name"]: r["layer"] for r in ranking}
    out, seen = [], set()
    for count in FLOAT_COUNTS:
        picked, nodes = float_nodes(ranking, count, integer_io)
        if len(picked) < count or nodes in seen:
            continue
        seen.add(nodes)
        out.append(Candidate("mixed", float_nodes=nodes, float_layers=tuple(dict.fromkeys(labels[n] for n in nodes)),
                             worst=tuple(labels[n] for n in picked)))
    return out


def plan_mixed(opts, data, state, notify=None, progress=None) -> list[Candidate]:
    """The mixed family's candidates for ``opts.target`` (none, and a note, on a target without float layers)."""
    from edgeresnet.targets import get_target

    target = get_target(opts.target)
    if not target.float_layers:
        if notify:
            notify(NO_FLOAT_NOTE.format(target=target.name))
        return []
    ranking = _kept_ranking(state, PROFILE_FILE, lambda: rank_layers_int8(data.loaded.model, opts, data.calib), progress)
    return mixed_candidates(ranking, _integer_io(target))


def _kept_ranking(state, name: str, rank, progress=None) -> list[dict]:
    """The int8 layer ranking kept in the resume state as ``name``, else ``rank()``'s, kept there."""
    ranking = state.load(name)
    if ranking is None:
        if progress is not None:
            progress(0, 1)
        ranking = rank()
        state.keep(name, ranking)
        if progress is not None:
            progress(1, 1)
    return ranking


def _integer_io(target) -> bool:
    """Does ``target``'s int8 model keep an integer input and output (then its boundary layers stay int8)?"""
    return target.io_type_for("int8", None) != "float32"


def refines(opts) -> bool:
    """Does the search put float layers on top of its best fine-tuned candidate (a target with float layers, and
    post-training int8: a --qat model's int8 comes from its own fake-quant ranges, not from a session)?"""
    from edgeresnet.targets import get_target

    return get_target(opts.target).float_layers and not opts.qat


def plan_on_best(opts, data, state, best: Optional[Candidate], notify=None, progress=None) -> list[Candidate]:
    """The mixed family again, on top of ``best`` (the most accurate fine-tuned candidate within every budget):
    pruning or clustering and per-layer precision together. Its layers are ranked on its own int8 model."""
    if best is None or not refines(opts):
        return []
    from edgeresnet.host.optimize.evaluate import base_model
    from edgeresnet.host.optimize.inputs import at_size
    from edgeresnet.targets import get_target

    def rank() -> list[dict]:
        sized = at_size(data, best.input_size, opts)
        return rank_layers_int8(base_model(best, sized, state.path), opts, sized.calib)

    ranking = _kept_ranking(state, f"int8_ranking-{best.key}.json", rank, progress)
    out = [c.on(best) for c in mixed_candidates(ranking, _integer_io(get_target(opts.target)))]
    if notify and out:
        notify(f"{best.label} is the most accurate fine-tuned candidate within budget: trying it with its "
               f"{', '.join(str(len(c.worst)) for c in out)} worst int8 layers in float")
    return out


def precision_note(target_name: str) -> str:
    """What optimize.json and optimize.md say about the per-layer precision lever on ``target_name``."""
    from edgeresnet.targets import get_target

    target = get_target(target_name)
    if not target.float_layers:
        return NO_FLOAT_NOTE.format(target=target.name)
    counts = ", ".join(str(k) for k in FLOAT_COUNTS[:-1]) + f" and {FLOAT_COUNTS[-1]}"
    return (f"the mixed family, the plain int8 model with its {counts} worst int8 layers ({RANKING}) kept in float, "
            "and the same on top of the most accurate fine-tuned candidate within budget (not with --qat)")


def weight_dtypes(model: bytes) -> dict:
    """Keras layer (short label) -> dtype of its weight tensor, for every convolution and dense op of a .tflite."""
    from edgeresnet.device.tflite_graph import parse_tflite
    from edgeresnet.host.quantize.ranking import short_name

    graph = parse_tflite(model)
    out = {}
    for op in graph.ops:
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2:
            continue
        w = graph.tensor(op.inputs[1])
        if w is not None and w.is_constant:
            out[short_name(w.name)] = w.dtype
    return out


def edgetpu_memory(model: bytes) -> Optional[dict]:
    """The Edge TPU part's parameters against its on-chip parameter memory (``inspect``'s estimate)."""
    from edgeresnet.device.tflite_graph import parse_tflite
    from edgeresnet.targets.edgetpu.analysis import analyze_edgetpu

    report = analyze_edgetpu(parse_tflite(model))
    return {"param_bytes": report.param_bytes, "cache_bytes": report.cache_bytes, "fits_cache": report.fits_cache,
            "ops_mapped": report.ops_mapped, "ops_total": report.ops_total}
