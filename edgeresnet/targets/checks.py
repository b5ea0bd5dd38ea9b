"""The check registry: what is checked on an emitted model, and ``inspect``'s verdicts.

A target lists checks by name (``checks = [...]`` in its record); loading a
record with an unknown name is an error. A check is registered by name with
:func:`register_check` and has up to three parts:

- ``run(graph, spec, path, out_dir) -> dict``: run on every model ``convert``
  and ``report`` emit for the target; the dict has at least ``ok`` (True,
  False, or None for "could not tell"), ``summary`` (one line) and
  ``blocking`` (whether a False makes the variant fail validation);
- ``verdict(ctx, target) -> Verdict``: ``inspect``'s answer to "will this
  ``.tflite`` run on the target?"; a target's verdict comes from the last of
  its checks that has one;
- ``describe(details) -> list[str]``: extra lines ``inspect`` prints under it.

Built in: ``interpreter`` (the model loads and runs; its verdict is the
interpreter's) and ``weights`` (filters stored in the precision's type; run
for every variant). A check that is not built in is the analysis module of
the same name in this package (``edgetpu.py``, ``gpu.py``), imported when a
target names it. The emitted model has already been loaded and run in the
interpreter before any ``run`` is called.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from edgeresnet.device.runtime import EDGETPU_CUSTOM_OP
from edgeresnet.device.tflite_graph import TFLiteGraph, read_graph

_WEIGHT_DTYPE = {"int8": "int8", "int16x8": "int8", "dynamic": "int8", "fp16": "float16", "fp32": "float32"}


# Dynamic-range quantization leaves filters with fewer elements than this in
# float32 (TFLite's own threshold): quantizing them saves nothing worth the error.
DYNAMIC_RANGE_MIN_ELEMENTS = 1024


@dataclass
class Verdict:
    """``inspect``'s answer for one target."""

    ok: Optional[bool]  # None: could not be decided here, or the question does not apply
    summary: str
    details: dict = field(default_factory=dict)
    applies: bool = True  # False: the target does not run this kind of model (inspect shows "n/a")

    def to_dict(self) -> dict:
        return {"ok": self.ok, "summary": self.summary, "details": self.details, "applies": self.applies}


@dataclass
class InspectContext:
    """What ``inspect`` knows about a model when it asks the checks for verdicts."""

    graph: TFLiteGraph
    data: bytes
    precision: str
    litert: Any  # inspect.InterpreterCheck of the installed interpreter (ai-edge-litert, else tflite-runtime), or None when skipped
    gpu_analyzer: bool = True  # False: the GPU screen only, not the analyzer


@dataclass(frozen=True)
class Check:
    name: str
    run: Optional[Callable] = None
    verdict: Optional[Callable] = None
    describe: Optional[Callable] = None
    always: bool = False  # run for every variant, listed or not
    accelerator: bool = False  # its verdict says whether an accelerator takes the whole model (inspect --strict)


_CHECKS: dict[str, Check] = {}


def register_check(name: str, **parts) -> Check:
    """Register (or replace) the check called ``name``; see the module docstring for the parts."""
    check = Check(name, **parts)
    _CHECKS[name] = check
    return check


def get_check(name: str) -> Optional[Check]:
    """The check called ``name``, importing the analysis module of that name when needed."""
    if name not in _CHECKS and name.isidentifier():
        module = f"{__package__}.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)  # registers itself
    return _CHECKS.get(name)


def check_names() -> tuple[str, ...]:
    """Every check a target may list: the registered ones and this package's analysis modules."""
    here = Path(__file__).parent
    modules = [p.stem for p in here.glob("*.py") if not p.stem.startswith("_") and p.stem != "checks"]
    modules += [p.parent.name for p in here.glob("*/__init__.py")]
    for m in modules:
        get_check(m)
    return tuple(_CHECKS)


def _small_float_ok(spec, tensor) -> bool:
    n = 1
    for d in tensor.shape:
        n *= d
    return spec.precision == "dynamic" and tensor.dtype == "float32" and n < DYNAMIC_RANGE_MIN_ELEMENTS


