"""``edgeresnet inspect MODEL.tflite``: what is in a model and where it will run.

Reads the graph without TensorFlow (``tflite_graph``): op histogram and op
versions, input/output types with quantization parameters, tensor types, size.
Then a verdict for every target in the registry (cpu, edgetpu, gpu, and any
added), each ``{ok, summary, details}`` from the target's checks, and
whether the model loads and runs in the interpreters a device may have:
``ai-edge-litert`` here, and ``tflite-runtime`` (2.14 is the last release, it
needs numpy<2, and its older op versions reject some models written by newer
converters) either in this process when installed, or in another Python named
by ``EDGERESNET_TFLITE_RUNTIME_PYTHON``.

Only the GPU verdict's analyzer part needs more than the core install (the
analyzer ships with ai-edge-litert or TensorFlow); without it the verdict
rests on edgeresnet's screen and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgeresnet._util.capture import capture_output
from edgeresnet._util.isolation import IsolatedFailure, run_isolated
from edgeresnet.errors import ConfigError, MissingDependencyError, TFLiteFileError
from edgeresnet.device.runtime import EDGETPU_CUSTOM_OP, MAX_INPUT_BYTES, check_input_size, get_backend, input_too_large, read_tflite_bytes
from edgeresnet.targets import targets
from edgeresnet.targets.checks import InspectContext, Verdict, verdict_for
from edgeresnet.device.tflite_graph import TFLiteGraph, parse_tflite

TFLITE_RUNTIME_PYTHON_ENV = "EDGERESNET_TFLITE_RUNTIME_PYTHON"
EDGETPU_OP_NAME = EDGETPU_CUSTOM_OP.decode()
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")

# Runs in another Python (one with tflite-runtime): load, allocate, invoke once
# on zeros, and print one JSON line. Arguments: the model path.
_VENV_SCRIPT = r"""
import json, sys
out = {"status": "fails", "version": None, "error": None}
try:
    import tflite_runtime
    from tflite_runtime.interpreter import Interpreter
    import numpy as np
    out["version"] = getattr(tflite_runtime, "__version__", None)
    it = Interpreter(model_path=sys.argv[1])
    for d in it.get_input_details():  # the host's check_input_size, before anything is allocated
        size = int(np.prod([max(int(s), 1) for s in d["shape"]], dtype=np.float64)) * np.dtype(d["dtype"]).itemsize
        if size > int(sys.argv[2]):
            out["too_large"] = {"shape": [int(s) for s in d["shape"]], "bytes": size}
            raise SystemExit
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    out["status"] = "loads"
    out["ops"] = [{"index": int(d["index"]), "op_name": d["op_name"],
                   "inputs": [int(x) for x in d["inputs"]], "outputs": [int(x) for x in d["outputs"]]}
                  for d in it._get_ops_details()]
except ImportError as exc:
    out["status"] = "not installed"
    out["error"] = str(exc)
except SystemExit:
    pass
