"""The one int8 engine: calibrate, let the method edit the calibrated model, quantize.

Every int8 model edgeresnet builds goes through :class:`Int8Session`:
``convert`` and ``report`` take :attr:`Int8Session.model`, and accuracy
recovery builds its mixed int8+float models and its per-layer error ranking on
the same session, from the model the chosen method produced.

1. The converter calibrates (``TFLITE_BUILTINS_INT8`` only, the representative
   data streamed). A method that keeps the plain converter (``minmax``) takes
   its output as is, bit for bit. For the others the converter calibrates
   without quantizing (``_experimental_calibrate_only``) on one sample only,
   from the traced function directly (not through the converter's temporary
   SavedModel: :func:`_skip_saved_model`): a float flatbuffer with a min/max
   slot on every tensor the quantizer needs. Its calibrator runs one sample
   at a time through a logging interpreter (about ten times slower than float
   inference), so ONE batched, multi-threaded float pass over all samples
   (``stats.StatsPass``) measures instead the min/max of every tensor
   (``tests/test_quantize.py`` pins it against the calibrator fed
   everything) and, in the same pass, every statistic the method asks for
   (histograms, layer input means, equalization and GPTQ statistics).
2. Whole-input average pools become ``MEAN`` (``rewrite.py``: the same
   function, but the int8 result gets a range of its own). The method edits
   that calibrated model (ranges, weights, biases; see the method modules);
   when equalization rescales it, the statistics pass starts again on the
   rescaled model. The default
   method, ``auto`` (``choice.py``), has several methods edit it and keeps
   the one that agrees best with the float model on held-out samples.
3. ``tensorflow.lite.python.convert.mlir_quantize`` runs with the arguments
   ``TFLiteConverter`` passes it, then read-only buffers are de-duplicated as
   the converter does. With ``denylisted_nodes`` the same call keeps layers in
   float (:meth:`Int8Session.mixed`); with ``enable_numeric_verify`` it builds
   the debug model whose ``NumericVerify`` ops measure every layer's own error
   (:meth:`Int8Session.debug_model`).
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Union

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet._util.capture import capture_output, native_call
from edgeresnet.errors import ConfigError, ConversionError, DataError
from edgeresnet.targets import PRECISIONS
from edgeresnet.host.quantize import graph as g
from edgeresnet.host.quantize.stats import StatsPass
from edgeresnet.host.quantize.config import QuantOptConfig
from edgeresnet.host.quantize.registry import DEFAULT_METHOD, get_method
from edgeresnet.host.quantize.rewrite import classifiers_before_pool, global_pools_as_mean

ProgressFn = Callable[[int, int], None]

IO_TYPES = PRECISIONS["int8"].io_types  # input/output types of a full-integer model


class Int8Session:
    """One calibration of one model with one method: its int8 model, and models on top of it.

    ``make_converter`` returns a fresh ``tf.lite.TFLiteConverter`` for the float
    model; ``calibration`` holds preprocessed float32 samples (N, H, W, C);
    ``io_type`` is the model's input/output type (``int8``, ``uint8`` or
    ``float32``); ``method`` a name in the method registry, or a tuple of names:
    the first whose ``max_choice_macs`` admits the model (counted on the
    calibrate-only graph), else the last. ``progress(done,
    total, what)`` follows each pass on its own: the statistics pass
    ("calibration images"), started again ("calibration images, equalized")
    when equalization rescaled the model.
    """

    def __init__(
        self,
        make_converter: Callable[[], object],
        calibration: np.ndarray,
        io_type: str,
        method: Union[str, tuple[str, ...]] = DEFAULT_METHOD,
        progress: Optional[ProgressFn] = None,
        config: Optional[QuantOptConfig] = None,
    ):
        names = (method,) if isinstance(method, str) else tuple(method)
        self.method = get_method(names[0])
        self.config = config if config is not None else QuantOptConfig()
        if io_type not in IO_TYPES:
            raise ConfigError(
                f"io type {io_type!r} is not possible for full-integer int8; choose one of {', '.join(IO_TYPES)}"
            )
        self.make_converter, self.io_type = make_converter, io_type
        self.calibration = check_calibration(calibration)
        self.choice = None  # method "auto": the methods it scored and the one it kept (choice.Choice)
        self.details: dict = {}  # what the method's edit reported (learned rounding: its block errors)
        tick = Ticker(progress, len(self.calibration), "calibration images")  # a second look is its own section
        self.converter = make_converter()
        # Where the time went: the converter and quantizer, and this side's statistics passes.
        self.seconds = {"statistics": 0.0, "quantize": 0.0}
        start = time.perf_counter()
        if self.method.plain:
            configure_int8(self.converter, self.calibration, io_type, tick)
            self._calibrated = None  # made on demand, for models on top of this one
            self.model = run_converter(self.converter, "plain int8 conversion")
            self.seconds["quantize"] = time.perf_counter() - start
            return
        configure_int8(self.converter, self.calibration[:1], io_type, Ticker(None, 1))  # the layout only
        self.converter._experimental_calibrate_only = True
        # The frozen function straight to MLIR, without the SavedModel round trip (see g.Graph.name_like_saved_model).
        saved_model_names = _skip_saved_model(self.converter)
        calibrated = run_converter(self.converter, "int8 calibration")
        if len(names) > 1:  # the first method whose size limit admits the model (else the last)
            from edgeresnet.host.quantize.choice import candidates, model_macs

            self.method = get_method((candidates(model_macs(g.Graph(calibrated)), names[:-1])[0] or names[-1:])[0])
        edit_start = time.perf_counter()
        if self.method.chooses:  # score the candidate methods on held-out samples; keep the best one's model
            from edgeresnet.host.quantize.choice import choose

            self.choice = choose(self, calibrated, saved_model_names, tick)
            self.method = get_method(self.choice.winner)
            self._calibrated, self.model, self.details = self.choice.calibrated, self.choice.model, self.choice.details
        else:
            self._calibrated, self.details = self.edit(calibrated, self.method, self.calibration, tick, saved_model_names)
            self.model = self.quantize(self._calibrated, io_type=io_type)
        self.seconds["statistics"] = time.perf_counter() - edit_start
        check_full_integer(self.model, io_type)
        self.seconds["quantize"] = time.perf_counter() - start - self.seconds["statistics"]

    def edit(self, calibrated: bytes, method, samples: np.ndarray, tick, saved_model_names: bool) -> tuple[bytes, dict]:
        """The calibrated model ``calibrated`` as ``method`` edits it, measured on ``samples``, and the figures
        the method reported for the report (``{}`` when none)."""
        graph = g.Graph(calibrated)
        if saved_model_names:
            graph.name_like_saved_model()
        global_pools_as_mean(graph)  # float-exact; the pooled features get an int8 range of their own
        classifiers_before_pool(graph)  # float-exact; no pooled features to round, per-position logits averaged
        dense_flag = "_experimental_disable_per_channel_quantization_for_dense_layers"
        layers = graph.weight_layers(
            per_channel=not getattr(self.converter, "_experimental_disable_per_channel", False),
            dense_per_channel=not getattr(self.converter, dense_flag, False),
        )
        subsets = method.subsets(len(samples), self.config)
        with capture_output():  # the interpreter announces its delegates on stderr
            try:
                measured = StatsPass(graph, layers, samples, subsets, self.config, method.uses_input_means)
                # ranges and every statistic the method asked for, in one batched pass (again if the method rescaled)
                measured.run(tick, rescale=lambda channel_max: method.rescale(graph, channel_max))
                measured.write_ranges()
                details = method.edit(graph, layers, measured, self.config, tick) or {}
            except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
                raise ConversionError(
                    f"{method.name} quantization failed while optimising ranges/weights: {one_line(exc)}"
                ) from None
        return graph.to_bytes(), details

    def record(self, asked: str) -> dict:
        """For the report: the method ``asked`` for, the one used, seconds per step, and what auto scored."""
        out = {"asked": asked, "method": self.method.name, "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
        if self.details:
            out["details"] = dict(self.details)
        if self.choice is not None:
            out["choice"] = self.choice.to_dict()
        return out

    def calibrated(self) -> bytes:
        """The calibrated float model the method produced (ranges, and weights where it sets them)."""
        if self._calibrated is None:
            converter = self.make_converter()
            configure_int8(converter, self.calibration, self.io_type, Ticker(None, 1))
            converter._experimental_calibrate_only = True
            self._calibrated = run_converter(converter, "int8 calibration")
        return self._calibrated

    def quantize(self, calibrated: bytes, io_type: str = "float32", **options) -> bytes:
        return mlir_quantize(self.converter, calibrated, io_type, **options)

    def mixed(self, float_nodes: tuple[str, ...], io_type: Optional[str] = None) -> bytes:
        """This model with the layers ``float_nodes`` (node names) kept in float, everything else as the method set it."""
        io_type = io_type or self.io_type
        if not float_nodes:
            if io_type == self.io_type:
                return self.model
        data = self.quantize(self.calibrated(), denylisted_nodes=list(float_nodes))
        if io_type != "float32":
            from tensorflow.lite.python import util as lite_util

            tf = _tf.tf()
            dtype = {"int8": tf.int8, "uint8": tf.uint8}[io_type]
            data = native_call(lambda: bytes(lite_util.modify_model_io_type(data, dtype, dtype)), "selective quantization failed")
        from edgeresnet.device.tflite_graph import parse_tflite

        graph = parse_tflite(data)
        got = {t.dtype for t in graph.input_tensors + graph.output_tensors}
        if got != {io_type}:
            raise ConversionError(
                f"the mixed model's input/output types are {sorted(got)}, not {io_type}; "
                "a layer next to the model input or output is in float: use --io float32"
            )
        return data

    def debug_model(self) -> bytes:
        """This model with a float twin and a ``NumericVerify`` op next to every quantized layer."""
        return self.quantize(self.calibrated(), enable_numeric_verify=True)


def quantize_int8(make_converter: Callable[[], object], calibration: np.ndarray, io_type: str, *args, **kwargs) -> bytes:
    """A full-integer int8 TFLite model (TFLITE_BUILTINS_INT8 ops only): :attr:`Int8Session.model`.

    The arguments are :class:`Int8Session`'s (``method``, ``progress``, ``config``).
    """
    return Int8Session(make_converter, calibration, io_type, *args, **kwargs).model


def mlir_quantize(converter, calibrated: bytes, io_type: str = "float32", **options) -> bytes:
    """The quantizer on a calibrated model, called as ``TFLiteConverter._quantize`` calls it for int8.

    ``options`` go to ``mlir_quantize`` as they are (``denylisted_nodes``,
    ``enable_numeric_verify``). Read-only buffers are de-duplicated after, as
    the converter does.
    """
    from tensorflow.lite.python import convert as tfl_convert

    tf = _tf.tf()
    dtypes = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}

    def call():
        model = tfl_convert.mlir_quantize(
            calibrated,
            getattr(converter, "_experimental_disable_per_channel", False),
            input_data_type=dtypes[io_type],
            output_data_type=dtypes[io_type],
            disable_per_channel_for_dense_layers=getattr(
                converter, "_experimental_disable_per_channel_quantization_for_dense_layers", False
            ),
            **options,
        )
        return bytes(tfl_convert.deduplicate_readonly_buffers(model))

    return native_call(call, "the TFLite quantizer failed on the optimised ranges")


def check_full_integer(model: bytes, io_type: str) -> None:
    """Raise ConversionError unless every op computes in integers (float only at float io)."""
    fu = g.flatbuffer_utils()
    m = fu.convert_bytearray_to_object(bytearray(model))
    sg = m.subgraphs[0]
    io = set(int(i) for i in list(sg.inputs) + list(sg.outputs))
    allowed_float = io if io_type == "float32" else set()
    for op in sg.operators:
        code = g.op_code(m, op)
        for i in list(op.inputs) + list(op.outputs):
            if i < 0:
                continue
            t = sg.tensors[i]
            if t.type == g.TFLITE_FLOAT32 and int(i) not in allowed_float:
                raise ConversionError(
                    f"the quantized model still computes in float32 (op {code} uses tensor "
                    f"{t.name.decode(errors='replace')}): that layer has no int8 kernel; "
                    "use a float or dynamic-range precision for this model"
                )
        if code in g.WEIGHT_OPS:
            w = sg.tensors[op.inputs[1]]
            if w.type != g.TFLITE_INT8:
                raise ConversionError(f"weights {w.name.decode(errors='replace')} are not int8 after quantization")


# ---------------------------------------------------------------------- converter glue


class Ticker:
    """Counts the steps of long work, one pass at a time, towards ``progress(done, total)``.

    With ``what`` (what the pass counts: "calibration images", "calibration images, equalized")
    the call is ``progress(done, total, what)``; :meth:`section` starts the next pass.
    """

    def __init__(self, progress, total, what: Optional[str] = None):
        self.progress = progress
        self.section(what, total)

    def section(self, what: Optional[str], total: int) -> None:
        self.what, self.total, self.done = what, max(int(total), 1), 0

    def __call__(self, k: int = 1):
        self.done = min(self.done + k, self.total)
        if self.progress is None:
            return
        if self.what is None:
            self.progress(self.done, self.total)
        else:
            self.progress(self.done, self.total, self.what)


def check_calibration(x) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(f"calibration must be a float32 array (N, H, W, C), got {type(x).__name__}") from None
    if arr.ndim != 4 or len(arr) == 0:
        raise DataError(
            f"calibration must be a non-empty (N, H, W, C) array, got shape {tuple(arr.shape)}; "
            "pass --calib with images"
        )
    if not np.all(np.isfinite(arr)):
        raise DataError("calibration samples contain NaN or infinity; check the preprocessing")
    return arr


def hold_out(n: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices 0..n-1 split into those kept to fit on and every ``every``-th one, held out to score on."""
    held = np.arange(every - 1, n, every)
    return np.setdiff1d(np.arange(n), held), held


