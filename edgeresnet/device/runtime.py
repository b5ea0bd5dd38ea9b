"""The one module that imports a TFLite interpreter.

It never imports TensorFlow by itself: on a Raspberry Pi or a phone test rig
only ``ai-edge-litert`` or ``tflite-runtime`` is installed. The order of
preference is ai-edge-litert, then tflite-runtime, then ``tf.lite`` (deprecated,
last resort). ``EDGERESNET_INTERPRETER`` (``ai-edge-litert``, ``tflite-runtime``
or ``tf.lite``) forces one.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from edgeresnet._util.capture import capture_output
from edgeresnet._util.isolation import IsolatedFailure, run_isolated
from edgeresnet.errors import MissingDependencyError, TFLiteFileError

_BACKENDS = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai_edge_litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite_runtime"),
    ("tf.lite", "tensorflow", "tensorflow"),
)

_PIP_NAMES = {"ai-edge-litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime", "tf.lite": "tensorflow"}

TFLITE_IDENTIFIER = b"TFL3"
EDGETPU_CUSTOM_OP = b"edgetpu-custom-op"


@dataclass(frozen=True)
class Backend:
    name: str
    version: str
    interpreter_cls: type
    module: object


def available_backends() -> list[str]:
    """Names of the interpreters importable here, in order of preference."""
    names = []
    for name, mod, _ in _BACKENDS:
        try:
            importlib.util.find_spec(mod.split(".")[0])
        except (ImportError, ValueError):
            continue
        if importlib.util.find_spec(mod.split(".")[0]) is not None:
            names.append(name)
    return names


def get_backend(name: Optional[str] = None) -> Backend:
    """Import and return an interpreter backend (the preferred one by default)."""
    wanted = name or os.environ.get("EDGERESNET_INTERPRETER") or None
    known = [b[0] for b in _BACKENDS]
    if wanted is not None and wanted not in known:
        raise MissingDependencyError(
            f"unknown interpreter {wanted!r}; choose one of {', '.join(known)}"
        )
    errors = []
    for bname, modname, pkg in _BACKENDS:
        if wanted is not None and bname != wanted:
            continue
        try:
            if bname == "tf.lite":
                from edgeresnet._util import tf as _tf

                tf = _tf.tf()
                cls = tf.lite.Interpreter
                version = tf.__version__
                module = tf.lite
            else:
                module = importlib.import_module(modname)
                cls = module.Interpreter
                top = importlib.import_module(pkg)
                version = getattr(top, "__version__", None) or _dist_version(bname)
        except (ImportError, MissingDependencyError) as exc:
            errors.append(f"{bname}: {exc}")
            continue
        return Backend(bname, str(version), cls, module)
    if wanted is not None:
        installed = [n for n in available_backends() if n != wanted]
        have = f"installed here: {', '.join(installed)}" if installed else "no other interpreter is installed either"
        raise MissingDependencyError(
            f"the {wanted} interpreter was asked for but cannot be imported ({'; '.join(errors)}); {have}. "
            f"Install {_PIP_NAMES[wanted]} or ask for one that is installed"
        )
    raise MissingDependencyError(
        "no TFLite interpreter is installed; pip install 'edgeresnet[device]' "
        "(ai-edge-litert) or tflite-runtime ("
        + "; ".join(errors)
        + ")"
    )


#: Inputs above this size are refused before tensors are allocated: an edge
#: classifier takes a few MiB; a corrupt shape (batch 60161) would take minutes.
MAX_INPUT_BYTES = 256 * 2**20


def check_input_size(interpreter, label: str) -> None:
    """Raise TFLiteFileError when the model's inputs, as declared, exceed MAX_INPUT_BYTES."""
    for d in interpreter.get_input_details():
        shape = [int(s) for s in d["shape"]]
        size = int(np.prod([max(s, 1) for s in shape], dtype=np.float64)) * np.dtype(d["dtype"]).itemsize
        if size > MAX_INPUT_BYTES:
            raise TFLiteFileError(input_too_large(label, shape, size))


def input_too_large(label: str, shape: list, size: int) -> str:
    """What :func:`check_input_size` says about an input of ``size`` bytes (also for another Python's check)."""
    return (f"{label}: input {list(shape)} would take {size / 2**20:,.0f} MiB, more than the "
            f"{MAX_INPUT_BYTES // 2**20} MiB edgeresnet runs; the file is corrupt or not an edge model")


def trial_run_isolated(data: bytes, label: str, num_threads: Optional[int] = None, backend: Optional[str] = None) -> None:
    """Load ``data``, allocate and invoke it once on zeros in a child process.

    The interpreter is C++ that trusts the file: a corrupt model can kill the
    process that loads it. Call this before loading a model the user gave in
    this process; a crash or a hang in the child raises TFLiteFileError here,
    and so does anything :class:`TFLiteModel` would raise.
    """
    get_backend(backend)  # a missing interpreter is reported from here, not from the child
    try:
        run_isolated(_trial_run, data, label, num_threads, backend)
    except IsolatedFailure as exc:
        raise TFLiteFileError(
            f"{label}: the interpreter {exc.how} loading and running this model; "
            "the file is corrupt or not a valid TFLite model"
        ) from None


