"""Standard TFLite metadata: written into real models, read back, inference untouched."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from edgeresnet.errors import ConfigError, TFLiteFileError
from edgeresnet.device.metadata import (
    METADATA_NAME,
    ModelInfo,
    add_metadata,
    check_labels,
    parse_labels,
    read_metadata,
)

CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module", params=["pretrainedResnet_quant.tflite", "pretrainedResnet.tflite"])
def reference_model(request, shared_data) -> bytes:
    """The MLPerf Tiny ResNet-8 reference models (int8 and float), written by TensorFlow's converter."""
    return (shared_data / "mlperf-tiny-resnet8" / request.param).read_bytes()


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    from edgeresnet.device.runtime import TFLiteModel

    m = TFLiteModel(model)
    return m.invoke_raw(x.astype(m.input.dtype)).copy()


def test_round_trip_and_identical_inference(reference_model):
    assert read_metadata(reference_model) is None
    info = ModelInfo(name="resnet8", description="MLPerf Tiny ResNet-8", version="3",
                     mean=(0.0,), std=(1.0,), labels=CIFAR)
    with_meta = add_metadata(reference_model, info)
    assert read_metadata(with_meta) == info
    # The original flatbuffer is inside, untouched; the labels are a stored (uncompressed) zip member.
    assert reference_model in with_meta
    with zipfile.ZipFile(io.BytesIO(with_meta)) as archive:
        (entry,) = archive.infolist()
        assert entry.filename == "labels.txt" and entry.compress_type == zipfile.ZIP_STORED
        assert archive.read(entry).decode().splitlines() == list(CIFAR)
    # Same outputs, bit for bit, on real-looking inputs.
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.integers(-128, 128, (1, 32, 32, 3)).astype(np.float32)
        assert np.array_equal(_run(reference_model, x), _run(with_meta, x))


def test_generated_schema_sees_one_more_buffer_and_the_metadata_entry(reference_model):
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    before = schema.ModelT.InitFromPackedBuf(reference_model, 0)
    after = schema.ModelT.InitFromPackedBuf(add_metadata(reference_model, ModelInfo(name="m")), 0)
    assert len(after.buffers) == len(before.buffers) + 1
    names = [m.name.decode() for m in after.metadata]
    assert names == [m.name.decode() for m in before.metadata] + [METADATA_NAME]
    meta = bytes(after.buffers[after.metadata[-1].buffer].data)
    assert meta[4:8] == b"M001"
    assert len(after.subgraphs[0].operators) == len(before.subgraphs[0].operators)
    def contents(buffers):
        return [None if b.data is None else bytes(b.data) for b in buffers]

    assert contents(after.buffers[:-1]) == contents(before.buffers)


def test_without_labels_and_per_channel_normalization(reference_model):
    info = ModelInfo(name="torch-style", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    back = read_metadata(add_metadata(reference_model, info))
    assert back.labels is None and back.mean == pytest.approx(info.mean) and not back.uniform_normalization
    with pytest.raises(TFLiteFileError, match="already has TFLITE_METADATA"):
        add_metadata(add_metadata(reference_model, info), info)


def test_not_a_model_is_refused():
    with pytest.raises(TFLiteFileError):
        read_metadata(b"\x08\x00\x00\x00junk")


@pytest.mark.parametrize(
    "labels, message",
    [
        ([], "are empty"),
        (["cat", ""], "entry 2 is empty"),
        (["cat", "dog", "cat"], "'cat' appears twice"),
        ("cat", "one string"),
    ],
)
def test_bad_labels(labels, message):
    with pytest.raises(ConfigError, match=message):
        check_labels(labels)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mean": (0.0,)}, "both mean and std"),
        ({"mean": (0.0,), "std": (0.0,)}, "std positive"),
        ({"mean": (0.0, 1.0), "std": (1.0,)}, "1 or 3 values"),
        ({"color_space": "BGR"}, "color_space"),
        ({"name": " "}, "needs a model name"),
    ],
)
def test_bad_model_info(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelInfo(**{"name": "m", **kwargs})


def test_parse_labels_file_text():
    assert parse_labels("cat\r\ndog\n\n") == ("cat", "dog")
    with pytest.raises(ConfigError, match="entry 2 is empty"):
        parse_labels("cat\n\ndog\n")
