"""Standard TFLite model metadata: what phone runtimes read to use a model.

A model edgeresnet emits carries the metadata of the TFLite support library's
public schema (``metadata_schema.fbs``, file identifier ``M001``), the same
that MediaPipe Tasks, the TFLite Task Library and Android Studio's model
binding read:

- the metadata flatbuffer sits in one of the model's buffers, named in the
  model's ``metadata`` list as ``TFLITE_METADATA``;
- associated files (here ``labels.txt``, type ``TENSOR_AXIS_LABELS`` on the
  output tensor) are packed as an *uncompressed* zip appended to the
  flatbuffer, so the ``.tflite`` file is also a zip archive. MediaPipe refuses
  compressed entries, and minizip finds the archive from its end record
  wherever it starts.

:func:`read_metadata` needs neither TensorFlow nor the ``flatbuffers``
package: it walks the wire format with the model reader of
:mod:`edgeresnet.device.tflite_graph`, so it works next to tflite-runtime on a Pi.
:func:`add_metadata` builds the metadata flatbuffer with the ``flatbuffers``
package and splices it into the model without re-serialising anything: the
original model bytes are kept verbatim behind a new root table, so inference
is bit-identical by construction (and tested).
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgeresnet.device.image_files import check_special
from edgeresnet.errors import ConfigError, DataError, TFLiteFileError
from edgeresnet.device.tflite_graph import _Reader

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
# Oldest metadata parser that understands every field written here (all date
# from schema 1.0.0: ImageProperties, NormalizationOptions, TENSOR_AXIS_LABELS).
MIN_PARSER_VERSION = "1.0.0"

COLOR_SPACES = ("UNKNOWN", "RGB", "GRAYSCALE")  # ColorSpaceType, code = position

# Slots of the schema tables used here (field order of metadata_schema.fbs).
_MM_NAME, _MM_DESCRIPTION, _MM_VERSION, _MM_SUBGRAPHS, _MM_AUTHOR, _MM_LICENSE = 0, 1, 2, 3, 4, 5
_MM_MIN_PARSER = 7
_SG_INPUTS, _SG_OUTPUTS = 2, 3
_TM_NAME, _TM_DESCRIPTION, _TM_CONTENT, _TM_PROCESS_UNITS, _TM_STATS, _TM_FILES = 0, 1, 3, 4, 5, 6
_CONTENT_PROPS_TYPE, _CONTENT_PROPS = 0, 1
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # ContentProperties union codes
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union code
_AF_NAME, _AF_DESCRIPTION, _AF_TYPE = 0, 1, 2
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
# TFLite schema: Model, Metadata and Buffer tables.
_MODEL_SLOTS = 8  # version, operator_codes, subgraphs, description, buffers, metadata_buffer, metadata, signature_defs
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_BUFFER_DATA, _BUFFER_OFFSET = 0, 1


@dataclass(frozen=True)
class ModelInfo:
    """What a client needs to use a classifier: its name, input format and class names.

    ``mean``/``std`` follow the schema's NormalizationOptions: the model's
    float input is ``(pixel - mean) / std`` on raw 0..255 pixels, one value for
    all channels or one per channel (``None``: not stated). A quantized input
    takes that float value through its own quantization parameters.
    ``labels`` are the class names in output order (``None``: not stated).
    """

    name: str
    description: str = ""
    version: str = ""
    author: str = ""
    color_space: str = "RGB"
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    labels: Optional[tuple[str, ...]] = None
    labels_file: str = LABELS_FILE

    def __post_init__(self):
        for key in ("name", "description", "version", "author", "labels_file"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"metadata {key} must be text, got {getattr(self, key)!r}")
        if not self.name.strip():
            raise ConfigError("metadata needs a model name")
        if self.color_space not in COLOR_SPACES:
            raise ConfigError(f"metadata color_space must be one of {', '.join(COLOR_SPACES)}, got {self.color_space!r}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("metadata normalization needs both mean and std, or neither")
        if self.mean is not None:
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
            if len(mean) not in (1, 3) or len(std) not in (1, 3):
                raise ConfigError(f"metadata mean/std need 1 or 3 values, got {len(mean)} and {len(std)}")
            if not all(math.isfinite(v) for v in mean + std) or any(s <= 0 for s in std):
                raise ConfigError(f"metadata mean must be finite and std positive, got mean {mean}, std {std}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if self.labels is not None:
            object.__setattr__(self, "labels", check_labels(self.labels, "metadata labels"))
        if not self.labels_file or "/" in self.labels_file or "\\" in self.labels_file:
            raise ConfigError(f"metadata labels_file must be a plain file name, got {self.labels_file!r}")

    @property
    def uniform_normalization(self) -> bool:
        """True when one mean and one std hold for every channel (what MediaPipe can apply)."""
        return self.mean is not None and len(set(self.mean)) == 1 and len(set(self.std)) == 1

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "author": self.author,
            "color_space": self.color_space,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "labels_count": None if self.labels is None else len(self.labels),
            "labels_file": self.labels_file if self.labels is not None else None,
        }


def check_labels(labels, what: str = "labels") -> tuple[str, ...]:
    """Class names as a tuple of stripped strings; :class:`ConfigError` when empty, blank or repeated."""
    if isinstance(labels, str):
        raise ConfigError(f"{what} must be a list of class names, got one string {labels!r}")
    out = tuple(str(label).strip() for label in labels)
    if not out:
        raise ConfigError(f"{what} are empty; give one class name per line")
    for i, label in enumerate(out):
        if not label:
            raise ConfigError(f"{what}: entry {i + 1} is empty; every class needs a name")
        if "\n" in label or "\r" in label:
            raise ConfigError(f"{what}: entry {i + 1} ({label!r}) spans lines; one name per line")
    seen: dict[str, int] = {}
    for i, label in enumerate(out):
        if label in seen:
            raise ConfigError(f"{what}: {label!r} appears twice (entries {seen[label] + 1} and {i + 1}); names must be unique")
        seen[label] = i
    return out


def labels_text(labels) -> str:
    """The ``labels.txt`` format: one name per line, newline-terminated."""
    return "".join(f"{label}\n" for label in labels)


def parse_labels(text: str, what: str = "labels") -> tuple[str, ...]:
    """Class names from a labels file's text (one per line; a final newline is optional)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return check_labels(lines, what)


