"""Coral Edge TPU: will edgetpu_compiler map this model, and where would it cut it?

The analysis reads the emitted .tflite (``tflite_graph``) and checks every op,
in execution order, against the Edge TPU's documented supported operations
and the model-wide requirements (:func:`edgeresnet.targets.edgetpu.ops.check_op`).
Where the compiler cuts the graph is
:func:`edgeresnet.targets.edgetpu.partition.partition`: one Edge TPU part,
chosen by data flow, with unsupported ops at the very start left on the CPU in
front of it (its docstring gives the rules and their sources). The report
names the op where the graph is cut and says why, and estimates the parameter
memory against the ~8 MiB on-chip cache. ``ground_truth.py`` compares the
prediction, op by op, with a file edgetpu_compiler produced.

When ``edgetpu_compiler`` is on PATH, :func:`analyze_model` runs it
(``compiler.py``) and attaches the compiler's own figures. The prediction
never replaces the compiler: it says what to expect on a machine without it
(the compiler only exists for x86-64 Linux).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from edgeresnet.device.tflite_graph import TFLiteGraph, read_graph
from edgeresnet.targets.edgetpu.compiler import COMPILER_HINT, CompilerResult, find_compiler, run_compiler
from edgeresnet.targets.edgetpu.ops import (
    EDGETPU_OP_NAME, EIGHT_BIT, FLOAT_TYPES, EdgeTpuOpTable, check_op, holds_no_data, load_op_table,
)
from edgeresnet.targets.edgetpu.partition import AFTER, BEFORE, EDGETPU, partition


# --------------------------------------------------------------------------- report


@dataclass
class OpVerdict:
    index: int
    op: str
    supported: bool  # the op itself can map (ignoring where the cut falls)
    placement: str  # "edgetpu" or "cpu" after the cut
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    side: Optional[str] = None  # for CPU ops: "before" or "after" the Edge TPU part

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EdgeTpuReport:
    ops_total: int
    ops_mapped: int  # predicted: ops before the cut
    first_unsupported: Optional[dict]  # {"index", "op", "reason"} or None
    ops: list[OpVerdict]
    cut: str
    param_bytes: int  # constant data of the ops predicted to map
    cache_bytes: int
    issues: list[dict] = field(default_factory=list)  # model-wide: {"severity", "message"}
    notes: list[str] = field(default_factory=list)
    already_compiled: bool = False
    compiler: Optional[CompilerResult] = None
    table_source: str = ""

    @property
    def maps_fully(self) -> bool:
        """Every op lands in the Edge TPU custom op (nothing is left on the CPU)."""
        return all(v.placement == "edgetpu" for v in self.ops)

    @property
    def fits_cache(self) -> bool:
        return self.param_bytes <= self.cache_bytes

    @property
    def ok(self) -> bool:
        """Every op maps and nothing model-wide blocks the Edge TPU."""
        if self.compiler is not None and self.compiler.ok and self.compiler.ops_on_cpu is not None:
            return self.compiler.ops_on_cpu == 0 and not self._errors()
        return self.first_unsupported is None and not self._errors()

    def _errors(self) -> list[dict]:
        return [i for i in self.issues if i["severity"] == "error"]

    def summary(self) -> str:
        if self.already_compiled:
            return self.cut
        if self.compiler is not None and self.compiler.ok and self.compiler.ops_on_edgetpu is not None:
            head = (
                f"edgetpu_compiler: {self.compiler.ops_on_edgetpu}/{self.compiler.ops_total} ops on the Edge TPU"
            )
        else:
            head = f"{self.ops_mapped}/{self.ops_total} ops would map to the Edge TPU"
        before = [v for v in self.ops if v.side == "before"]
        cut = next((v for v in self.ops if v.side == "after" and not v.supported), None)
        if before and self.ops_mapped:
            head += f"; {len(before)} op(s) on the CPU in front of it (#{before[0].index} {before[0].op})"
        if cut is not None:
            head += f"; cut at op #{cut.index} {cut.op}: {cut.reasons[0]}"
        elif self.first_unsupported is not None and not self.ops_mapped:
            fu = self.first_unsupported
            head += f"; op #{fu['index']} {fu['op']}: {fu['reason']}"
        elif self._errors():
            head += "; " + self._errors()[0]["message"]
        return head

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "ops_total": self.ops_total,
            "ops_mapped": self.ops_mapped,
            "maps_fully": self.maps_fully,
            "first_unsupported": self.first_unsupported,
            "cut": self.cut,
            "param_bytes": self.param_bytes,
            "cache_bytes": self.cache_bytes,
            "fits_cache": self.fits_cache,
            "issues": list(self.issues),
            "notes": list(self.notes),
            "already_compiled": self.already_compiled,
            "ops": [v.to_dict() for v in self.ops],
            "compiler": self.compiler.to_dict() if self.compiler is not None else None,
            "table_source": self.table_source,
        }


# --------------------------------------------------------------------------- analysis

def _model_issues(graph: TFLiteGraph, places: list[tuple[str, Optional[int]]]) -> list[dict]:
    """Model-wide findings. Float or wide tensors are errors only when nothing maps;
    when the CPU converts them before or after the Edge TPU part they are warnings."""
    issues = []
    maps_any = any(p == EDGETPU for p, _ in places)
    producer = {t: op.index for op in graph.ops for t in op.outputs if t >= 0}

    def add(sev, msg):
        issues.append({"severity": sev, "message": msg})

    for t in graph.input_tensors:
        if t.dtype not in EIGHT_BIT:
            if maps_any:
                add("warning", f"input {t.name or t.index} is {t.dtype}: converted on the CPU before the Edge TPU part")
            else:
                add("error", f"input {t.name or t.index} is {t.dtype}; the Edge TPU needs uint8 (default) or int8 inputs")
    wide_outputs = [t for t in graph.output_tensors if t.dtype not in EIGHT_BIT]
    on_cpu = [t for t in wide_outputs if maps_any and producer.get(t.index) is not None]
    for t in wide_outputs:
        if t not in on_cpu:
            add("error", f"output {t.name or t.index} is {t.dtype}; the Edge TPU needs uint8 (default) or int8 outputs")
    if on_cpu:
        names = ", ".join(f"{t.name or t.index} ({t.dtype})" for t in on_cpu)
        ops = ", ".join(sorted({f"#{producer[t.index]} {graph.ops[producer[t.index]].name}" for t in on_cpu}))
        add("warning", f"output(s) {names} are computed on the CPU after the Edge TPU part (by {ops})")
    n_float = sum(1 for t in graph.tensors if t.dtype in FLOAT_TYPES and not holds_no_data(t))
    if n_float:
        if maps_any:
            add("warning", f"{n_float} float tensor(s), all on the CPU side of the Edge TPU part")
        else:
            add("error", f"{n_float} float tensor(s): the model is not fully 8-bit quantized")
    batch_dynamic = [t for t in graph.input_tensors if 0 in t.dynamic_dims]
    if batch_dynamic:
        add(
            "warning",
            "the batch dimension is dynamic (-1 in shape_signature); the Edge TPU needs static sizes "
            "and batch 1, and some edgetpu_compiler versions refuse such graphs ('dynamic-sized tensors'): "
            "convert with a fixed batch of 1",
        )
    big_batch = [t for t in graph.input_tensors if t.shape and t.shape[0] > 1]
    if big_batch:
        add("warning", f"input batch is {big_batch[0].shape[0]}; the Edge TPU runs batch 1")
    if graph.subgraph_count > 1:
        add("warning", f"the model has {graph.subgraph_count} subgraphs; only the main one was analysed")
    return issues


def _analyze_compiled(graph: TFLiteGraph, table: EdgeTpuOpTable) -> EdgeTpuReport:
    verdicts = []
    for op in graph.ops:
        on_tpu = op.name == EDGETPU_OP_NAME
        verdicts.append(OpVerdict(op.index, op.name, on_tpu, "edgetpu" if on_tpu else "cpu",
                                  [] if on_tpu else ["left on the CPU by edgetpu_compiler"],
                                  side=None if on_tpu else "after"))
    n_tpu = sum(v.supported for v in verdicts)
    cpu_ops = [v.op for v in verdicts if not v.supported]
    cut = (
        f"already compiled by edgetpu_compiler: {n_tpu} {EDGETPU_OP_NAME} op(s) run on the Edge TPU"
        + (f", {len(cpu_ops)} op(s) on the CPU ({', '.join(sorted(set(cpu_ops)))})" if cpu_ops else "")
    )
    first = next((v for v in verdicts if not v.supported), None)
    payload = sum(op.custom_options_bytes for op in graph.ops if op.name == EDGETPU_OP_NAME)
    return EdgeTpuReport(
        ops_total=len(graph.ops),
        ops_mapped=n_tpu,
        first_unsupported=(
            {"index": first.index, "op": first.op, "reason": first.reasons[0]} if first is not None else None
        ),
        ops=verdicts,
        cut=cut,
        # The compiler moves the mapped ops' parameters into the custom op's payload
        # (with the Edge TPU instructions); the CPU ops keep theirs in buffers.
        param_bytes=payload + graph.constant_bytes(),
        cache_bytes=table.cache_bytes,
        notes=[
            "this file is the compiler's output; its ops cannot be re-analysed. Run it with the Edge TPU "
            "delegate (libedgetpu / pycoral), or inspect the model from before edgetpu_compiler",
            f"parameters: the {EDGETPU_OP_NAME} payload ({payload:,} bytes: compiled instructions and the mapped "
            f"ops' parameters) plus {graph.constant_bytes():,} bytes of CPU-op constants",
        ],
        already_compiled=True,
        table_source=table.source,
    )


def _describe_cut(graph: TFLiteGraph, verdicts: list[OpVerdict], places) -> str:
    n = len(verdicts)
    before = [v for v, (p, _) in zip(verdicts, places) if p == BEFORE]
    after = [v for v, (p, _) in zip(verdicts, places) if p == AFTER]
    mapped = n - len(before) - len(after)
    if mapped == n:
        return f"all {n} ops map to the Edge TPU (one {EDGETPU_OP_NAME})"
    if mapped == 0:
        v = verdicts[0]
        why = (v.reasons or v.notes or ["its input is not ready"])[0]
        return f"op #0 {v.op} cannot map ({why}), and nothing maps: all {n} ops run on the CPU"
    parts = []
    if before:
        names = ", ".join(f"#{v.index} {v.op}" for v in before[:4]) + (" ..." if len(before) > 4 else "")
        parts.append(f"{len(before)} op(s) stay on the CPU in front of the Edge TPU part ({names}: {before[0].reasons[0]})")
    parts.append(f"{mapped} ops run on the Edge TPU (one {EDGETPU_OP_NAME})")
    if after:
        first = next((v for v in after if not v.supported), after[0])
        why = (first.reasons or first.notes or ["it reads a tensor no earlier op produces"])[0]
        parts.append(
            f"edgetpu_compiler would cut the graph at op #{first.index} {first.op} ({why}): "
            + (f"it and {len(after) - 1} more op(s) after the Edge TPU part run on the CPU" if len(after) > 1
               else "it runs on the CPU")
        )
    return "; ".join(parts)


def analyze_edgetpu(graph: TFLiteGraph, table: Optional[EdgeTpuOpTable] = None) -> EdgeTpuReport:
    """Predict how edgetpu_compiler maps ``graph`` (no compiler needed); see :func:`partition`."""
    table = table or load_op_table()
    if graph.edgetpu_compiled:
        return _analyze_compiled(graph, table)
    checked = [check_op(graph, op, table) for op in graph.ops]
    places = partition(graph, [not reasons for reasons, _ in checked])
    verdicts: list[OpVerdict] = []
    for op, (reasons, notes), (place, blocked_by) in zip(graph.ops, checked, places):
        if blocked_by is not None:
            notes = notes + [
                f"supported, but after the cut: it reads op #{blocked_by} {graph.ops[blocked_by].name}, "
                "which runs on the CPU"
            ]
        elif place == BEFORE:
            notes = notes + ["runs on the CPU in front of the Edge TPU part"]
        verdicts.append(OpVerdict(op.index, op.name, not reasons, "edgetpu" if place == EDGETPU else "cpu",
                                  reasons, notes, {BEFORE: "before", AFTER: "after"}.get(place)))
    first = next((v for v in verdicts if v.placement == "cpu"), None)
    seen = set()
    param_bytes = 0
    for v in verdicts:
        if v.placement != "edgetpu":
            continue
        for i in graph.ops[v.index].inputs:
            t = graph.tensor(i)
            if t is not None and t.is_constant and i not in seen:
                seen.add(i)
                param_bytes += t.const_bytes
    notes = []
    if param_bytes > table.cache_bytes:
        notes.append(
            f"parameters of the mapped ops ({param_bytes / 2**20:.2f} MiB) exceed the "
            f"{table.cache_bytes / 2**20:.0f} MiB on-chip cache: the rest streams from off-chip memory (slower)"
        )
    return EdgeTpuReport(
        ops_total=len(verdicts),
        ops_mapped=sum(v.placement == "edgetpu" for v in verdicts),
        first_unsupported=(
            {"index": first.index, "op": first.op,
             "reason": (first.reasons or first.notes or ["reads a tensor no earlier op produces"])[0]}
            if first is not None else None
        ),
        ops=verdicts,
        cut=_describe_cut(graph, verdicts, places),
        param_bytes=param_bytes,
        cache_bytes=table.cache_bytes,
        issues=_model_issues(graph, places),
        notes=notes,
        table_source=table.source,
    )


def analyze_model(
    model: Union[str, Path, bytes],
    out_dir: Optional[Union[str, Path]] = None,
    use_compiler: bool = True,
    timeout: float = 300,
) -> EdgeTpuReport:
    """Analyse a .tflite for the Edge TPU and, when possible, compile it.

    With ``out_dir``, ``use_compiler`` and a compiler on PATH, edgetpu_compiler
    runs and its figures are attached (``report.compiler``). Without the
    compiler, one note says so; the input model stays the compiler-ready file.
    """
    graph = read_graph(model)
    report = analyze_edgetpu(graph)
    if report.already_compiled or not use_compiler:
        return report
    if find_compiler() is None:
        report.notes.append(COMPILER_HINT)
        return report
    if out_dir is None or isinstance(model, (bytes, bytearray)):
        report.notes.append("edgetpu_compiler is available; pass a model path and an output folder to run it")
        return report
    report.compiler = run_compiler(model, out_dir, timeout=timeout)
    if not report.compiler.ok:
        report.issues.append({"severity": "error", "message": f"edgetpu_compiler failed: {report.compiler.error}"})
    elif report.compiler.ops_on_edgetpu is not None and report.compiler.ops_on_edgetpu != report.ops_mapped:
        report.notes.append(
            f"the compiler mapped {report.compiler.ops_on_edgetpu} ops where edgeresnet predicted "
            f"{report.ops_mapped}; the compiler's figures are the ones that hold"
        )
    return report
