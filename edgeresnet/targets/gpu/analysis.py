"""Mobile GPU delegate compatibility, as structured data.

Two sources, both reported with where they came from:

1. **The TFLite model analyzer** (``tf.lite.experimental.Analyzer.analyze(...,
   gpu_compatibility=True)``, or the same C++ analyzer shipped inside
   ``ai-edge-litert``, which needs no TensorFlow). It prints a text dump; this
   module captures it and turns its ``GPU COMPATIBILITY WARNING`` lines into
   records (op index, op name, reason). Newer builds (TensorFlow 2.19+, LiteRT
   2.x; tensorflow/tensorflow#77042) removed the checks but still print "looks
   compatible", so every run first analyses a probe model holding a custom op
   the GPU delegate cannot run: if the probe passes, the analyzer's verdict is
   reported as unchecked instead of trusted.
2. **edgeresnet's screen**: a few rules that hold for every GPU delegate
   version (custom and Flex ops, control flow, ops the delegate has never run,
   64-bit/string tensors, sizes known only at run time). It is not the
   delegate's full op list; it catches the certain blockers.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Optional

from edgeresnet._util.capture import capture_output
from edgeresnet._util.isolation import IsolatedFailure, run_isolated
from edgeresnet.errors import MissingDependencyError
from edgeresnet.device.tflite_graph import CUSTOM_CODE, TFLiteGraph, parse_tflite

ENGINES = ("auto", "litert", "tensorflow", "none")

# Ops no TFLite GPU delegate version has run: control flow, dynamic-output ops,
# resource/hash-table ops, random ops.
GPU_NEVER_OPS = frozenset({
    "WHILE", "IF", "CALL", "CALL_ONCE", "SHAPE", "RANK", "TOPK_V2", "UNIQUE", "WHERE",
    "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "HASHTABLE", "HASHTABLE_FIND",
    "HASHTABLE_IMPORT", "HASHTABLE_SIZE", "HASHTABLE_LOOKUP", "VAR_HANDLE", "READ_VARIABLE",
    "ASSIGN_VARIABLE", "RANDOM_STANDARD_NORMAL", "RANDOM_UNIFORM", "MULTINOMIAL",
    "SKIP_GRAM", "LSH_PROJECTION", "SPARSE_TO_DENSE",
})
# Tensor types the GPU delegate has no kernels for (it computes in float16/32).
GPU_BAD_TYPES = frozenset({"int64", "uint64", "string", "complex64", "complex128", "float64",
                           "resource", "variant"})

_OP_LINE = re.compile(r"^\s*Op#(\d+)\s+([^\s(]+)\(")
_SUBGRAPH_LINE = re.compile(r"^Subgraph#(\d+)\b")
_WARNING = "GPU COMPATIBILITY WARNING:"
_SUMMARY = re.compile(r"Subgraph#(\d+) has GPU delegate compatibility issues at nodes ([\d,\s]+)")
_COMPATIBLE = re.compile(r"looks compatible with GPU delegate(?: on TFLite runtime version (\S+?))?\.?$")


@dataclass
class GpuIssue:
    index: Optional[int]  # op index in its subgraph (None for model-wide issues)
    op: Optional[str]
    reason: str
    source: str  # "analyzer" or "screen"
    subgraph: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GpuReport:
    verdict: str  # "compatible", "incompatible" or "unknown"
    engine: str  # which analyzer ran ("none" when none could)
    analyzer_checks: Optional[bool]  # False: this analyzer build no longer checks GPU support
    issues: list[GpuIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    analyzer_runtime: Optional[str] = None
    raw: str = field(default="", repr=False)

    @property
    def ok(self) -> Optional[bool]:
        return {"compatible": True, "incompatible": False}.get(self.verdict)

    def summary(self) -> str:
        if self.verdict == "incompatible":
            parts = [f"op #{i.index} {i.op}: {i.reason}" if i.op else i.reason for i in self.issues[:3]]
            more = f" (+{len(self.issues) - 3} more)" if len(self.issues) > 3 else ""
            return f"{len(self.issues)} GPU delegate issue(s): " + "; ".join(parts) + more
        if self.verdict == "compatible":
            if self.analyzer_checks:
                return f"compatible per the TFLite analyzer ({self.engine})"
            return "no known GPU delegate blocker (edgeresnet screen; the analyzer here does not check GPU support)"
        return "unknown: " + (self.notes[0] if self.notes else "no analyzer available")

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "verdict": self.verdict,
            "summary": self.summary(),
            "engine": self.engine,
            "analyzer_checks": self.analyzer_checks,
            "analyzer_runtime": self.analyzer_runtime,
            "issues": [i.to_dict() for i in self.issues],
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- analyzer text


def parse_analyzer_output(text: str) -> dict:
    """Structured view of the model analyzer's text.

    Returns ``{"issues": [GpuIssue...], "compatible_claim": bool, "runtime": str|None,
    "flagged_nodes": {subgraph: [node, ...]}}``. A warning line that follows an
    ``Op#N NAME(...)`` line belongs to that op.
    """
    issues: list[GpuIssue] = []
    flagged: dict[int, list[int]] = {}
    claim = False
    runtime = None
    subgraph = 0
    current: Optional[tuple[int, str]] = None
    for raw in text.splitlines():
        line = raw.rstrip()
        m = _SUBGRAPH_LINE.match(line.strip())
        if m and "has GPU delegate" not in line:
            subgraph = int(m.group(1))
            current = None
            continue
        m = _OP_LINE.match(line)
        if m:
            current = (int(m.group(1)), m.group(2))
            continue
        if _WARNING in line:
            message = line.split(_WARNING, 1)[1].strip()
            s = _SUMMARY.search(message)
            if s:
                nodes = [int(n) for n in re.findall(r"\d+", s.group(2))]
                flagged.setdefault(int(s.group(1)), []).extend(nodes)
                rt = re.search(r"runtime version (\S+)", message)
                runtime = runtime or (rt.group(1) if rt else None)
                continue
            idx, name = current if current is not None else (None, None)
            issues.append(GpuIssue(idx, name, message, "analyzer", subgraph))
            continue
        m = _COMPATIBLE.search(line.strip())
        if m:
            claim = True
            runtime = runtime or m.group(1)
        if not line.startswith(" "):
            current = None if not line.strip() else current
    return {"issues": issues, "compatible_claim": claim and not issues, "runtime": runtime,
            "flagged_nodes": flagged}


def _engine_available(name: str) -> bool:
    if name == "litert":
        return importlib.util.find_spec("ai_edge_litert") is not None
    if name == "tensorflow":
        return importlib.util.find_spec("tensorflow") is not None
    return False


def _run_analyzer(engine: str, model: bytes) -> str:
    """The analyzer's text for ``model`` (the analyzer itself prints nothing we keep)."""
    if engine == "litert":
        try:
            from ai_edge_litert import _pywrap_analyzer_wrapper as wrapper
        except ImportError as exc:
            raise MissingDependencyError(f"ai-edge-litert has no model analyzer here ({exc})") from None
        with capture_output() as cap:
            text = wrapper.ModelAnalyzer(model, False, True)
        return str(text) + cap.text
    if engine == "tensorflow":
        from edgeresnet._util import tf as _tf

        tf = _tf.tf()
        with capture_output() as cap:
            tf.lite.experimental.Analyzer.analyze(model_content=model, gpu_compatibility=True)
        return cap.text
    raise ValueError(f"unknown analyzer engine {engine!r}")