#: A labels file larger than this is not one: the 21,841 ImageNet-21k class names take well under 1 MiB.
MAX_LABELS_BYTES = 4 << 20
_LABELS_FIX = "pass a UTF-8 text file with one class name per line"


def read_labels_file(path, num_classes: Optional[int] = None) -> tuple[str, ...]:
    """Class names from a text file, one per line (the ``labels.txt`` format); :class:`DataError` otherwise.

    A FIFO or device is refused before it is opened, at most :data:`MAX_LABELS_BYTES` are read, a UTF-8
    byte-order mark is dropped and CRLF line ends are taken as line ends. With ``num_classes``, one name per
    model output is required (``--labels FILE`` for a model).
    """
    p = Path(path)
    try:
        labels = parse_labels(_labels_text(p), str(p))
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    return labels if num_classes is None else check_label_count(labels, f"--labels {path}", num_classes)


def _labels_text(p: Path) -> str:
    if not p.exists():
        raise DataError(f"{p}: no such labels file; {_LABELS_FIX}")
    if p.is_dir():
        raise DataError(f"{p} is a folder; {_LABELS_FIX}")
    check_special(p, "a labels file", "save the class names in a regular text file and pass that")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_LABELS_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{p}: cannot read it ({exc.strerror or type(exc).__name__}); make it readable") from None
    if len(data) > MAX_LABELS_BYTES:
        raise DataError(f"{p} is over {MAX_LABELS_BYTES >> 20} MiB, too big for a labels file; {_LABELS_FIX}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not UTF-8 text (byte {exc.start} cannot be decoded); {_LABELS_FIX}") from None
    if "\0" in text:
        raise DataError(f"{p} holds NUL bytes, so it is not a text file; {_LABELS_FIX}")
    return text


