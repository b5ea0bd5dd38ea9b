"""Load a user's model (.h5, .keras or a SavedModel folder) behind one interface.

:func:`load_model` decides the flavor from the file itself, not only from its
name: an ``.h5`` must be HDF5 and say which Keras wrote it, a ``.keras`` must be
a zip whose ``metadata.json`` gives the Keras version (2.x loads with tf_keras,
3.x with Keras 3), and a folder must hold ``saved_model.pb``. Every failure is a
one-line :class:`~edgeresnet.errors.ModelLoadError` that says what to do.

:class:`LoadedModel` gives the rest of edgeresnet what it needs whatever the
flavor: the input shape, the number of classes, batched ``predict`` and a
``tf.lite.TFLiteConverter`` with a fixed ``[1, H, W, C]`` input.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet._util.capture import capture_output
from edgeresnet.errors import ConfigError, DataError, ModelLoadError
from edgeresnet.host.models import safety

FLAVORS = ("tf_keras", "keras3", "saved_model")
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
_WHAT = "pass a Keras .h5 or .keras file or a SavedModel folder"

ProgressFn = Callable[[int, int], None]


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class LoadedModel:
    """A single-input NHWC image classifier, whatever format it came from."""

    model: Any
    flavor: str
    path: Optional[Path]
    name: str
    input_shape: tuple
    num_classes: int
    safe_mode: Optional[bool] = None  # loaded with the code checks on (None: built in memory, not from a file)
    _signature: Any = field(default=None, repr=False)  # saved_model: (fn, input name, output name)
    _predict_fn: Any = field(default=None, repr=False)

    def __post_init__(self):
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, got {self.flavor!r}")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_keras(cls, model, name: Optional[str] = None, path: Optional[Path] = None) -> "LoadedModel":
        """Wrap an in-memory Keras model (tf_keras, or Keras 3) after checking its input and output."""
        flavor = "keras3" if type(model).__module__.split(".")[0] == "keras" else "tf_keras"
        label = str(path) if path is not None else (name or getattr(model, "name", "model"))
        shape = _keras_input_shape(model, label)
        classes = _keras_num_classes(model, label)
        return cls(model=model, flavor=flavor, path=path, name=name or getattr(model, "name", "model"),
                   input_shape=shape, num_classes=classes)

    # ------------------------------------------------------------------ facts

    @property
    def is_keras(self) -> bool:
        return self.flavor in ("tf_keras", "keras3")

    @property
    def params(self) -> Optional[int]:
        """Number of weights (trainable and not), or None when the format does not say."""
        if self.is_keras:
            return int(self.model.count_params())
        variables = getattr(self.model, "variables", None)
        if not variables:
            return None
        return int(sum(int(np.prod(v.shape)) for v in variables))

    def require_tf_keras(self, step: str) -> None:
        """Raise ModelLoadError unless this is a tf_keras model (pruning, folding need one)."""
        if self.flavor == "tf_keras":
            return
        what = "a Keras 3 model" if self.flavor == "keras3" else "a SavedModel without tf_keras metadata"
        raise ModelLoadError(
            f"{step} needs a tf_keras (Keras 2) model, but {self.name} is {what}; rebuild it with tf_keras "
            "(pip install tf-keras, TF_USE_LEGACY_KERAS=1) and save it as .h5"
        )

    # ------------------------------------------------------------------ running

    def _batch_fn(self):
        if self._predict_fn is None:
            tf = _tf.tf()
            if self.is_keras:
                model = self.model

                def run(x):
                    return model(x, training=False)

                fn = tf.function(
                    run, input_signature=[tf.TensorSpec([None, *self.input_shape], tf.float32)], autograph=False
                )
                self._refuse_traced_code(fn.get_concrete_function())  # the trace is reused by the calls
                self._predict_fn = fn
            else:
                fn, in_name, out_name = self._signature
                self._predict_fn = lambda x: fn(**{in_name: x})[out_name]
        return self._predict_fn

    def predict(self, x: np.ndarray, batch_size: int = 64, progress: Optional[ProgressFn] = None) -> np.ndarray:
        """Float outputs (N, classes) for a float32 batch (N, H, W, C), ``batch_size`` at a time."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise DataError(
                f"inputs have shape {tuple(x.shape)} but {self.name} takes (N, {', '.join(map(str, self.input_shape))}); "
                "resize the images to the model's input size"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        fixed = self._fixed_batch()
        step = fixed or batch_size
        fn = self._batch_fn()
        out, n = [], len(x)
        for start in range(0, n, step):
            chunk = x[start : start + step]
            if fixed and len(chunk) < fixed:  # a signature with a fixed batch: pad the tail
                chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk),) + chunk.shape[1:], np.float32)])
            y = np.asarray(fn(chunk), dtype=np.float32)[: min(step, n - start)]
            out.append(y.reshape(len(y), -1))
            if progress is not None:
                progress(min(start + step, n), n)
        if not out:
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate(out)

    def _fixed_batch(self) -> Optional[int]:
        if self.flavor != "saved_model":
            return None
        fn, in_name, _ = self._signature
        dim = fn.structured_input_signature[1][in_name].shape[0]
        return int(dim) if dim is not None else None

    def tflite_converter(self):
        """A fresh ``tf.lite.TFLiteConverter`` for this model, input fixed to [1, H, W, C] float32."""
        tf = _tf.tf()
        spec = tf.TensorSpec([1, *self.input_shape], tf.float32, name="input")
        if self.is_keras:
            model = self.model

            def serve(input):  # noqa: A002 - the name becomes the TFLite input tensor's name
                return model(input, training=False)

            if self.flavor == "tf_keras":
                trackable = model
            else:
                # Keras 3 variables wrap tf.Variables the converter does not find through the
                # model (it then freezes garbage); hand it the tf.Variables themselves.
                trackable = tf.Module()
                trackable.tf_variables = [v.value for v in model.variables]
        else:
            fn, in_name, out_name = self._signature

            def serve(input):  # noqa: A002
                return fn(**{in_name: input})[out_name]

            trackable = self.model
        concrete = tf.function(serve, input_signature=[spec], autograph=False).get_concrete_function()
        self._refuse_traced_code(concrete)
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], trackable)

    def _refuse_traced_code(self, concrete) -> None:
        """Safe mode, Keras models: a backstop behind the config check, before the graph first runs.

        The config check allows only built-in classes; this refuses a traced
        graph that would still touch files, processes or the network.
        """
        if self.safe_mode and self.is_keras:
            findings = safety.graph_def_findings(concrete.graph.as_graph_def())
            safety.refuse_if_any(findings, str(self.path or self.name))


