"""The prediction against the truth: which ops edgetpu_compiler really left on the CPU.

:func:`check_against_compiled` compares the prediction for a model, op by op,
with the file edgetpu_compiler produced from it (``benchmarks/edgetpu_mapping.py``
runs it over the Coral ground-truth pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgeresnet.errors import TFLiteFileError
from edgeresnet.device.tflite_graph import TFLiteGraph
from edgeresnet.targets.edgetpu.analysis import analyze_edgetpu
from edgeresnet.targets.edgetpu.ops import EDGETPU_OP_NAME, EdgeTpuOpTable

@dataclass
class MappingCheck:
    """The prediction for one model compared, op by op, with what edgetpu_compiler did to it.

    The compiler keeps the ops it leaves on the CPU as ordinary ops with their
    original output tensor names, so each op of the input model is matched to
    its fate by output tensor name.
    """

    ops_total: int
    predicted_cpu: list[int]  # indices of the input model's ops
    compiler_cpu: list[int]
    predicted_maps_fully: bool
    compiler_maps_fully: bool

    @property
    def wrong(self) -> list[int]:
        return sorted(set(self.predicted_cpu) ^ set(self.compiler_cpu))

    @property
    def correct(self) -> int:
        return self.ops_total - len(self.wrong)

    @property
    def exact(self) -> bool:
        return not self.wrong and self.predicted_maps_fully == self.compiler_maps_fully


def compiler_cpu_ops(source: TFLiteGraph, compiled: TFLiteGraph) -> list[int]:
    """Indices of ``source``'s ops that edgetpu_compiler left on the CPU in ``compiled``."""
    if not compiled.edgetpu_compiled:
        raise TFLiteFileError("the second model holds no edgetpu-custom-op: pass the compiler's *_edgetpu.tflite")
    kept: dict[str, str] = {}
    for op in compiled.ops:
        if op.name != EDGETPU_OP_NAME:
            for i in op.outputs:
                kept[compiled.tensors[i].name] = op.name
    cpu = []
    for op in source.ops:
        names = [source.tensors[i].name for i in op.outputs if i >= 0]
        if any(kept.get(n) == op.name for n in names):
            cpu.append(op.index)
    return cpu


def check_against_compiled(source: TFLiteGraph, compiled: TFLiteGraph,
                           table: Optional[EdgeTpuOpTable] = None) -> MappingCheck:
    """Predict ``source``'s mapping and compare it with the compiler's output ``compiled``."""
    report = analyze_edgetpu(source, table)
    actual = compiler_cpu_ops(source, compiled)
    predicted = [v.index for v in report.ops if v.placement == "cpu"]
    return MappingCheck(
        ops_total=len(source.ops),
        predicted_cpu=predicted,
        compiler_cpu=actual,
        predicted_maps_fully=report.maps_fully,
        compiler_maps_fully=not actual,
    )