def _trial_run(data: bytes, label: str, num_threads: Optional[int], backend: Optional[str]) -> None:
    tfl = TFLiteModel(data, num_threads=num_threads, backend=backend, label=label)
    try:
        tfl.invoke_raw(np.zeros([max(d, 1) for d in tfl.input.shape], tfl.input.dtype))
    except (ValueError, RuntimeError) as exc:
        raise run_failure(label, tfl, exc) from None


def run_failure(label: str, tfl: "TFLiteModel", exc: Exception) -> TFLiteFileError:
    """The error for a model that loaded but failed in ``invoke()``."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else type(exc).__name__
    return TFLiteFileError(f"{label} loads but does not run in {tfl.backend.name} {tfl.backend.version}: {msg}")


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # pragma: no cover
        return "unknown"


def emulation() -> Optional[str]:
    """How this process is emulated, or None on real hardware.

    Timings taken under emulation say nothing about the device. Detected from
    ``EDGERESNET_EMULATED`` (set by ``scripts/build_pi_env.sh``'s wrapper), or
    from an ARM Python whose ``/proc/cpuinfo`` describes an x86 processor
    (qemu-user passes the host's file through).
    """
    named = os.environ.get("EDGERESNET_EMULATED")
    if named:
        return named
    import platform

    machine = platform.machine().lower()
    if not (machine.startswith("aarch64") or machine.startswith("arm")):
        return None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    if "GenuineIntel" in cpuinfo or "AuthenticAMD" in cpuinfo:
        return f"qemu-{machine}"
    return None


def read_tflite_bytes(path: Union[str, Path]) -> bytes:
    """Read a file and check that it is a TFLite flatbuffer (raises TFLiteFileError)."""
    p = Path(path)
    if not p.exists():
        raise TFLiteFileError(f"{p}: no such file; pass the path of a .tflite model")
    if p.is_dir():
        raise TFLiteFileError(f"{p} is a folder; pass the path of a .tflite file")
    if not p.is_file():  # reading a FIFO or a device would block or never end
        raise TFLiteFileError(f"{p} is not a regular file (a FIFO, device or socket); pass the path of a .tflite file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TFLiteFileError(f"{p}: cannot read it ({exc.strerror}); check its permissions") from None
    check_tflite_bytes(data, str(p))
    return data


def check_tflite_bytes(data: bytes, label: str = "model") -> None:
    """Raise TFLiteFileError unless ``data`` carries the TFLite file identifier."""
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise TFLiteFileError(
            f"{label} is not a TFLite flatbuffer (no 'TFL3' identifier); "
            "pass a .tflite file written by the TFLite converter"
        )


def is_edgetpu_compiled(data: bytes) -> bool:
    """True when the model was compiled by edgetpu_compiler (holds the edgetpu custom op)."""
    return EDGETPU_CUSTOM_OP in data


@dataclass(frozen=True)
class TensorSpec:
    name: str
    index: int
    shape: tuple
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)


def _spec(d: dict) -> TensorSpec:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorSpec(
        name=d["name"],
        index=int(d["index"]),
        shape=tuple(int(s) for s in d["shape"]),
        dtype=np.dtype(d["dtype"]),
        scale=float(scale),
        zero_point=int(zp),
    )


def resize_batch(interpreter, index: int, batch: int, sample_shape, declared: Callable[[dict], tuple]) -> bool:
    """Give input ``index`` a batch dimension of ``batch``; False when the model does not batch cleanly.

    Models are converted with the batch fixed (to 1), so the resize is not
    strict; it counts only when every output then has its declared shape
    (``declared(output_detail)``) with ``batch`` in front: a reshape to a fixed
    shape, say, would fold the batch away or fail. On False the interpreter
    is left as the failed resize made it.
    """
    try:
        with capture_output():
            interpreter.resize_tensor_input(index, [batch] + list(sample_shape), strict=False)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError):
        return False
    for d in interpreter.get_output_details():
        want = tuple(int(x) for x in declared(d))
        if not want or tuple(int(x) for x in d["shape"]) != (batch,) + want[1:]:
            return False
    return True


#: Images per invoke when edgeresnet evaluates the models it converted (``TFLiteModel.predict(batch=...)``).
EVAL_BATCH = 16


class TFLiteModel:
    """A loaded TFLite model that takes and returns float arrays.

    Inputs are quantized with the model's own input scale/zero-point when the
    input tensor is integer, and outputs are dequantized, so callers compare
    numbers with the float model directly. Batches are run at the batch size
    the model was converted with (one sample at a time), which is what devices
    do, unless :meth:`predict` is asked for more images per invoke.
    """

    def __init__(
        self,
        model: Union[str, Path, bytes],
        num_threads: Optional[int] = None,
        backend: Optional[str] = None,
        use_xnnpack: bool = True,
        label: Optional[str] = None,
    ):
        self.backend = get_backend(backend)
        if isinstance(model, (bytes, bytearray)):
            data = bytes(model)
            label = label or "model"
        else:
            data = read_tflite_bytes(model)
            label = label or str(model)
        check_tflite_bytes(data, label)
        if is_edgetpu_compiled(data):
            raise TFLiteFileError(
                f"{label} is already compiled for the Edge TPU (edgetpu-custom-op); "
                "run it with the Edge TPU delegate (pycoral) or pass the model from before edgetpu_compiler"
            )
        self.size_bytes = len(data)
        kwargs = {"model_content": data}
        if num_threads is not None:
            kwargs["num_threads"] = int(num_threads)
        if not use_xnnpack:
            resolver = getattr(self.backend.module, "OpResolverType", None)
            if resolver is not None:
                kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            # The interpreter announces its delegates on stderr ("INFO: Created
            # TensorFlow Lite XNNPACK delegate"); a library keeps quiet.
            with capture_output():
                self.interpreter = self.backend.interpreter_cls(**kwargs)
                check_input_size(self.interpreter, label)
                self.interpreter.allocate_tensors()
            self.inputs = [_spec(d) for d in self.interpreter.get_input_details()]
            self.outputs = [_spec(d) for d in self.interpreter.get_output_details()]
            self._batch = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape and self.inputs[0].shape[0] > 0 else 1
            self._unbatchable: set = set()
        except UnicodeDecodeError:
            raise TFLiteFileError(
                f"{label}: a tensor name is not valid UTF-8 text; the file is corrupt or was written by a "
                "broken tool: convert the model again"
            ) from None
        except (ValueError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TFLiteFileError(
                f"{label} does not load in {self.backend.name} {self.backend.version}: {msg}"
            ) from None
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise TFLiteFileError(
                f"{label} has {len(self.inputs)} inputs and {len(self.outputs)} outputs; "
                "edgeresnet evaluates single-input, single-output classifiers"
            )

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        return self.outputs[0]

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        spec = self.input
        if spec.quantized:
            info = np.iinfo(spec.dtype)
            q = np.round(x / spec.scale + spec.zero_point)
            return np.clip(q, info.min, info.max).astype(spec.dtype)
        return x.astype(spec.dtype)

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        spec = self.output
        if spec.quantized:
            return (y.astype(np.float32) - spec.zero_point) * spec.scale
        return y.astype(np.float32)

    def invoke_raw(self, x: np.ndarray) -> np.ndarray:
        """Run one already-typed input tensor and return the raw output tensor."""
        self.interpreter.set_tensor(self.input.index, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output.index)

    def predict(
        self,
        x: np.ndarray,
        progress: Optional[Callable[[int, int], None]] = None,
        batch: Optional[int] = None,
    ) -> np.ndarray:
        """Float outputs for a float batch ``x`` (N, *input_shape[1:]).

        ``batch``: images per invoke. The input's batch dimension is resized
        to it once (later calls reuse the allocation; the last, short batch is
        padded); a model whose batch dimension does not resize cleanly (a
        reshape to a fixed shape, say) keeps its own batch size, the default.
        Each image's outputs are the same as run on its own
        (``tests/test_verify.py`` compares them).
        """
        x = np.asarray(x, dtype=np.float32)
        expected = self.input.shape[1:]
        if tuple(x.shape[1:]) != tuple(expected):
            raise TFLiteFileError(
                f"inputs have shape {tuple(x.shape[1:])} but the model expects {tuple(expected)}"
            )
        if batch is not None and batch > 1 and len(x) > 1:
            self._resize_batch(int(batch))
        batch = self._batch
        out = []
        n = len(x)
        for start in range(0, n, batch):
            chunk = x[start : start + batch]
            if len(chunk) < batch:  # pad the last batch to the fixed batch size
                pad = np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)
                y = self.invoke_raw(self.quantize_input(np.concatenate([chunk, pad])))[: len(chunk)]
            else:
                y = self.invoke_raw(self.quantize_input(chunk))
            out.append(self.dequantize_output(y))
            if progress is not None:
                progress(min(start + batch, n), n)
        if not out:
            return np.zeros((0,) + self.output.shape[1:], np.float32)
        return np.concatenate(out)

    def _resize_batch(self, batch: int) -> None:
        """Run ``batch`` images per invoke from now on, when the model allows it (else keep the batch it has)."""
        if batch == self._batch or batch in self._unbatchable:
            return
        index, sample = self.input.index, list(self.input.shape[1:])
        shapes = {o.index: o.shape for o in self.outputs}  # every image keeps its own row of outputs
        if resize_batch(self.interpreter, index, batch, sample, lambda d: shapes[d["index"]]):
            self._batch = batch
            return
        self._unbatchable.add(batch)
        with capture_output():  # back to the batch that worked
            self.interpreter.resize_tensor_input(index, [self._batch] + sample, strict=False)
            self.interpreter.allocate_tensors()

    def ops(self) -> list[str]:
        """Op names in execution order (after delegation, ops may show as DELEGATE)."""
        return [d["op_name"] for d in self.interpreter._get_ops_details()]