except Exception as exc:
    out["error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
print("EDGERESNET_RESULT " + json.dumps(out))
"""


@dataclass
class InterpreterCheck:
    name: str
    status: str  # "loads", "fails", "not installed", "not checked"
    version: Optional[str] = None
    error: Optional[str] = None
    where: str = "this process"
    delegated_ops: Optional[int] = None  # ops the default delegate (XNNPACK) took
    undelegated: list[str] = field(default_factory=list)  # ops left on built-in kernels

    @property
    def loads(self) -> Optional[bool]:
        return {"loads": True, "fails": False}.get(self.status)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loads"] = self.loads
        return d


@dataclass
class InspectReport:
    path: str
    size_bytes: int
    precision: str
    edgetpu_compiled: bool
    schema_version: int
    subgraphs: int
    ops_total: int
    op_histogram: dict
    op_versions: dict
    inputs: list
    outputs: list
    tensor_dtypes: dict
    float32_tensors: int
    constant_bytes: int
    verdicts: dict  # target name -> Verdict, for every target in the registry
    interpreters: dict  # name -> InterpreterCheck
    accelerators: list = field(default_factory=list)  # targets whose verdict is an accelerator's (--strict)
    edgetpu_payload_bytes: int = 0  # compiled Edge TPU code and parameters inside edgetpu-custom-op(s)
    metadata: dict = field(default_factory=dict)  # TFLite model metadata: labels, normalization, input format
    _describe: dict = field(default_factory=dict, repr=False)  # target -> extra text lines of its verdict
    flex: dict = field(default_factory=dict)  # Flex (SELECT_TF_OPS) ops: see flex_findings()

    def strict_failures(self) -> list[str]:
        """Accelerator targets the model would not run on entirely (what ``inspect --strict`` fails on)."""
        return [name for name in self.accelerators if self.verdicts[name].ok is False]

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "precision": self.precision,
            "edgetpu_compiled": self.edgetpu_compiled,
            "schema_version": self.schema_version,
            "subgraphs": self.subgraphs,
            "ops_total": self.ops_total,
            "op_histogram": dict(self.op_histogram),
            "op_versions": dict(self.op_versions),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "tensor_dtypes": dict(self.tensor_dtypes),
            "float32_tensors": self.float32_tensors,
            "constant_bytes": self.constant_bytes,
            "edgetpu_payload_bytes": self.edgetpu_payload_bytes,
            "metadata": dict(self.metadata),
            "verdicts": {k: v.to_dict() for k, v in self.verdicts.items()},
            "interpreters": {k: v.to_dict() for k, v in self.interpreters.items()},
            "flex": dict(self.flex),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


# --------------------------------------------------------------------------- precision


def guess_precision(graph: TFLiteGraph) -> str:
    """fp32, fp16, dynamic, int8, int8+float, int16x8 or edgetpu, from the tensor types."""
    if graph.edgetpu_compiled:
        return "edgetpu"
    acts = [t for t in graph.tensors if not t.is_constant]
    consts = [t for t in graph.tensors if t.is_constant]
    if any(t.dtype == "int16" and t.quantized for t in acts):
        return "int16x8"
    inner = [t for t in acts if t.index not in graph.inputs and t.index not in graph.outputs]
    inner_types = {t.dtype for t in inner} - {"int32", "bool"}
    if inner_types and inner_types <= {"int8", "uint8"}:
        return "int8"
    if inner_types & {"int8", "uint8"} and any(t.quantized for t in inner):
        return "int8+float"  # full-integer conversion that kept float islands (DEQUANTIZE ... QUANTIZE)
    if any(t.dtype == "float16" for t in consts):
        return "fp16"
    if any(t.dtype == "int8" for t in consts) and any(t.dtype == "float32" for t in acts):
        return "dynamic"
    return "fp32"


# --------------------------------------------------------------------------- Flex ops


def flex_findings(graph: TFLiteGraph) -> dict:
    """The model's Flex ops and why they matter; empty when it has none.

    ``ops``: the TensorFlow ops run through the Flex delegate; ``risky``: those
    that touch files, processes or the network, with the reason; ``note``: one
    sentence for the user.
    """
    from edgeresnet.host.models.safety import risky_op  # plain Python: the op table shared with model loading

    ops = list(graph.flex_ops)
    if not ops:
        return {}
    risky = {op: why for op in ops if (why := risky_op(op)) is not None}
    note = (
        f"{len(ops)} TensorFlow op(s) run through the Flex delegate (converted with SELECT_TF_OPS): "
        "Flex can run any TensorFlow op, needs an interpreter linked with it (TensorFlow's tf.lite or the "
        "select-tf-ops library; plain ai-edge-litert and tflite-runtime refuse the model) and never runs on "
        "the Edge TPU or the GPU delegate"
    )
    if risky:
        note += "; " + ", ".join(f"{op} {why}" for op, why in risky.items()) + ", so the model was not run here"
    return {"ops": ops, "risky": risky, "note": note}


# --------------------------------------------------------------------------- interpreters


def _delegated(ops: list[dict]) -> tuple[int, list[str]]:
    """(ops taken by delegates, names of ops left) from an interpreter's node list.

    After a delegate is applied, the node list holds the original ops followed
    by DELEGATE nodes; a DELEGATE node covers the original ops between its
    input and output tensors.
    """
    originals = [d for d in ops if d["op_name"] != "DELEGATE"]
    delegates = [d for d in ops if d["op_name"] == "DELEGATE"]
    producer = {}
    for d in originals:
        for t in np.ravel(d["outputs"]):
            producer[int(t)] = d["index"]
    by_index = {d["index"]: d for d in originals}
    taken: set[int] = set()
    for node in delegates:
        boundary = {int(t) for t in np.ravel(node["inputs"])}
        stack = [int(t) for t in np.ravel(node["outputs"])]
        while stack:
            t = stack.pop()
            if t in boundary or t not in producer:
                continue
            n = producer[t]
            if n in taken:
                continue
            taken.add(n)
            stack.extend(int(x) for x in np.ravel(by_index[n]["inputs"]) if int(x) >= 0)
    left = [d["op_name"] for d in originals if d["index"] not in taken]
    return len(taken), left


def check_in_process(data: bytes, backend_name: str, isolate: bool = True) -> InterpreterCheck:
    """Load ``data`` in an interpreter installed here, allocate, run once on zeros.

    With ``isolate`` (the default) the interpreter runs in a child process, so a
    malformed model that crashes it gives a failed check instead of killing us.
    """
    try:
        backend = get_backend(backend_name)
    except MissingDependencyError:
        return InterpreterCheck(backend_name, "not installed")
    if not isolate:
        return _load_and_run(data, backend_name)
    try:
        return run_isolated(_load_and_run, data, backend_name)
    except IsolatedFailure as exc:
        return InterpreterCheck(backend_name, "fails", version=backend.version,
                                error=f"the interpreter {exc.how} on this model; the file is corrupt")


def _load_and_run(data: bytes, backend_name: str) -> InterpreterCheck:
    backend = get_backend(backend_name)
    check = InterpreterCheck(backend_name, "fails", version=backend.version)
    with capture_output() as cap:
        try:
            it = backend.interpreter_cls(model_content=data)
            check_input_size(it, "the model")
            it.allocate_tensors()
            for d in it.get_input_details():
                it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            it.invoke()
            ops = it._get_ops_details()
        except Exception as exc:  # noqa: BLE001 - whatever a malformed model raises is a failed load
            failure = exc
        else:
            failure = None
    if failure is not None:
        lines = [ln.strip() for ln in (str(failure) + "\n" + cap.text).splitlines() if ln.strip()]
        specific = [ln for ln in lines if "op" in ln.lower() and ("version" in ln.lower() or "find" in ln.lower())]
        check.error = ((specific or lines or [type(failure).__name__])[0])[:300]
        return check
    check.status = "loads"
    check.delegated_ops, check.undelegated = _delegated(ops)
    return check


def check_in_venv(tflite_path: Union[str, Path], python_exe: Union[str, Path], timeout: float = 120) -> InterpreterCheck:
    """Load a model with the tflite-runtime of another Python (e.g. a numpy<2 venv)."""
    exe = str(python_exe)
    check = InterpreterCheck("tflite-runtime", "fails", where=exe)
    if not Path(exe).exists():
        check.status = "not checked"
        check.error = f"{exe} does not exist; point {TFLITE_RUNTIME_PYTHON_ENV} at a python with tflite-runtime"
        return check
    try:
        proc = subprocess.run(
            [exe, "-c", _VENV_SCRIPT, str(Path(tflite_path).resolve()), str(MAX_INPUT_BYTES)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        check.error = f"loading did not finish within {timeout:g} s"
        return check
    except OSError as exc:
        check.status = "not checked"
        check.error = f"cannot run {exe}: {exc.strerror or exc}"
        return check
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("EDGERESNET_RESULT ")]
    if not marker:
        tail = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        check.error = (tail[-1] if tail else f"exit status {proc.returncode}")[:300]
        return check
    result = json.loads(marker[-1].split(" ", 1)[1])
    check.status = result["status"]
    check.version = result.get("version")
    check.error = result.get("error")
    if result.get("too_large"):
        check.error = input_too_large("the model", result["too_large"]["shape"], result["too_large"]["bytes"])
    if check.status == "fails" and proc.stderr:
        specific = [ln.strip() for ln in proc.stderr.splitlines() if "op" in ln.lower() and "version" in ln.lower()]
        if specific:
            check.error = specific[0][:300]
    if result.get("ops"):
        check.delegated_ops, check.undelegated = _delegated(result["ops"])
    return check


def check_tflite_runtime(path: Optional[Union[str, Path]], data: bytes) -> InterpreterCheck:
    exe = os.environ.get(TFLITE_RUNTIME_PYTHON_ENV)
    if exe:
        if path is None:
            return InterpreterCheck("tflite-runtime", "not checked",
                                    error="the model was given as bytes; the venv check needs a file")
        return check_in_venv(path, exe)
    local = check_in_process(data, "tflite-runtime")
    if local.status == "not installed":
        return InterpreterCheck(
            "tflite-runtime", "not checked",
            error=f"not installed here (it needs numpy<2); set {TFLITE_RUNTIME_PYTHON_ENV} to a python that has it",
        )
    return local


# --------------------------------------------------------------------------- entry points


def _io(t) -> dict:
    d = t.to_dict()
    d.pop("index", None)
    if t.quantized:
        q = t.quantization
        d["quantization"] = {"scale": q.scale[0], "zero_point": q.zero_point[0] if q.zero_point else 0}
    return d


def inspect_tflite(model: Union[str, Path, bytes], gpu: bool = True, runtimes: bool = True) -> InspectReport:
    """Inspect a .tflite path (or bytes). ``gpu=False`` skips the analyzer (screen only);
    ``runtimes=False`` skips loading the model in interpreters."""
    if isinstance(model, (bytes, bytearray)):
        data, path, label = bytes(model), None, "model"
    else:
        path = Path(model)
        data = read_tflite_bytes(path)
        label = str(path)
    graph = parse_tflite(data, label)
    precision = guess_precision(graph)
    flex = flex_findings(graph)
    if runtimes and not graph.edgetpu_compiled and not flex.get("risky"):
        litert = check_in_process(data, "ai-edge-litert")
        tflrt = check_tflite_runtime(path, data)
    else:
        reason = (
            "compiled for the Edge TPU: loads only with the Edge TPU delegate" if graph.edgetpu_compiled
            else f"its Flex ops touch files, processes or the network ({', '.join(flex['risky'])})" if flex.get("risky")
            else "skipped"
        )
        litert = InterpreterCheck("ai-edge-litert", "not checked", error=reason)
        tflrt = InterpreterCheck("tflite-runtime", "not checked", error=reason)
    versions: dict[str, list[int]] = {}
    for op in graph.ops:
        versions.setdefault(op.name, [])
        if op.version not in versions[op.name]:
            versions[op.name].append(op.version)
    # The cpu verdict rests on the interpreter that is here: ai-edge-litert, else tflite-runtime (a Pi).
    installed = litert if litert.status != "not installed" or tflrt.status not in ("loads", "fails") else tflrt
    ctx = InspectContext(graph, data, precision, installed if runtimes else None, gpu_analyzer=gpu)
    verdicts, describe, accelerators = {}, {}, []
    for name, target in targets().items():
        verdicts[name], check = verdict_for(target, ctx)
        describe[name] = check.describe if check is not None else None
        if check is not None and check.accelerator:
            accelerators.append(name)
    return InspectReport(
        path=label,
        size_bytes=len(data),
        precision=precision,
        edgetpu_compiled=graph.edgetpu_compiled,
        schema_version=graph.schema_version,
        subgraphs=graph.subgraph_count,
        ops_total=len(graph.ops),
        op_histogram=graph.op_histogram(),
        op_versions={k: sorted(v) for k, v in versions.items()},
        inputs=[_io(t) for t in graph.input_tensors],
        outputs=[_io(t) for t in graph.output_tensors],
        tensor_dtypes=graph.dtype_counts(),
        float32_tensors=sum(1 for t in graph.tensors if t.dtype == "float32"),
        constant_bytes=graph.constant_bytes(),
        verdicts=verdicts,
        interpreters={"ai-edge-litert": litert, "tflite-runtime": tflrt},
        accelerators=accelerators,
        edgetpu_payload_bytes=sum(op.custom_options_bytes for op in graph.ops if op.name == EDGETPU_OP_NAME),
        metadata=metadata_summary(data, label),
        _describe=describe,
        flex=flex,
    )


def metadata_summary(data: bytes, label: str = "model") -> dict:
    """What a client reads from the model's TFLite metadata: ``present``, labels, normalization, color space.

    Damaged metadata is reported (``error``), not raised: inspect describes any file.
    """
    from edgeresnet.device.metadata import read_metadata

    try:
        info = read_metadata(data, label)
    except (TFLiteFileError, ConfigError) as exc:  # e.g. packed labels that repeat a name
        return {"present": False, "error": str(exc)}
    if info is None:
        return {"present": False}
    return {"present": True, **info.to_dict(), "labels": None if info.labels is None else list(info.labels)}


def _metadata_lines(meta: dict) -> list[str]:
    if not meta.get("present"):
        why = meta.get("error") or "none (predict/eval then show output indices and feed raw 0..255 pixels: use --labels, --preset)"
        return [f"  metadata    {why}"]
    labels = meta.get("labels")
    if labels:
        shown = ", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "")
        label_text = f"{len(labels)} labels ({meta.get('labels_file')}: {shown})"
    else:
        label_text = "no labels"
    version = f" v{meta['version']}" if meta.get("version") else ""
    if meta.get("mean") is not None:
        norm = f"(pixel - mean) / std, mean {meta['mean']} std {meta['std']} on 0..255 pixels"
    else:
        norm = "normalization not stated"
    return [
        f"  metadata    {meta.get('name')!r}{version}: {label_text}",
        f"              input {meta.get('color_space')}, {norm}",
    ]


def _mark(v: Verdict) -> str:
    if not v.applies:
        return "n/a"
    return {True: "yes", False: "NO", None: "?"}[v.ok]


def format_inspect(report: InspectReport) -> str:
    """Human-readable text of an :class:`InspectReport` (what the CLI prints)."""
    lines = [
        f"{report.path}",
        f"  size        {report.size_bytes:,} bytes ("
        + (f"{report.edgetpu_payload_bytes:,} in the {EDGETPU_OP_NAME} payload, " if report.edgetpu_compiled else "")
        + f"{report.constant_bytes:,} in constant buffers)",
        f"  precision   {report.precision}" + ("  [compiled for the Edge TPU]" if report.edgetpu_compiled else ""),
        f"  ops         {report.ops_total} in {report.subgraphs} subgraph(s), schema v{report.schema_version}",
    ]
    for name, count in report.op_histogram.items():
        v = report.op_versions.get(name, [])
        lines.append(f"    {count:4d}  {name}" + (f"  (v{', v'.join(map(str, v))})" if v else ""))
    for kind, tensors in (("input", report.inputs), ("output", report.outputs)):
        for t in tensors:
            q = t.get("quantization")
            qtext = f"  scale {q['scale']:.6g} zero_point {q['zero_point']}" if q else ""
            sig = f" (signature {t['shape_signature']})" if "shape_signature" in t else ""
            lines.append(f"  {kind:<7}     {t['dtype']} {t['shape']}{sig}{qtext}  {t['name']}")
    if report.flex:
        lines.append(f"  flex        {', '.join(report.flex['ops'])}")
        lines.append(f"              {report.flex['note']}")
    dtypes = ", ".join(f"{k} {v}" for k, v in report.tensor_dtypes.items())
    lines.append(f"  tensors     {dtypes}")
    lines += _metadata_lines(report.metadata)
    lines.append("  verdicts")
    for target, v in report.verdicts.items():
        lines.append(f"    {target:<8} {_mark(v):<4} {v.summary}")
    for target, v in report.verdicts.items():
        describe = report._describe.get(target)
        lines += [f"             {line}" for line in (describe(v.details) if describe else [])]
    lines.append("  interpreters")
    for name, c in report.interpreters.items():
        text = c.status + (f" ({c.version})" if c.version else "")
        if c.error:
            text += f": {c.error}"
        if c.where != "this process":
            text += f"  [{c.where}]"
        lines.append(f"    {name:<15} {text}")
    return "\n".join(lines)