def check_label_count(labels: tuple[str, ...], source: str, num_classes: int) -> tuple[str, ...]:
    """``labels`` when there is one per model output; :class:`DataError` naming ``source`` otherwise."""
    if len(labels) != num_classes:
        raise DataError(
            f"{source} has {len(labels)} class names but the model has {num_classes} outputs; "
            "give exactly one name per output, in output order"
        )
    return labels


# ---------------------------------------------------------------------- reading


def _metadata_buffer(r: _Reader) -> Optional[bytes]:
    model = r.root()
    buffers = r.tables(model, _MODEL_BUFFERS)
    for entry in r.tables(model, _MODEL_METADATA):
        if r.string(entry, 0) != METADATA_NAME:
            continue
        index = r.scalar(entry, 1, "<I", 0)
        if index >= len(buffers):
            raise r._bad(f"{METADATA_NAME} names buffer {index} of {len(buffers)}")
        span = r.byte_span(buffers[index], _BUFFER_DATA)
        if span is None:
            raise r._bad(f"{METADATA_NAME} buffer {index} is empty")
        start, length = span
        return bytes(r.buf[start : start + length])
    return None


def _floats(r: _Reader, table: int, slot: int) -> tuple[float, ...]:
    return tuple(float(v) for v in r.scalars(table, slot, "<f"))


def read_metadata(model: bytes, label: str = "model") -> Optional[ModelInfo]:
    """The :class:`ModelInfo` stored in a ``.tflite`` file's bytes, or ``None`` when it has none.

    Reads the first subgraph's first input (image properties, normalization)
    and first output (the ``TENSOR_AXIS_LABELS`` file, taken from the zip
    packed behind the flatbuffer). :class:`TFLiteFileError` when the metadata
    is damaged or names a labels file that is not packed in the model.
    """
    data = bytes(model)
    meta = _metadata_buffer(_Reader(data, label))
    if meta is None:
        return None
    if meta[4:8] != FILE_IDENTIFIER:
        raise TFLiteFileError(
            f"{label}: its {METADATA_NAME} is not TFLite metadata (identifier {meta[4:8]!r}, expected {FILE_IDENTIFIER!r})"
        )
    r = _Reader(meta, f"{label} metadata")
    root = r.root()
    fields = {
        "name": r.string(root, _MM_NAME) or "",
        "description": r.string(root, _MM_DESCRIPTION) or "",
        "version": r.string(root, _MM_VERSION) or "",
        "author": r.string(root, _MM_AUTHOR) or "",
        "color_space": "UNKNOWN",
    }
    if not fields["name"].strip():
        fields["name"] = "unnamed"
    subgraphs = r.tables(root, _MM_SUBGRAPHS)
    inputs = r.tables(subgraphs[0], _SG_INPUTS) if subgraphs else []
    outputs = r.tables(subgraphs[0], _SG_OUTPUTS) if subgraphs else []
    if inputs:
        tensor = inputs[0]
        content = r.table(tensor, _TM_CONTENT)
        if content is not None and r.scalar(content, _CONTENT_PROPS_TYPE, "<B", 0) == _IMAGE_PROPERTIES:
            props = r.table(content, _CONTENT_PROPS)
            code = r.scalar(props, 0, "<b", 0) if props is not None else 0
            fields["color_space"] = COLOR_SPACES[code] if 0 <= code < len(COLOR_SPACES) else "UNKNOWN"
        for unit in r.tables(tensor, _TM_PROCESS_UNITS):
            if r.scalar(unit, 0, "<B", 0) != _NORMALIZATION_OPTIONS:
                continue
            options = r.table(unit, 1)
            if options is not None:
                mean, std = _floats(r, options, 0), _floats(r, options, 1)
                if mean and std:
                    fields["mean"], fields["std"] = mean, std
            break
    if outputs:
        for entry in r.tables(outputs[0], _TM_FILES):
            if r.scalar(entry, _AF_TYPE, "<b", 0) != TENSOR_AXIS_LABELS:
                continue
            name = r.string(entry, _AF_NAME) or ""
            fields["labels_file"] = name
            fields["labels"] = parse_labels(
                _packed_file(data, name, label).decode("utf-8", "replace"), f"{label}: packed {name}"
            )
            break
    try:
        return ModelInfo(**fields)
    except ConfigError as exc:
        raise TFLiteFileError(f"{label}: its metadata is unusable ({exc})") from None


