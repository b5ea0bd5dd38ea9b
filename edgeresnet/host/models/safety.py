"""Refuse a model file that would run its author's code, before any of it is loaded.

A Keras model file is a config plus weights, but the config can carry code:
a ``Lambda`` layer stores its function as marshalled Python bytecode, which
Keras rebuilds and runs while loading the model; a custom class makes Keras
import or look up code by name; ``TFSMLayer`` loads another SavedModel from a
path. A SavedModel is a TensorFlow graph, and graphs can write and read files
(``WriteFile``), call back into Python (``PyFunc``) or talk to the network.

This module reads what a model file *says* it is, without deserializing
anything of it (JSON from the ``.h5`` attribute or the ``.keras`` zip,
protobuf messages of ``saved_model.pb``), and lists everything that would
execute more than built-in Keras layers and ordinary tensor math. The loader
refuses such a file unless the user passes ``trust_code=True``
(``--trust-model-code``). The rule is an allow-list: a class is accepted only
when it resolves to a built-in Keras layer, initializer, regularizer,
constraint, dtype policy or (Keras 3) op of the installed Keras.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from edgeresnet.errors import ModelLoadError, UnsafeModelError

TRUST_HINT = "or pass --trust-model-code if you trust its author (its code then runs on this machine as you)"
MAX_LISTED = 6

# Markers of Keras's own serialization format (keras.saving.serialization_lib),
# not classes. "__lambda__" (marshalled bytecode) is handled on its own.
_FORMAT_MARKERS = frozenset({
    "__keras_tensor__", "__tensor__", "__numpy__", "__tuple__", "__typespec__", "__bytes__",
    "__slice__", "__ellipsis__", "__dtype__",
})
# Built-in layers that load or run more than tensor math, by what they do.
_RISKY_LAYERS = {
    "Lambda": "a Lambda layer: Python code",
    "TFSMLayer": "a TFSMLayer: loads and runs another SavedModel from a path",
    "TorchModuleWrapper": "a TorchModuleWrapper: unpickles a torch module",
    "JaxLayer": "a JaxLayer: wraps Python functions",
    "FlaxLayer": "a FlaxLayer: wraps Python functions",
}
_LAMBDA_BYTECODE = "a Lambda layer with marshalled Python bytecode, run on load"
# Where layer configs nest layers (functional/sequential models, wrappers, RNN cells).
_LAYER_KEYS = frozenset({"layers", "layer", "cell", "cells", "forward_layer", "backward_layer"})
# Entries Keras does not deserialize with compile=False: checked for code only.
_NOT_LOADED_KEYS = frozenset({"compile_config", "training_config"})

# TFOpLambda (tf_keras): a tf.* API call recorded by name. Only tensor math namespaces.
_TF_MATH_NAMESPACES = frozenset({"math", "nn", "linalg", "image", "signal", "bitwise", "__operators__", "dtypes"})
_TF_TOPLEVEL_DENIED = frozenset({
    "print", "Print", "py_function", "numpy_function", "py_func", "load_op_library", "load_library",
    "function", "write_file", "read_file", "map_fn", "vectorized_map", "while_loop", "cond", "switch_case",
    "case", "custom_gradient", "recompute_grad", "make_template", "init_scope", "matching_files",
    "decode_proto", "encode_proto", "timestamp",
})


@dataclass(frozen=True)
class Finding:
    """One piece of code a model file would run: where it is and what it is."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def refuse_if_any(findings: list, label: str, fix: str = "rebuild it from built-in Keras layers") -> None:
    """Raise UnsafeModelError listing ``findings`` (at most MAX_LISTED of them); do nothing when empty."""
    if not findings:
        return
    shown = "; ".join(str(f) for f in findings[:MAX_LISTED])
    more = f"; and {len(findings) - MAX_LISTED} more" if len(findings) > MAX_LISTED else ""
    raise UnsafeModelError(f"refusing to load {label}: it carries code ({shown}{more}); {fix}, {TRUST_HINT}")