def spread(n: int, k: Optional[int]) -> np.ndarray:
    """``k`` indices spread evenly over 0..n-1 (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def configure_int8(converter, calibration, io_type, tick):
    tf = _tf.tf()
    dtypes = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
    data = calibration

    def gen():
        for i in range(len(data)):
            yield [data[i : i + 1]]
            tick()

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = gen
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = dtypes[io_type]
    converter.inference_output_type = dtypes[io_type]


def _skip_saved_model(converter) -> bool:
    """Let ``converter`` convert its traced function directly instead of through a temporary SavedModel.

    ``TFLiteConverter`` normally saves the function with its variables as a
    SavedModel, loads it back and converts that (``experimental_lower_to_saved_model``),
    which is most of the conversion time of a large model (ResNet-50: about
    10 of 15 CPU seconds). Converting the frozen function directly, the
    converter's own fallback path, gives the same ops, weights and min/max
    slots; only the names the SavedModel signature gives (input/output
    tensors, the signature def) differ, and :meth:`g.Graph.name_like_saved_model`
    writes those. True when the switch was made (one function: a model
    edgeresnet loaded); ``tests/test_quantize.py`` pins the result against the
    SavedModel path.
    """
    if len(getattr(converter, "_funcs", ())) != 1 or not getattr(converter, "experimental_lower_to_saved_model", False):
        return False
    converter.experimental_lower_to_saved_model = False
    return True


def run_converter(converter, what: str) -> bytes:
    return bytes(native_call(converter.convert, f"the TFLite converter failed during {what}"))


def one_line(exc: BaseException) -> str:
    """``exc`` as a reason to quote in an error message: one line, at most 200 characters, never empty."""
    text = " ".join(str(exc).split())
    return (text[:200] or type(exc).__name__)