def packed_files(model: bytes) -> dict[str, bytes]:
    """The associated files zipped behind the flatbuffer, by name ({} when there is no archive)."""
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(model))) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist()}
    # A damaged archive raises more than BadZipFile (an unknown method or version,
    # a negative seek, a truncated entry); it holds no usable files either way.
    except (zipfile.BadZipFile, NotImplementedError, EOFError, ValueError, RuntimeError, OSError):
        return {}


def _packed_file(model: bytes, name: str, label: str) -> bytes:
    files = packed_files(model)
    if name not in files:
        raise TFLiteFileError(
            f"{label}: its metadata names the labels file {name!r} but the model does not contain it; "
            "re-create the model with edgeresnet convert"
        )
    return files[name]


# ---------------------------------------------------------------------- writing


class _Builder:
    """The few flatbuffer shapes the metadata needs, over a ``flatbuffers.Builder``."""

    def __init__(self, builder):
        self.b = builder

    def table(self, fields):
        """fields: (slot, kind, value) with kind 'off', 'u8', 'i8', 'u32'; None values are skipped."""
        b = self.b
        present = [f for f in fields if f[2] is not None]
        b.StartObject(max((f[0] for f in fields), default=-1) + 1)
        for slot, kind, value in present:
            {"off": b.PrependUOffsetTRelativeSlot, "u8": b.PrependUint8Slot, "i8": b.PrependInt8Slot,
             "u32": b.PrependUint32Slot}[kind](slot, value, 0)
        return b.EndObject()

    def offsets(self, items):
        self.b.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.b.PrependUOffsetTRelative(item)
        return self.b.EndVector()

    def floats(self, values):
        self.b.StartVector(4, len(values), 4)
        for v in reversed(values):
            self.b.PrependFloat32(v)
        return self.b.EndVector()

    def text(self, s):
        return self.b.CreateString(s) if s else None


def metadata_flatbuffer(info: ModelInfo) -> bytes:
    """The ``M001`` flatbuffer for a single-input image classifier described by ``info``."""
    try:
        import flatbuffers
    except ImportError:  # pragma: no cover - installed with ai-edge-litert and TensorFlow
        from edgeresnet.errors import MissingDependencyError

        raise MissingDependencyError("writing model metadata needs the flatbuffers package: pip install flatbuffers") from None

    fb = _Builder(flatbuffers.Builder(1024))
    b, table, offsets, floats, text = fb.b, fb.table, fb.offsets, fb.floats, fb.text
    # Input: an RGB image, normalized as stated.
    image_props = table([(0, "i8", COLOR_SPACES.index(info.color_space))])
    in_content = table([(_CONTENT_PROPS_TYPE, "u8", _IMAGE_PROPERTIES), (_CONTENT_PROPS, "off", image_props)])
    units = None
    if info.mean is not None:
        mean, std = floats(info.mean), floats(info.std)
        norm = table([(0, "off", mean), (1, "off", std)])
        units = offsets([table([(0, "u8", _NORMALIZATION_OPTIONS), (1, "off", norm)])])
    in_name, in_desc = b.CreateString("image"), b.CreateString(_input_description(info))
    input_meta = table([(_TM_NAME, "off", in_name), (_TM_DESCRIPTION, "off", in_desc),
                        (_TM_CONTENT, "off", in_content), (_TM_PROCESS_UNITS, "off", units)])

    # Output: class probabilities, with the labels file when there are labels.
    files = None
    if info.labels is not None:
        af_name, af_desc = b.CreateString(info.labels_file), b.CreateString("Class names, one per line, in output order")
        files = offsets([table([(_AF_NAME, "off", af_name), (_AF_DESCRIPTION, "off", af_desc),
                                (_AF_TYPE, "i8", TENSOR_AXIS_LABELS)])])
    out_props = table([])
    out_content = table([(_CONTENT_PROPS_TYPE, "u8", _FEATURE_PROPERTIES), (_CONTENT_PROPS, "off", out_props)])
    out_name, out_desc = b.CreateString("probability"), b.CreateString("Probability of each class")
    output_meta = table([(_TM_NAME, "off", out_name), (_TM_DESCRIPTION, "off", out_desc),
                         (_TM_CONTENT, "off", out_content), (_TM_FILES, "off", files)])

    subgraph = table([(_SG_INPUTS, "off", offsets([input_meta])), (_SG_OUTPUTS, "off", offsets([output_meta]))])
    root = table([
        (_MM_NAME, "off", b.CreateString(info.name)),
        (_MM_DESCRIPTION, "off", text(info.description)),
        (_MM_VERSION, "off", text(info.version)),
        (_MM_SUBGRAPHS, "off", offsets([subgraph])),
        (_MM_AUTHOR, "off", text(info.author)),
        (_MM_MIN_PARSER, "off", b.CreateString(MIN_PARSER_VERSION)),
    ])
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def _input_description(info: ModelInfo) -> str:
    if info.mean is None:
        return "Input image; normalization not stated"
    return f"Input image, {info.color_space}; model input = (pixel - mean) / std on 0..255 pixels"


