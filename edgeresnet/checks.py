"""Checks run on every emitted model, chosen by the target table's ``checks`` list.

Each check returns a dict with at least ``ok`` (True, False, or None for
"could not tell"), ``summary`` (one line) and ``blocking`` (whether a False
makes the variant fail validation). The emitted model has already been loaded
and run in the interpreter before any of these is called.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

from .convert import ConversionSpec
from .targets import PRECISIONS, Target
from .tflite_graph import TFLiteGraph, read_graph

_WEIGHT_DTYPE = {"int8": "int8", "int16x8": "int8", "dynamic": "int8", "fp16": "float16", "fp32": "float32"}


# Dynamic-range quantization leaves filters with fewer elements than this in
# float32 (TFLite's own threshold): quantizing them saves nothing worth the error.
DYNAMIC_RANGE_MIN_ELEMENTS = 1024


def _small_float_ok(spec: ConversionSpec, tensor) -> bool:
    n = 1
    for d in tensor.shape:
        n *= d
    return spec.precision == "dynamic" and tensor.dtype == "float32" and n < DYNAMIC_RANGE_MIN_ELEMENTS


def check_weights(graph: TFLiteGraph, spec: ConversionSpec) -> dict:
    """Conv/FC filters are stored in the precision's type; integer-only models hold no float tensor."""
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


def _edgetpu(graph, spec, path, out_dir):
    from .edgetpu import analyze_model

    report = analyze_model(path, out_dir=out_dir)
    d = report.to_dict()
    d.pop("ops", None)  # per-op verdicts are long; the summary and cut carry the answer
    d["blocking"] = False
    return d


def _gpu(graph, spec, path, out_dir):
    from .gpu_compat import analyze_gpu

    d = analyze_gpu(graph.data).to_dict()
    d["blocking"] = False
    return d


# Target-specific checks by the name a target lists; "interpreter" (the model
# loaded and ran) and "cpu" (the weights check every variant gets) need no entry.
CHECKS: dict[str, Callable] = {
    "edgetpu": _edgetpu,
    "gpu": _gpu,
}


def run_checks(target: Target, spec: ConversionSpec, model: bytes, path: Path, strict: bool = False) -> dict:
    """Run the target's checks on one emitted model; ``strict`` makes every check blocking."""
    graph = read_graph(model, label=str(path))
    results = {"weights": check_weights(graph, spec)}
    for name in target.checks:
        if name not in CHECKS:
            continue
        results[name] = CHECKS[name](graph, spec, path, Path(path).parent)
        if strict:
            results[name]["blocking"] = True
    return results
