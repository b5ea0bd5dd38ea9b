"""The built-in default: scikit-learn digits splits and the committed reference ResNet-8."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from edgeresnet.host import demo
from edgeresnet.errors import DataError

pytest.importorskip("sklearn")

CLASS_COUNTS = np.array([178, 182, 177, 183, 181, 182, 181, 179, 174, 180])  # sklearn's digits


@pytest.fixture(scope="module")
def calib():
    return demo.digits_images("calib")


@pytest.fixture(scope="module")
def held_out():
    return demo.digits_images("eval")


# --------------------------------------------------------------------------- data


def test_split_sizes_and_sources(calib, held_out):
    assert len(calib.images) == len(calib.labels) == 1297
    assert len(held_out.images) == len(held_out.labels) == demo.EVAL_SIZE == 500
    assert calib.source == "built-in: scikit-learn digits (calib)"
    assert held_out.source == "built-in: scikit-learn digits (eval)"
    assert calib.class_names == held_out.class_names == tuple("0123456789")


def test_no_image_in_both_splits(calib, held_out):
    seen = {img.tobytes() for img in calib.images}
    assert len(seen) == len(calib.images)  # the digits have no exact duplicates either
    assert not any(img.tobytes() in seen for img in held_out.images)


def test_splits_are_stratified(calib, held_out):
    eval_counts = np.bincount(held_out.labels, minlength=10)
    calib_counts = np.bincount(calib.labels, minlength=10)
    np.testing.assert_array_equal(eval_counts + calib_counts, CLASS_COUNTS)
    expected = CLASS_COUNTS * 500 / CLASS_COUNTS.sum()
    assert np.all(np.abs(eval_counts - expected) < 1), eval_counts


def test_image_dtype_shape_range(calib, held_out):
    for s in (calib, held_out):
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (32, 32, 1)
        assert s.images.min() == 0 and s.images.max() == 255
        assert s.labels.dtype == np.int64 and set(np.unique(s.labels)) == set(range(10))
        # Raw pixels, not normalised: the mean digit covers a fair part of the frame.
        assert 30 < s.images.mean() < 120


def test_split_is_deterministic_and_callers_cannot_corrupt_it(held_out):
    again = demo.digits_images("eval")
    np.testing.assert_array_equal(again.images, held_out.images)
    np.testing.assert_array_equal(again.labels, held_out.labels)
    again.images[:] = 0  # a caller's copy: the cached digits stay intact
    np.testing.assert_array_equal(demo.digits_images("eval").images, held_out.images)


def test_split_indices_rounds_to_exact_size():
    labels = np.repeat(np.arange(3), [5, 3, 2])
    calib_idx, eval_idx = demo.split_indices(labels, eval_size=4, seed=1)
    assert len(eval_idx) == 4 and len(calib_idx) == 6
    assert not set(calib_idx) & set(eval_idx)
    np.testing.assert_array_equal(np.bincount(labels[eval_idx], minlength=3), [2, 1, 1])
    with pytest.raises(DataError, match="eval_size"):
        demo.split_indices(labels, eval_size=10)


def test_upsampling_scales_0_16_to_0_255():
    digits = np.zeros((3, 8, 8))
    digits[1] = 16
    digits[2, :, 4:] = 8  # a vertical edge: bilinear gives a ramp, not a step
    out = demo.to_uint8_32(digits)
    assert out.shape == (3, 32, 32, 1) and out.dtype == np.uint8
    assert (out[0] == 0).all() and (out[1] == 255).all()
    row = out[2, 16, :, 0]
    assert row[0] == 0 and row[-1] == 128
    assert len(np.unique(row)) > 2 and np.all(np.diff(row.astype(int)) >= 0)
    with pytest.raises(DataError, match=r"\(N, 8, 8\)"):
        demo.to_uint8_32(np.zeros((2, 32, 32)))


def test_unknown_split_is_a_data_error():
    with pytest.raises(DataError, match="'test'.*calib, eval"):
        demo.digits_images("test")


def test_demo_data_does_not_import_tensorflow():
    code = (
        "import sys; from edgeresnet.host import demo; demo.digits_images('eval'); demo.reference_metadata(); "
        "demo.reference_model_path(); print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- committed reference model


def test_metadata_describes_the_committed_weights():
    meta = demo.reference_metadata()
    assert meta["name"] == demo.REFERENCE_NAME == "digits-resnet8"
    assert meta["input_shape"] == [32, 32, 1]
    assert meta["preset"] == "unit"
    assert meta["class_names"] == [str(d) for d in range(10)]
    path = demo.reference_model_path()
    assert meta["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.stat().st_size < 600_000
    t = meta["training"]
    assert {"seed", "epochs", "split", "test_accuracy"} <= set(t)
    assert (t["split"]["train"], t["split"]["test"]) == (1297, 500)
    # The "held-out" split in the code is the one the model never trained on.
    assert t["split"]["eval_sha256"] == demo.split_fingerprint()


@pytest.fixture(scope="module")
def reference_model():
    from edgeresnet._util import tf as _tf

    return _tf.tf_keras().models.load_model(demo.reference_model_path(), compile=False)


@pytest.fixture(scope="module")
def keras_eval_outputs(reference_model, held_out):
    return reference_model.predict(held_out.images.astype(np.float32) / 255.0, batch_size=250, verbose=0)


def test_reference_model_scores_95_percent_on_held_out(reference_model, keras_eval_outputs, held_out):
    assert reference_model.input_shape == (None, 32, 32, 1)
    assert reference_model.output_shape == (None, 10)
    top1 = float((keras_eval_outputs.argmax(axis=1) == held_out.labels).mean())
    assert top1 >= 0.95, top1
    # What the training script recorded is what the file does here (same split, same weights).
    assert top1 == pytest.approx(demo.reference_metadata()["training"]["test_accuracy"], abs=0.004)


@pytest.mark.slow
def test_full_int8_conversion_agrees_with_keras(reference_model, keras_eval_outputs, calib, held_out):
    from edgeresnet._util import tf as _tf
    from edgeresnet.device.runtime import TFLiteModel

    tf = _tf.tf()
    pick = np.random.RandomState(0).permutation(len(calib.images))[:200]
    rep = calib.images[pick].astype(np.float32) / 255.0

    def representative():
        for i in range(len(rep)):
            yield [rep[i : i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(reference_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tflite = TFLiteModel(converter.convert())

    assert tflite.input.dtype == np.int8 and tflite.output.dtype == np.int8
    q = tflite.predict(held_out.images.astype(np.float32) / 255.0)
    agree = float((q.argmax(axis=1) == keras_eval_outputs.argmax(axis=1)).mean())
    assert agree >= 0.97, agree
    assert float((q.argmax(axis=1) == held_out.labels).mean()) >= 0.95