class _Out:
    """A little-endian byte builder that places objects front to back and patches offsets."""

    def __init__(self):
        self.buf = bytearray()

    def align(self, n: int):
        self.buf += b"\0" * (-len(self.buf) % n)

    def put(self, fmt: str, *values) -> int:
        pos = len(self.buf)
        self.buf += struct.pack("<" + fmt, *values)
        return pos

    def offset_to(self, slot_pos: int, target: int):
        struct.pack_into("<I", self.buf, slot_pos, target - slot_pos)


def _model_to_extend(data: bytes, label: str):
    """(reader, root, buffers, metadata entries) of a model :func:`add_metadata` can extend; else TFLiteFileError."""
    r = _Reader(data, label)
    old_root = r.root()
    if _metadata_buffer(r) is not None:
        raise TFLiteFileError(f"{label} already has {METADATA_NAME}; add metadata to the converter's output only")
    if data[4:8] != b"TFL3":
        raise TFLiteFileError(f"{label} is not a TFLite model (identifier {data[4:8]!r}, expected b'TFL3')")
    vtable = old_root - r.i32(old_root)
    slots = (r.u16(vtable) - 4) // 2
    if any(r.field_pos(old_root, s) is not None for s in range(_MODEL_SLOTS, slots)):
        raise TFLiteFileError(f"{label} has Model fields newer than this writer knows; update edgeresnet")
    buffers = r.tables(old_root, _MODEL_BUFFERS)
    if any(r.scalar(buf, _BUFFER_OFFSET, "<Q", 0) > 1 for buf in buffers):
        raise TFLiteFileError(f"{label} keeps its weights outside the flatbuffer (a model over 2 GB); not supported")
    return r, old_root, buffers, r.tables(old_root, _MODEL_METADATA)


def _put_metadata_entry(out: "_Out", buffer_index: int, meta: bytes) -> tuple:
    """The new Metadata entry {name, buffer index} and the new Buffer {data}; positions to patch later.

    Returns (metadata table, its name slot, buffer table, its data slot, name string, data vector).
    """
    meta_vt = out.put("HHHH", 8, 12, 4, 8)
    meta_table = out.put("i", 0)
    struct.pack_into("<i", out.buf, meta_table, meta_table - meta_vt)
    meta_name_slot = out.put("I", 0)
    out.put("I", buffer_index)
    buf_vt = out.put("HHH", 6, 8, 4)
    out.align(4)
    buf_table = out.put("i", 0)
    struct.pack_into("<i", out.buf, buf_table, buf_table - buf_vt)
    buf_data_slot = out.put("I", 0)
    name_pos = out.put("I", len(METADATA_NAME))
    out.buf += METADATA_NAME.encode() + b"\0"
    out.align(16)
    out.buf += b"\0" * 12  # so the vector's bytes start 16-aligned
    data_pos = out.put("I", len(meta))
    out.buf += meta
    out.align(16)
    return meta_table, meta_name_slot, buf_table, buf_data_slot, name_pos, data_pos


