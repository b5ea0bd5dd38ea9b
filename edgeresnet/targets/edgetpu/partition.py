"""Where edgetpu_compiler cuts the graph: which ops map to the one Edge TPU part, and which stay on the CPU."""

from __future__ import annotations

from typing import Optional

from edgeresnet.device.tflite_graph import TFLiteGraph

BEFORE, EDGETPU, AFTER = "cpu-before", "edgetpu", "cpu-after"


def partition(graph: TFLiteGraph, supported: list[bool]) -> list[tuple[str, Optional[int]]]:
    """Where edgetpu_compiler puts each op: ``(place, blocked_by)`` per op, in op order.

    ``place`` is ``cpu-before`` (on the CPU, in front of the Edge TPU part),
    ``edgetpu`` or ``cpu-after``; ``blocked_by`` is, for a supported op kept on
    the CPU, the index of the CPU op it reads. ``supported[i]`` says whether op
    ``i`` could map on its own (op table, per-op rules, tensor requirements).

    The rules, from Coral's documentation and from what the real compiler did to
    public models (the google-coral/test_data pairs in ``../shared/data/coral-edgetpu``,
    compared op by op by ``benchmarks/edgetpu_mapping.py`` and the tests; rules 2
    and 3 also from a comparison of 14 public pairs, not all of which
    are in that folder):

    1. One Edge TPU part. Without ``-a`` the compiler does not partition a model
       more than once ("TensorFlow models on the Edge TPU",
       coral.ai/docs/edgetpu/models-intro, "Compiling"); every compiled file
       holds exactly one ``edgetpu-custom-op``, and this function predicts that
       single region.
    2. Data flow, not op order. A supported op maps when every input it reads
       is a graph input, a constant, or the output of an op that maps or of a
       ``cpu-before`` op. An op listed after the first CPU op still maps when
       nothing it reads went through the CPU after the Edge TPU part (e.g.
       heads fed from before an ARG_MAX).
    3. Unsupported ops at the start do not stop the compiler. An op that cannot
       map and reads only graph inputs, constants or other ``cpu-before`` ops
       (CAST or QUANTIZE of a float input) runs on the CPU in front of the
       custom op, which takes its output; everything after it can still map.
    4. No way back in. An op that reads the output of a ``cpu-after`` op stays
       on the CPU even when it is supported: mapping it would feed the CPU's
       result back into the Edge TPU, a second custom op. An unsupported op that
       reads the Edge TPU part is ``cpu-after``, and so is everything fed from it.

    By construction no Edge TPU op depends on a ``cpu-after`` op, so the mapped
    ops contract into one custom op between the two CPU sides.
    """
    producer = {t: op.index for op in graph.ops for t in op.outputs if t >= 0}
    places: list[tuple[str, Optional[int]]] = []
    for op in graph.ops:
        sources = [producer[t] for t in op.inputs if t >= 0 and t in producer]
        # An op listed before its producer (not in execution order) is treated as after the cut.
        kinds = [places[j][0] if j < len(places) else AFTER for j in sources]
        after = [j for j, k in zip(sources, kinds) if k == AFTER]
        if supported[op.index] and not after:
            places.append((EDGETPU, None))
        elif after or EDGETPU in kinds:
            places.append((AFTER, after[0] if supported[op.index] and after else None))
        else:
            places.append((BEFORE, None))
    return places