# ---------------------------------------------------------------------- reading configs (no deserialization)


def h5_config(path: Path) -> dict:
    """The ``model_config`` JSON attribute of a Keras ``.h5`` file, parsed as plain JSON."""
    import h5py

    try:
        with h5py.File(str(path), "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc}); the file may be truncated, save it again") from None
    return _json(raw, f"{path} (model_config)")


def keras_zip_config(path: Path) -> dict:
    """``config.json`` of a ``.keras`` zip (Keras 2 and Keras 3 write the same name), parsed as plain JSON."""
    try:
        with zipfile.ZipFile(path) as z:
            raw = z.read("config.json")
    except KeyError:
        raise ModelLoadError(f"{path} has no config.json; save the model again with model.save('model.keras')") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc}); save the model again with model.save('model.keras')") from None
    return _json(raw, f"{path} (config.json)")


def _json(raw, label: str) -> dict:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        config = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{label} is not a readable Keras model config; save the model again with model.save()")
    return config


# ---------------------------------------------------------------------- Keras configs


class _KnownClasses:
    """What a class name in a config may resolve to: the installed Keras's own built-ins."""

    def __init__(self, flavor: str):
        self.flavor = flavor
        if flavor == "keras3":
            import keras

            self.bases = (keras.Operation, keras.initializers.Initializer, keras.regularizers.Regularizer,
                          keras.constraints.Constraint, keras.DTypePolicy)
            from keras.src.models.functional import Functional

            self.names = {"Functional": Functional}
            modules = [keras, keras.layers, keras.models, keras.initializers, keras.regularizers,
                       keras.constraints, keras.dtype_policies]
            # Keras 3 records ops called in a functional model (keras.ops.relu) as classes of keras.src.ops.
            modules += [m for n, m in list(sys.modules.items()) if n.startswith("keras.src.ops.") and m is not None]
            self.activations = _public_functions(keras.activations)
        else:
            from edgeresnet._util import tf as _tf

            k = _tf.tf_keras()
            from tf_keras.src.engine.functional import Functional

            self.bases = (k.layers.Layer, k.initializers.Initializer, k.regularizers.Regularizer,
                          k.constraints.Constraint, k.mixed_precision.Policy)
            modules = [k, k.layers, k.layers.experimental, k.layers.experimental.preprocessing, k.models,
                       k.initializers, k.regularizers, k.constraints, k.mixed_precision]
            self.names = {"Functional": Functional}
            self.activations = _public_functions(k.activations)
        names = getattr(self, "names", {})
        for mod in modules:
            for name, obj in vars(mod).items():
                if not name.startswith("_") and isinstance(obj, type) and issubclass(obj, self.bases):
                    names.setdefault(name, obj)
        self.names = names

    def resolves(self, class_name: str, module) -> bool:
        """True when ``class_name`` (from ``module``, if the config names one) is a built-in Keras class."""
        if module is not None:
            if not isinstance(module, str) or module.split(".")[0] not in ("keras", "tf_keras"):
                return False
            if self.flavor == "keras3":
                # Only modules Keras already imported: a config never makes us import anything.
                obj = getattr(sys.modules.get(module), class_name, None)
                if obj is not None:
                    return isinstance(obj, type) and issubclass(obj, self.bases)
        return class_name in self.names


def _public_functions(module) -> frozenset:
    return frozenset(n for n, o in vars(module).items()
                     if not n.startswith("_") and callable(o) and not isinstance(o, type)
                     and n not in ("get", "serialize", "deserialize"))


_KNOWN_CACHE: dict = {}


def _known(flavor: str) -> _KnownClasses:
    if flavor not in _KNOWN_CACHE:
        _KNOWN_CACHE[flavor] = _KnownClasses(flavor)
    return _KNOWN_CACHE[flavor]