def add_metadata(model: bytes, info: ModelInfo, label: str = "model") -> bytes:
    """``model`` with ``info`` written as standard TFLite metadata (and labels packed as a zip).

    The original flatbuffer is kept byte for byte: a new root ``Model`` table
    in front of it reuses all of its objects and adds one buffer (the
    metadata) and one ``metadata`` entry. :class:`TFLiteFileError` for a
    model that already has ``TFLITE_METADATA`` or stores buffers outside the
    flatbuffer (models over 2 GB).
    """
    data = bytes(model)
    r, old_root, buffers, old_metadata = _model_to_extend(data, label)
    meta = metadata_flatbuffer(info)

    # Every old object moves by `shift` (the prefix length, a multiple of 16 so
    # the converter's 16-byte buffer alignment holds).
    out = _Out()
    root_slot = out.put("I", 0)
    out.buf += b"TFL3"
    vt = out.put("HH", 4 + 2 * _MODEL_SLOTS, 4 + 4 * _MODEL_SLOTS)
    vt_entries = out.put("H" * _MODEL_SLOTS, *([0] * _MODEL_SLOTS))
    out.align(4)
    table = out.put("i", 0)
    struct.pack_into("<i", out.buf, table, table - vt)
    out.offset_to(root_slot, table)
    field_pos = {}
    for slot in range(_MODEL_SLOTS):
        field_pos[slot] = out.put("I", 0)
        struct.pack_into("<H", out.buf, vt_entries + 2 * slot, field_pos[slot] - table)
    buffers_vec = out.put("I", len(buffers) + 1)
    buffer_slots = [out.put("I", 0) for _ in range(len(buffers) + 1)]
    metadata_vec = out.put("I", len(old_metadata) + 1)
    metadata_slots = [out.put("I", 0) for _ in range(len(old_metadata) + 1)]
    meta_table, meta_name_slot, buf_table, buf_data_slot, name_pos, data_pos = _put_metadata_entry(out, len(buffers), meta)
    shift = len(out.buf)

    def old(slot):
        pos = r.field_pos(old_root, slot)
        return None if pos is None else r.indirect(pos)

    version = r.scalar(old_root, 0, "<I", 0)
    struct.pack_into("<I", out.buf, field_pos[0], version)
    for slot in range(1, _MODEL_SLOTS):
        if slot == _MODEL_BUFFERS:
            out.offset_to(field_pos[slot], buffers_vec)
        elif slot == _MODEL_METADATA:
            out.offset_to(field_pos[slot], metadata_vec)
        elif old(slot) is not None:
            out.offset_to(field_pos[slot], old(slot) + shift)
        else:
            struct.pack_into("<H", out.buf, vt_entries + 2 * slot, 0)
    for pos, target in zip(buffer_slots, [b + shift for b in buffers] + [buf_table]):
        out.offset_to(pos, target)
    for pos, target in zip(metadata_slots, [m + shift for m in old_metadata] + [meta_table]):
        out.offset_to(pos, target)
    out.offset_to(meta_name_slot, name_pos)
    out.offset_to(buf_data_slot, data_pos)
    result = bytes(out.buf) + data
    if info.labels is not None:
        result = _append_files(result, {info.labels_file: labels_text(info.labels).encode("utf-8")})
    return result


def _append_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """``model`` followed by an uncompressed zip of ``files`` (fixed timestamps: reproducible bytes)."""
    stream = io.BytesIO(model)
    stream.seek(0, io.SEEK_END)
    with zipfile.ZipFile(stream, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_STORED
            archive.writestr(entry, content)
    return stream.getvalue()