def _probe_model() -> Optional[bytes]:
    """A 1-op model whose only op is a custom op no GPU delegate runs."""
    schema = None
    for modname in ("ai_edge_litert.schema_py_generated", "tensorflow.lite.python.schema_py_generated"):
        if importlib.util.find_spec(modname.split(".")[0]) is None:
            continue
        try:
            schema = importlib.import_module(modname)
            break
        except ImportError:
            continue
    if schema is None:
        return None
    import flatbuffers

    custom = CUSTOM_CODE
    code = schema.OperatorCodeT()
    code.builtinCode = custom
    code.deprecatedBuiltinCode = custom
    code.customCode = "EdgeResNetGpuProbe"
    code.version = 1
    tensors = []
    for name in ("probe_in", "probe_out"):
        t = schema.TensorT()
        t.shape = [1, 4]
        t.type = 0  # FLOAT32
        t.buffer = 0
        t.name = name
        tensors.append(t)
    op = schema.OperatorT()
    op.opcodeIndex = 0
    op.inputs = [0]
    op.outputs = [1]
    sg = schema.SubGraphT()
    sg.tensors = tensors
    sg.inputs = [0]
    sg.outputs = [1]
    sg.operators = [op]
    sg.name = "main"
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = [code]
    model.subgraphs = [sg]
    model.buffers = [schema.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())



@lru_cache(maxsize=4)
def analyzer_checks_gpu(engine: str) -> Optional[bool]:
    """Does this analyzer build still check GPU support? (None: could not tell)."""
    probe = _probe_model()
    if probe is None:
        return None
    try:
        parsed = parse_analyzer_output(_run_analyzer(engine, probe))
    except Exception:  # noqa: BLE001 - any analyzer failure means "cannot tell"
        return None
    return bool(parsed["issues"]) or bool(parsed["flagged_nodes"])


# --------------------------------------------------------------------------- screen


