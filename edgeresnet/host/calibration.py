"""Calibration on the host: the record of what was used, feeding the converter, folding preprocessing.

Reading images is the device side's (:mod:`edgeresnet.device.images`, listing
and choosing in :mod:`edgeresnet.device.image_files`, arrays in
:mod:`edgeresnet.device.imageset`), and so are the preprocessing presets
(:mod:`edgeresnet.device.presets`). What is left here needs TensorFlow or
only happens on the host:

1. :func:`representative_dataset` feeds preprocessed floats to the TFLite
   converter, or :func:`fold_preprocessing` moves the preset inside the model
   so the deployed model takes raw 0..255 pixels (:func:`grey_from_rgb` puts
   an RGB front on a greyscale model).
2. :func:`calibration_record` says what was used (source, count, seed, preset,
   resize, per-class counts, warnings) for the run report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import numpy as np

from edgeresnet.device.imageset import ImageSet
from edgeresnet.device.presets import Preset, get_preset
from edgeresnet.errors import ConfigError, DataError

MIN_RECOMMENDED_SAMPLES = 100

ProgressFn = Callable[[int, int], None]


# ---------------------------------------------------------------------- record


@dataclass(frozen=True)
class CalibrationRecord:
    """What calibration used, for the run report."""

    source: str
    count: int
    seed: int
    preset: str
    resize: str
    balanced: bool
    per_class: Optional[dict[str, int]]
    warnings: tuple[str, ...] = ()
    requested: Optional[int] = None
    available: Optional[int] = None
    resized: Optional[int] = 0
    raw_is_pixels: bool = True

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "count": self.count,
            "requested": self.requested,
            "available": self.available,
            "seed": self.seed,
            "preset": self.preset,
            "resize": self.resize,
            "resized": self.resized,
            "balanced": self.balanced,
            "per_class": None if self.per_class is None else dict(self.per_class),
            "raw_is_pixels": self.raw_is_pixels,
            "warnings": list(self.warnings),
        }


def calibration_record(imageset: ImageSet, preset: Union[str, Preset], seed: int, resize: str) -> CalibrationRecord:
    """Describe ``imageset`` as calibration data, with warnings about its size and class mix."""
    preset_name = preset.name if isinstance(preset, Preset) else str(preset)
    n = len(imageset)
    warnings = []
    if n < MIN_RECOMMENDED_SAMPLES:
        warnings.append(f"only {n} samples; at least {MIN_RECOMMENDED_SAMPLES} recommended")
    if imageset.requested is not None and imageset.requested > n:
        warnings.append(f"asked for {imageset.requested} samples but the source has only {n}")
    per_class = imageset.per_class()
    if per_class:
        missing = [name for name, k in per_class.items() if k == 0]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            warnings.append(f"no samples of {len(missing)} class(es): {shown}")
        present = [k for k in per_class.values() if k > 0]
        if present and max(present) > 2 * min(present):
            warnings.append(
                f"uneven classes: {min(present)} to {max(present)} samples per class "
                "(some classes have fewer images)"
            )
    if not imageset.raw_is_pixels and n:
        hi = float(np.max(imageset.images))
        preset_obj = preset if isinstance(preset, Preset) else None
        identity = preset_obj.is_identity if preset_obj is not None else preset_name == "raw"
        if hi <= 1.0 and not identity:
            warnings.append(
                f"array values are at most {hi:g}, not 0..255 pixels; "
                f"preset {preset_name!r} assumes raw pixels (use --preset raw if the array is already preprocessed)"
            )
    return CalibrationRecord(
        source=imageset.source,
        count=n,
        seed=int(seed),
        preset=preset_name,
        resize=resize,
        balanced=bool(imageset.balanced and imageset.labelled),
        per_class=per_class,
        warnings=tuple(warnings),
        requested=imageset.requested,
        available=imageset.available,
        resized=imageset.resized,
        raw_is_pixels=imageset.raw_is_pixels,
    )


# ---------------------------------------------------------------------- converter side


def representative_dataset(samples: np.ndarray, progress: Optional[ProgressFn] = None) -> Callable[[], Iterator]:
    """What ``TFLiteConverter.representative_dataset`` takes: a callable yielding ``[x[i:i+1]]`` float32.

    ``samples`` are preprocessed model inputs (N, H, W, C); ``progress(done, total)``
    counts the samples the converter has consumed.
    """
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim < 2 or len(data) == 0:
        raise DataError(f"calibration needs a batch of samples (N, H, W, C), got shape {data.shape}")

    def gen():
        total = len(data)
        for i in range(total):
            yield [data[i : i + 1]]
            if progress is not None:
                progress(i + 1, total)

    return gen


# ITU-R 601-2 luma, the weights PIL's convert("L") uses: a colour image becomes the
# same grey through grey_from_rgb as through edgeresnet's loader for 1-channel models.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def grey_from_rgb(model):
    """A new tf_keras model taking RGB images in front of a 1-channel (greyscale) ``model``.

    Phone runtimes hand classifiers RGB frames (MediaPipe's ImageClassifier
    refuses inputs that are not 3 channels), so a greyscale model ships with its
    grey conversion inside: a frozen 1x1 ``Conv2D`` named ``rgb_to_grey`` with
    the luma weights (they sum to 1, so an image whose channels are equal
    passes through unchanged). It converts to one ``CONV_2D`` op that every
    target runs.
    """
    from edgeresnet._util import tf as _tf

    keras = _tf.tf_keras()
    if not isinstance(model, keras.Model):
        raise ConfigError(f"an RGB front needs a tf_keras model, got {type(model).__name__}")
    in_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if in_shape is None or len(in_shape) != 3 or in_shape[2] != 1 or None in in_shape[:2]:
        raise ConfigError(f"an RGB front is for one fixed (H, W, 1) greyscale input, got {model.input_shape}")
    inputs = keras.Input(shape=in_shape[:2] + (3,), name="rgb")
    conv = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name="rgb_to_grey", dtype="float32")
    x = conv(inputs)
    conv.set_weights([np.asarray(LUMA_WEIGHTS, dtype=np.float32).reshape(1, 1, 3, 1)])
    return keras.Model(inputs, model(x), name=f"{model.name}_rgb")


def fold_preprocessing(model, preset: Union[str, Preset]):
    """A new tf_keras model taking raw 0..255 pixels: ``preset`` as a fixed 1x1 conv, then ``model``.

    The flip, scale, mean and std of the preset are one affine map per channel,
    so they become a single frozen ``Conv2D`` (kernel 1x1, weights =
    permutation x ``scale/std``, bias = ``-mean/std``) named
    ``preprocess_<preset>``. It converts to one ``CONV_2D`` op, which every
    target (XNNPACK, Edge TPU, GPU delegate) runs, and quantizes exactly
    (one non-zero weight per output channel). The ``raw`` preset adds nothing.
    """
    from edgeresnet._util import tf as _tf

    keras = _tf.tf_keras()
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"folding preprocessing needs a tf_keras model, got {type(model).__name__}; load the model with tf_keras"
        )
    in_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if in_shape is None or len(in_shape) != 3 or any(d is None for d in in_shape):
        raise ConfigError(
            f"folding preprocessing needs one fixed (H, W, C) image input, got {model.input_shape}"
        )
    channels = int(in_shape[2])
    mean, std = preset.channel_stats(channels)
    gain = (np.float64(preset.scale) / std.astype(np.float64)).astype(np.float32)
    offset = (-mean.astype(np.float64) / std.astype(np.float64)).astype(np.float32)
    flip = preset.flips(channels)
    inputs = keras.Input(shape=in_shape, name="pixels")
    x = inputs
    if not preset.is_identity:
        kernel = np.zeros((1, 1, channels, channels), dtype=np.float32)
        for out_c in range(channels):
            in_c = channels - 1 - out_c if flip else out_c
            kernel[0, 0, in_c, out_c] = gain[out_c]
        conv = keras.layers.Conv2D(
            channels, 1, use_bias=True, trainable=False, name=f"preprocess_{preset.name}", dtype="float32"
        )
        x = conv(x)
        conv.set_weights([kernel, offset])
    outputs = model(x)
    return keras.Model(inputs, outputs, name=f"{model.name}_{preset.name}_folded")