# ---------------------------------------------------------------------- checks


def _keras_input_shape(model, label: str) -> tuple:
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):
        inputs = []
    if not inputs:
        raise ModelLoadError(
            f"{label} has no defined input; build the model with an Input(shape=(H, W, C)) layer and save it again"
        )
    if len(inputs) != 1:
        raise ModelLoadError(f"{label} has {len(inputs)} inputs; edgeresnet takes single-input image classifiers")
    return _nhwc(tuple(inputs[0].shape), label)


def _nhwc(shape: tuple, label: str) -> tuple:
    dims = [None if d is None else int(d) for d in shape]
    if len(dims) != 4 or any(d is None or d <= 0 for d in dims[1:]):
        raise ModelLoadError(
            f"{label} has input shape {tuple(dims)}; edgeresnet needs a fixed 4-D image input (batch, height, width, "
            "channels): rebuild it with Input(shape=(H, W, C))"
        )
    return tuple(dims[1:])


def _keras_num_classes(model, label: str) -> int:
    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) != 1:
        raise ModelLoadError(
            f"{label} has {len(outputs)} outputs; edgeresnet takes single-output classifiers (N, classes)"
        )
    return _classes(tuple(outputs[0].shape), label)


def _classes(shape: tuple, label: str) -> int:
    if len(shape) != 2 or shape[-1] is None or int(shape[-1]) < 1:
        raise ModelLoadError(
            f"{label} has output shape {tuple(shape)}; edgeresnet takes classifiers with a (N, classes) output: "
            "end the model with a Dense layer"
        )
    return int(shape[-1])