def screen_gpu(graph: TFLiteGraph) -> list[GpuIssue]:
    """edgeresnet's own certain-blocker rules (no TensorFlow, no analyzer)."""
    issues = []
    for op in graph.ops:
        if op.is_custom:
            kind = "Flex (TensorFlow) op" if op.name.startswith("Flex") else "custom op"
            issues.append(GpuIssue(op.index, op.name, f"{kind}: the GPU delegate does not run it", "screen"))
            continue
        if op.name in GPU_NEVER_OPS:
            issues.append(GpuIssue(op.index, op.name, "the GPU delegate has no kernel for this op", "screen"))
            continue
        for i in op.inputs + op.outputs:
            t = graph.tensor(i)
            if t is None:
                continue
            if t.dtype in GPU_BAD_TYPES and not t.is_constant:
                issues.append(GpuIssue(op.index, op.name, f"tensor T#{t.index} is {t.dtype}; the GPU delegate computes in float", "screen"))
                break
            if any(d != 0 for d in t.dynamic_dims):
                issues.append(GpuIssue(op.index, op.name, f"tensor T#{t.index} has a size known only at run time; the GPU delegate needs static shapes", "screen"))
                break
    return issues


# --------------------------------------------------------------------------- entry point


def _choose_engine(engine: str) -> Optional[str]:
    """The analyzer that runs for ``engine``: None for ``none`` or when ``auto`` finds none installed.

    MissingDependencyError when the one asked for by name is not installed.
    """
    if engine == "auto":
        return next((e for e in ("litert", "tensorflow") if _engine_available(e)), None)
    if engine == "none":
        return None
    if not _engine_available(engine):
        raise MissingDependencyError(
            f"the {engine} analyzer is not installed; pip install "
            + ("ai-edge-litert" if engine == "litert" else "'edgeresnet[host]'")
        )
    return engine


def analyze_gpu(
    tflite_bytes: bytes, engine: str = "auto", graph: Optional[TFLiteGraph] = None, isolate: bool = True,
) -> GpuReport:
    """GPU delegate compatibility of a model, from the analyzer and the screen.

    ``engine``: ``auto`` (ai-edge-litert's analyzer, else TensorFlow's, else
    none), ``litert``, ``tensorflow`` or ``none`` (screen only). With
    ``isolate`` (the default) the analyzer, native code that trusts the file,
    runs in a child process: if it crashes or hangs on a malformed model the
    verdict rests on the screen and a note says so. Pass ``isolate=False`` only
    for models this process wrote itself.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown GPU analyzer engine {engine!r}; choose one of {', '.join(ENGINES)}")
    data = bytes(tflite_bytes)
    graph = graph or parse_tflite(data)
    screen = screen_gpu(graph)
    notes: list[str] = []
    chosen = _choose_engine(engine)
    if graph.edgetpu_compiled:
        notes.append("an Edge-TPU-compiled model: its edgetpu-custom-op runs only on the Edge TPU")
    if chosen is None:
        if engine == "auto":
            notes.append("no TFLite model analyzer here (needs ai-edge-litert or TensorFlow); screened by edgeresnet's rules only")
        verdict = "incompatible" if screen else ("compatible" if engine == "none" else "unknown")
        if verdict == "unknown":
            notes.insert(0, "unknown (needs TensorFlow or ai-edge-litert for the analyzer)")
        return GpuReport(verdict, "none", None, screen, notes)
    label = {"litert": "ai-edge-litert analyzer", "tensorflow": "tf.lite.experimental.Analyzer"}[chosen]
    try:
        text = run_isolated(_run_analyzer, chosen, data) if isolate else _run_analyzer(chosen, data)
    except IsolatedFailure as exc:
        notes.insert(0, f"GPU analysis {exc.how} on this model (the file is probably corrupt); "
                        "screened by edgeresnet's rules only")
        return GpuReport("incompatible" if screen else "unknown", label, None, screen, notes)
    parsed = parse_analyzer_output(text)
    checks = analyzer_checks_gpu(chosen)
    issues = list(parsed["issues"])
    seen = {(i.subgraph, i.index) for i in issues}
    issues += [i for i in screen if (i.subgraph, i.index) not in seen]
    if checks is False:
        notes.append(
            "this analyzer build no longer checks GPU support (it passes a probe custom op); "
            "its 'looks compatible' is not evidence: the verdict rests on edgeresnet's screen"
        )
    elif checks is None:
        notes.append("could not tell whether this analyzer build checks GPU support")
    if issues:
        verdict = "incompatible"
    elif parsed["compatible_claim"] or checks is False:
        verdict = "compatible"
    else:
        verdict = "unknown"
        notes.append("the analyzer output has neither warnings nor a compatibility line")
    if any(t.dtype in ("int8", "uint8") and t.quantized for t in graph.tensors) and verdict == "compatible":
        notes.append("quantized model: the GPU delegate dequantizes it and computes in float")
    return GpuReport(verdict, label, checks, issues, notes, parsed["runtime"], text)