def keras_config_findings(config: dict, flavor: str, root: str = "model") -> list[Finding]:
    """Everything in a Keras model config that would run code beyond built-in layers, per layer.

    Walks the whole config (nested models, wrappers, every value), iteratively
    so a deeply nested file cannot exhaust the stack.
    """
    known = _known(flavor)
    findings: list[Finding] = []
    # (node, layer label, key it sits under, checked for classes?)
    stack = [(config, root, None, True)]
    while stack:
        node, where, key, classes = stack.pop()
        if isinstance(node, str):
            if _is_marshalled_code(node):
                findings.append(Finding(where, f"marshalled Python bytecode in {key!r}"))
            continue
        if isinstance(node, list):
            stack.extend((v, where, key, classes) for v in reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        cls = node.get("class_name")
        if isinstance(cls, str):
            inner = node.get("config")
            name = inner.get("name") if isinstance(inner, dict) else None
            if isinstance(name, str) and key in _LAYER_KEYS:
                layer = f"layer {name!r} ({cls})"
                where = layer if where == root else f"{where} > {layer}"
            what = _class_finding(node, cls, known) if classes else (
                "marshalled Python bytecode (__lambda__)" if cls == "__lambda__" else None)
            if what:
                findings.append(Finding(where, what))
        for k, v in node.items():
            if isinstance(v, (dict, list, str)):
                stack.append((v, where, k, classes and k not in _NOT_LOADED_KEYS))
    # A Lambda layer's bytecode is the Lambda finding itself; say it once.
    lambdas = {f.where for f in findings if f.what == _RISKY_LAYERS["Lambda"]}
    findings = [
        Finding(f.where, _LAMBDA_BYTECODE) if f.where in lambdas and f.what == _RISKY_LAYERS["Lambda"]
        and any(g.where == f.where and "bytecode" in g.what for g in findings) else f
        for f in findings if not (f.where in lambdas and "bytecode" in f.what)
    ]
    return _unique(findings)


def _class_finding(node: dict, cls: str, known: _KnownClasses) -> Optional[str]:
    config = node.get("config") if isinstance(node.get("config"), dict) else {}
    if cls in _RISKY_LAYERS:
        return _RISKY_LAYERS[cls]
    if cls == "__lambda__":
        return "marshalled Python bytecode (__lambda__)"
    if cls in _FORMAT_MARKERS:
        return None
    if cls in ("TFOpLambda", "SlicingOpLambda") and known.flavor == "tf_keras":
        fn = config.get("function")
        if isinstance(fn, str) and _tf_op_is_math(fn):
            return None
        return f"a {cls} calling tf.{fn}, which is not tensor math"
    if cls == "function":  # Keras 3: a function referenced by module and name (an activation)
        module = node.get("module")
        fn = node.get("config")
        if isinstance(module, str) and module.split(".")[0] == "keras" and fn in known.activations:
            return None
        return f"a reference to the function {module}.{fn}, which is not a Keras activation"
    registered = node.get("registered_name")
    if isinstance(registered, str) and ">" in registered:
        return f"custom class {registered!r}, not a built-in Keras class"
    if cls in ("StringLookup", "IntegerLookup", "TextVectorization") and isinstance(config.get("vocabulary"), str):
        return f"reads its vocabulary from the file {config['vocabulary']!r}"
    if not known.resolves(cls, node.get("module")):
        module = node.get("module")
        origin = f" from {module}" if isinstance(module, str) and module.split(".")[0] not in ("keras", "tf_keras") else ""
        return f"custom class {cls!r}{origin}, not a built-in Keras class"
    return None


def _tf_op_is_math(name: str) -> bool:
    for prefix in ("compat.v1.", "compat.v2."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    namespace, _, leaf = name.rpartition(".")
    if not namespace:
        return bool(leaf) and leaf not in _TF_TOPLEVEL_DENIED
    return namespace in _TF_MATH_NAMESPACES


_B64 = re.compile(r"^[A-Za-z0-9+/=\s]{24,}$")


def _is_marshalled_code(text: str) -> bool:
    """True for base64 text that decodes to a marshalled Python code object (Keras's func_dump format).

    Decides from the bytes alone: nothing is unmarshalled.
    """
    if not _B64.match(text):
        return False
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    # marshal: TYPE_CODE 'c' (0x63, or 0xe3 with FLAG_REF), then int32 argcount, posonly, kwonly, ...
    return len(raw) >= 21 and raw[0] in (0x63, 0xE3) and int.from_bytes(raw[1:5], "little") < 256


def _unique(findings: Iterable[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


# ---------------------------------------------------------------------- SavedModel graphs

# Ops that touch files, processes or the network. A model's serving graph has no
# business with any of them; ordinary SavedModels carry SaveV2/RestoreV2 only in
# their saver functions, which loading with tf.saved_model.load does not run.
_FILE_OPS = frozenset({
    "WriteFile", "ReadFile", "MatchingFiles", "Save", "SaveSlices", "SaveV2", "Restore", "RestoreSlice",
    "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec", "ImmutableConst",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "LoadAndRemapMatrix",
    "GenerateVocabRemapping", "DecodeProto", "DecodeProtoV2", "EncodeProto",
    "FileSystemSetConfiguration",
})
_PROCESS_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
_NETWORK_OPS = frozenset({"Send", "Recv", "_Send", "_Recv", "HostSend", "HostRecv"})
_RISKY_OP_PATTERN = re.compile(
    r"File|Reader|Writer|^Write|Summary$|^Debug|^Rpc|Rpc$|^Collective|Checkpoint|^Save|^Restore|^Load"
    r"|Sql|LMDB|TFRecord|TextLine|FixedLengthRecord|CSVDataset|DataService|^CacheDataset|SnapshotDataset"
    r"|DatasetToTFRecord|^RegisterDataset|DistributedSave"
)


def risky_op(op: str, attrs=None) -> Optional[str]:
    """Why running ``op`` is more than tensor math, or None. ``attrs``: the node's attr map, if any."""
    if op in _PROCESS_OPS:
        return "calls back into Python"
    if op in _NETWORK_OPS or op.startswith(("Rpc", "Collective")) or "DataService" in op:
        return "talks to other processes or the network"
    if op == "PrintV2":
        if attrs is None:  # a Flex op in a .tflite: its attrs are not read here
            return "may print to a file"
        stream = attrs["output_stream"].s.decode("utf-8", "replace") if "output_stream" in attrs else ""
        return f"prints to {stream}" if stream.startswith("file://") else None
    if op in _FILE_OPS or _RISKY_OP_PATTERN.search(op):
        return "reads or writes files"
    return None


def saved_model_findings(folder: Path) -> list[Finding]:
    """Ops that touch files, processes or the network in what loading and serving a SavedModel runs.

    Parses ``saved_model.pb`` with TensorFlow's proto classes (nothing is
    loaded or run) and walks, through every function-valued attr and function
    call, what the signatures, the init op and the restored functions reach.
    The saver (the ``saver_def`` save/restore ops) is left out: it writes
    checkpoints only when asked to, and loading reads variables without it.
    """
    from edgeresnet._util import tf as _tf

    _tf.tf()
    from tensorflow.core.protobuf import saved_model_pb2

    pb = folder / "saved_model.pb"
    model = saved_model_pb2.SavedModel()
    try:
        model.ParseFromString(pb.read_bytes())
    except Exception as exc:  # protobuf's DecodeError, or OSError
        raise ModelLoadError(f"{pb} is not a readable SavedModel ({type(exc).__name__}); export it again with model.export(dir)") from None
    findings: list[Finding] = []
    for meta in model.meta_graphs:
        findings += _meta_graph_findings(meta)
    return _unique(findings)


def _meta_graph_findings(meta) -> list[Finding]:
    graph = meta.graph_def
    nodes = {n.name: n for n in graph.node}
    # Roots in the main graph: signature outputs (and inputs), the init op, the main op.
    wanted = []
    for sig in meta.signature_def.values():
        wanted += [t.name for t in sig.outputs.values()] + [t.name for t in sig.inputs.values()]
    for key in ("saved_model_init_op", "legacy_init_op", "saved_model_main_op"):
        wanted += _collection_names(meta, key)
    # Plus every function the loader restores as a callable (object graph).
    return _reached_findings(graph, _reach_main_graph(nodes, wanted), list(meta.object_graph_def.concrete_functions))


def _collection_names(meta, key: str) -> list[str]:
    if key not in meta.collection_def:
        return []
    return list(meta.collection_def[key].node_list.value)


def _reach_main_graph(nodes: dict, tensor_names: list[str]) -> list:
    """Main-graph nodes the given tensors depend on (data and control inputs)."""
    seen, order = set(), []
    stack = [t.lstrip("^").split(":")[0] for t in tensor_names]
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        node = nodes[name]
        order.append(node)
        stack.extend(i.lstrip("^").split(":")[0] for i in node.input)
    return order


def _reached_findings(graph_def, nodes, functions: list[str], where: str = "graph") -> list[Finding]:
    """Risky ops in ``nodes`` of ``graph_def`` and in every library function they (or ``functions``) reach."""
    library = {f.signature.name: f for f in graph_def.library.function}
    findings: list[Finding] = []
    for node in nodes:
        findings += _node_findings(node, where, library, functions)
    seen: set = set()
    while functions:
        name = functions.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        for node in library[name].node_def:
            findings += _node_findings(node, f"function {name}", library, functions)
    return _unique(findings)


def _node_findings(node, where: str, library: dict, functions: list) -> list[Finding]:
    """Findings for one NodeDef; queues the functions it calls."""
    if node.op in library:
        functions.append(node.op)
    for value in node.attr.values():
        if value.HasField("func"):
            functions.append(value.func.name)
        elif value.HasField("list"):
            functions.extend(f.name for f in value.list.func)
    why = risky_op(node.op, node.attr)
    return [Finding(f"{where}, node {node.name!r}", f"op {node.op} ({why})")] if why else []


def graph_def_findings(graph_def) -> list[Finding]:
    """Risky ops in a GraphDef (a traced Keras model), including the functions in its library."""
    return _reached_findings(graph_def, list(graph_def.node), [], where="traced model")


def keras_metadata_findings(folder: Path) -> list[Finding]:
    """What the Keras configs in a tf_keras SavedModel's ``keras_metadata.pb`` would run."""
    from edgeresnet._util import tf as _tf

    _tf.tf_keras()
    from tf_keras.protobuf import saved_metadata_pb2

    pb = folder / "keras_metadata.pb"
    meta = saved_metadata_pb2.SavedMetadata()
    try:
        meta.ParseFromString(pb.read_bytes())
    except Exception as exc:
        raise ModelLoadError(f"{pb} is not readable ({type(exc).__name__}); save the model again") from None
    findings: list[Finding] = []
    for node in meta.nodes:
        try:
            entry = json.loads(node.metadata)
        except (ValueError, RecursionError):
            raise ModelLoadError(f"{pb} holds an unreadable layer record; save the model again") from None
        if not isinstance(entry, dict):
            continue
        cls, name = entry.get("class_name"), entry.get("name")
        root = f"layer {name!r} ({cls})" if node.identifier != "_tf_keras_metric" else f"metric {name!r}"
        # The layer's config is rebuilt as with .h5; the other metadata (shapes, specs) is
        # not resolved to classes by name, and metrics are not rebuilt with compile=False.
        layer = {"class_name": cls, "config": entry.get("config")} if node.identifier != "_tf_keras_metric" else {}
        rest = {k: v for k, v in entry.items() if k != "config" or not layer}
        findings += keras_config_findings({"rebuilt": layer, "compile_config": rest}, "tf_keras", root=root)
    return _unique(findings)