# ---------------------------------------------------------------------- loaders


def load_model(path, trust_code: bool = False) -> LoadedModel:
    """Load a Keras ``.h5``/``.keras`` file or a SavedModel folder; raise ModelLoadError with what to do.

    Safe by default: before anything of the model is deserialized, its config
    (or its SavedModel graph) is read as data and the file is refused with
    :class:`~edgeresnet.errors.UnsafeModelError` when it carries code: Lambda
    layers, custom classes, file/process/network ops (see :mod:`.safety`).
    ``trust_code=True`` skips those checks and lets Keras run the model's code.
    """
    p, loader = check_model_path(path)
    loaded = loader(p, trust_code)
    loaded.safe_mode = not trust_code
    return loaded


def check_model_path(path) -> tuple[Path, Callable]:
    """The model's path and its loader, or ModelLoadError (missing, a .tflite, an unknown format).

    Cheap (no TensorFlow): run it before checking data, so a wrong model path is the first thing said.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file or folder; {_WHAT}")
    if p.is_dir():
        if not (p / "saved_model.pb").is_file():
            raise ModelLoadError(
                f"{p} is a folder without saved_model.pb; pass a SavedModel folder (model.export(dir)) "
                "or a Keras .h5/.keras file"
            )
        loader = _load_saved_model
    else:
        if not p.is_file():  # reading a FIFO or a device would block or never end
            raise ModelLoadError(f"{p} is not a regular file (a FIFO, device or socket); {_WHAT}")
        try:
            with open(p, "rb"):
                pass
        except OSError as exc:
            raise ModelLoadError(f"{p} cannot be opened ({exc.strerror or exc}); make it readable, or {_WHAT}") from None
        suffix = p.suffix.lower()
        if suffix == ".tflite":
            raise ModelLoadError(f"{p} is already a TFLite model; {_WHAT} (the model before conversion)")
        loader = _LOADERS.get(suffix)
        if loader is None:
            raise ModelLoadError(f"{p}: unknown model format {suffix or '(no extension)'!r}; {_WHAT}")
    return p, loader


def _load_h5(p: Path, trust_code: bool) -> LoadedModel:
    import h5py

    if not h5py.is_hdf5(str(p)):
        raise ModelLoadError(f"{p} is not an HDF5 file (truncated or another format); save the model again with model.save('model.h5')")
    try:
        with h5py.File(str(p), "r") as f:
            version = _attr(f, "keras_version")
            has_config = "model_config" in f.attrs
    except OSError as exc:
        raise ModelLoadError(f"{p} cannot be read ({_first_line(exc)}); the file may be truncated, save it again") from None
    if not has_config:
        raise ModelLoadError(
            f"{p} holds weights only (no model_config); save the whole model with model.save('model.h5'), "
            "or build a built-in architecture with edgeresnet.host.models.build_model(name, weights=path)"
        )
    flavor = "keras3" if version.startswith("3") else "tf_keras"
    if not trust_code:
        _library(flavor)
        safety.refuse_if_any(safety.keras_config_findings(safety.h5_config(p), flavor), str(p))
    return _load_keras(p, flavor, trust_code)


def _attr(f, key: str) -> str:
    value = f.attrs.get(key, "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _load_keras_zip(p: Path, trust_code: bool) -> LoadedModel:
    if not zipfile.is_zipfile(p):
        raise ModelLoadError(
            f"{p} is not a .keras archive (not a zip file, or truncated); save the model again with model.save('model.keras')"
        )
    try:
        with zipfile.ZipFile(p) as z:
            meta = json.loads(z.read("metadata.json"))
        version = str(meta.get("keras_version", ""))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError):
        raise ModelLoadError(
            f"{p} has no readable metadata.json, so it was not written by Keras; save the model with model.save('model.keras')"
        ) from None
    flavor = "keras3" if version.startswith("3") else "tf_keras"
    if not trust_code:
        _library(flavor)
        safety.refuse_if_any(safety.keras_config_findings(safety.keras_zip_config(p), flavor), str(p))
    return _load_keras(p, flavor, trust_code)


def _keras3():
    _tf.tf()  # TF (and TF_USE_LEGACY_KERAS) first; Keras 3 is independent of it
    try:
        import keras
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelLoadError(f"this is a Keras 3 model but Keras 3 is not installed ({exc}); pip install keras") from None
    if not keras.__version__.startswith("3"):
        raise ModelLoadError(f"this is a Keras 3 model but `import keras` gives Keras {keras.__version__}; pip install 'keras>=3'")
    if keras.backend.backend() != "tensorflow":
        raise ModelLoadError(
            f"Keras 3 runs on the {keras.backend.backend()} backend; set KERAS_BACKEND=tensorflow to convert to TFLite"
        )
    return keras


def _library(flavor: str):
    return _keras3() if flavor == "keras3" else _tf.tf_keras()


def _load_keras(p: Path, flavor: str, trust_code: bool) -> LoadedModel:
    lib = _library(flavor)
    try:
        with capture_output():
            model = lib.models.load_model(str(p), compile=False, safe_mode=not trust_code)
    except Exception as exc:  # Keras raises many types for one meaning: it could not load this file
        raise ModelLoadError(
            f"{p} does not load with {'Keras 3' if flavor == 'keras3' else 'tf_keras'} ({_first_line(exc)}); "
            "custom and Lambda layers cannot be loaded: rebuild the model from built-in Keras layers and save it again"
        ) from None
    return LoadedModel.from_keras(model, name=p.stem, path=p)


def _load_saved_model(p: Path, trust_code: bool) -> LoadedModel:
    tf = _tf.tf()
    if not trust_code:
        findings = safety.saved_model_findings(p)
        if (p / "keras_metadata.pb").is_file():
            findings += safety.keras_metadata_findings(p)
        safety.refuse_if_any(findings, str(p), fix="export it again without them")
    if (p / "keras_metadata.pb").is_file():  # written by tf_keras: load it as a Keras model
        try:
            with capture_output():
                model = _tf.tf_keras().models.load_model(str(p), compile=False)
            return LoadedModel.from_keras(model, name=p.name, path=p)
        except ModelLoadError:
            raise
        except Exception:
            pass  # fall back to the plain SavedModel below
    try:
        with capture_output():
            obj = tf.saved_model.load(str(p))
    except Exception as exc:
        raise ModelLoadError(f"{p} does not load as a SavedModel ({_first_line(exc)}); export it again with model.export(dir)") from None
    signatures = getattr(obj, "signatures", {}) or {}
    if "serving_default" not in signatures:
        raise ModelLoadError(
            f"{p} has no serving_default signature; export it with model.export(dir) or "
            "tf.saved_model.save(model, dir, signatures=...)"
        )
    fn = signatures["serving_default"]
    inputs = fn.structured_input_signature[1]
    outputs = fn.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(
            f"{p} has {len(inputs)} inputs and {len(outputs)} outputs; edgeresnet takes single-input, single-output classifiers"
        )
    (in_name, in_spec), = inputs.items()
    (out_name, out_spec), = outputs.items()
    if in_spec.dtype != tf.float32:
        raise ModelLoadError(f"{p} takes {in_spec.dtype.name} input; export it with a float32 image input")
    shape = _nhwc(tuple(in_spec.shape.as_list()), str(p))
    classes = _classes(tuple(out_spec.shape.as_list()), str(p))
    return LoadedModel(model=obj, flavor="saved_model", path=p, name=p.name, input_shape=shape,
                       num_classes=classes, _signature=(fn, in_name, out_name))


_LOADERS = {".h5": _load_h5, ".hdf5": _load_h5, ".keras": _load_keras_zip}