def check_weights(graph: TFLiteGraph, spec) -> dict:
    """Conv/FC filters are stored in the precision's type; integer-only models hold no float tensor."""
    from edgeresnet.targets import PRECISIONS

    expected = _WEIGHT_DTYPE[spec.precision]
    filters = graph.filter_tensors()
    dtypes = Counter(t.dtype for _, t in filters)
    problems = [
        f"#{op.index} {op.name} filter is {t.dtype}"
        for op, t in filters
        if t.dtype != expected and not _small_float_ok(spec, t)
    ]
    if PRECISIONS[spec.precision].integer_only:
        io = set(graph.inputs) | set(graph.outputs)
        floats = [t for t in graph.tensors if t.dtype in ("float32", "float16") and t.index not in io]
        if spec.io_type == "float32":
            # Float input/output: only the QUANTIZE after the input and DEQUANTIZE before the output are float.
            edge = {i for op in graph.ops if op.name in ("QUANTIZE", "DEQUANTIZE") for i in op.inputs + op.outputs}
            floats = [t for t in floats if t.index not in edge]
        problems += [f"float tensor {t.name} ({t.dtype})" for t in floats[:5]]
        io_types = {graph.tensors[i].dtype for i in io}
        if io_types != {spec.io_type}:
            problems.append(f"input/output are {sorted(io_types)}, expected {spec.io_type}")
    ok = not problems and bool(filters)
    summary = (
        f"{len(filters)} conv/fc filters, all {expected}"
        if ok
        else ("; ".join(problems[:3]) if problems else "no conv/fc filters found")
    )
    return {"ok": ok, "blocking": True, "summary": summary, "filter_dtypes": dict(dtypes), "problems": problems}


def interpreter_verdict(ctx: InspectContext, target) -> Verdict:
    """Loads and runs in ai-edge-litert; with the XNNPACK delegate, how many ops it takes."""
    litert = ctx.litert
    if litert is None:
        return Verdict(None, "not checked (interpreters skipped)")
    details = {"interpreter": litert.name, "status": litert.status}
    if ctx.graph.edgetpu_compiled:
        cpu_ops = sorted({op.name for op in ctx.graph.ops if op.name != EDGETPU_CUSTOM_OP.decode()})
        return Verdict(
            None,
            "a model for the Edge TPU delegate: load it with libedgetpu (e.g. pycoral's make_interpreter); "
            + (f"its CPU ops ({', '.join(cpu_ops)}) run beside it" if cpu_ops else "every op runs on the Edge TPU"),
            details,
            applies=False,
        )
    if litert.status == "not installed":
        return Verdict(
            None,
            "not checked: no interpreter is installed (pip install ai-edge-litert; older Pi images: tflite-runtime)",
            details,
        )
    if ctx.graph.flex_ops and litert.status != "loads":
        why = f"; not run here: {litert.error}" if litert.status == "not checked" else ""
        return Verdict(False, f"needs the Flex delegate for {', '.join(ctx.graph.flex_ops)} (SELECT_TF_OPS){why}", details)
    if litert.status != "loads":
        return Verdict(False, f"does not load in {litert.name} {litert.version}: {litert.error}", details)
    text = f"loads and runs in {litert.name} {litert.version}"
    if target.delegate == "xnnpack":
        n = len(ctx.graph.ops)
        details.update(delegated_ops=litert.delegated_ops, undelegated=litert.undelegated)
        if litert.delegated_ops is not None:
            text += f"; XNNPACK takes {litert.delegated_ops}/{n} ops"
            if litert.undelegated:
                left = sorted(Counter(litert.undelegated).items())
                names = ", ".join(name if n == 1 else f"{name} x{n}" for name, n in left)
                text += f" ({len(litert.undelegated)} on built-in kernels: {names})"
        if ctx.precision == "int16x8":
            text += "; int16x8 activations are not accelerated by XNNPACK (reference kernels)"
    return Verdict(True, text, details)


register_check("interpreter", verdict=interpreter_verdict)  # run: the model was already loaded and run
register_check("weights", run=lambda graph, spec, path, out_dir: check_weights(graph, spec), always=True)


def run_checks(target, spec, model: bytes, path: Path, strict: bool = False) -> dict:
    """Run the target's checks on one emitted model; ``strict`` makes every check blocking."""
    graph = read_graph(model, label=str(path))
    names = [c.name for c in _CHECKS.values() if c.always] + [n for n in target.checks if n not in ("weights",)]
    results = {}
    for name in names:
        check = get_check(name)
        if check is None or check.run is None:
            continue
        results[name] = check.run(graph, spec, path, Path(path).parent)
        if strict and not check.always:
            results[name]["blocking"] = True
    return results


def verdict_for(target, ctx: InspectContext) -> tuple[Verdict, Optional[Check]]:
    """``inspect``'s verdict for ``target``: from the last of its checks that gives one."""
    for name in reversed(target.checks):
        check = get_check(name)
        if check is not None and check.verdict is not None:
            return check.verdict(ctx, target), check
    return Verdict(None, f"no check of target {target.name} gives a verdict"), None
