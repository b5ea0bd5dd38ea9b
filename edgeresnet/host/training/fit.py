"""What pruning, QAT and transfer learning share when they fine-tune a classifier.

The labelled training data as a stream of model inputs (:func:`train_stream`,
with the checks of :func:`check_data`), whether the loss takes logits
(:func:`uses_logits`), the optimizer and loss (:func:`compile_classifier`:
Adam, sparse categorical cross-entropy, accuracy), the fit loop
(:func:`fit_history`) and its progress callback (:func:`progress_callback`).
How the stream is batched under a strategy is :mod:`edgeresnet.host.training.data`;
what a trained result records is :mod:`edgeresnet.host.training.record`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet.device.images import ImageStream
from edgeresnet.errors import DataError

ProgressFn = Callable[[int, int], None]


def train_stream(data, model, n_outputs: int):
    """--train as an ImageStream of model inputs: a stream is checked without decoding; arrays are wrapped.

    ``data`` is a labelled :class:`~edgeresnet.device.images.ImageStream` (with its preset) or an ``(x, y)``
    pair (checked by :func:`check_data`); None stays None. ``n_outputs`` is the model's class count.
    """
    if data is None:
        return None
    if not isinstance(data, ImageStream):
        return ImageStream.from_arrays(*check_data("--train", data, model, n_outputs))
    want = tuple(model.input_shape[1:])
    if any(w is not None and w != g for w, g in zip(want, data.shape)):
        raise DataError(f"--train images have shape {data.shape} but the model expects {want}")
    if len(data) == 0:
        raise DataError("--train holds no images; give a folder with images in class sub-folders")
    if not data.labelled:
        raise DataError("--train has no labels; give one sub-folder per class")
    if data.labels.min() < 0 or data.labels.max() >= n_outputs:
        raise DataError(
            f"--train has class labels {int(data.labels.min())}..{int(data.labels.max())} but the model has "
            f"{n_outputs} outputs; give one class sub-folder per model output"
        )
    return data


def check_data(name: str, data, model, n_outputs: int):
    """``data`` as ``(x float32, y int64)`` that fit ``model``, or :class:`DataError` naming ``name``; None stays None."""
    if data is None:
        return None
    try:
        x, y = data
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a pair (images, labels), got {type(data).__name__}") from None
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    want = tuple(model.input_shape[1:])
    if x.ndim != len(want) + 1:
        raise DataError(f"{name} must be a batch of inputs shaped {want} (N, *shape), got shape {x.shape}")
    if len(x) == 0:
        raise DataError(f"{name} holds no images; give a folder with images in class sub-folders")
    if y.shape != (len(x),):
        raise DataError(f"{name} has {len(x)} images but labels of shape {y.shape}; give one integer label per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name} labels must be integer class indices, got {y.dtype}")
    if any(w is not None and w != g for w, g in zip(want, x.shape[1:])):
        raise DataError(f"{name} images have shape {x.shape[1:]} but the model expects {want}")
    if y.min() < 0 or y.max() >= n_outputs:
        raise DataError(
            f"{name} has class labels {int(y.min())}..{int(y.max())} but the model has {n_outputs} outputs; "
            "give one class sub-folder per model output"
        )
    if not np.all(np.isfinite(x)):
        raise DataError(f"{name} images contain NaN or infinite values")
    return x, y.astype(np.int64)


def outputs_are_probabilities(model, x: np.ndarray) -> bool:
    """Whether ``model`` ends in a softmax: its outputs on (up to 32 of) ``x`` lie in [0, 1] and sum to 1."""
    p = np.asarray(model(x[:32], training=False))
    return bool(np.all(p >= -1e-6) and np.all(p <= 1 + 1e-6) and np.allclose(p.sum(axis=-1), 1.0, atol=1e-3))

def uses_logits(model, train) -> bool:
    """Whether the loss takes logits: not when ``model`` already gives probabilities on the first images of
    ``train`` (a labelled ImageStream)."""
    return not outputs_are_probabilities(model, train.inputs(range(min(32, len(train)))))


def compile_classifier(model, learning_rate, from_logits: bool = False) -> None:
    """Compile ``model`` as edgeresnet fine-tunes every classifier: Adam at ``learning_rate`` (a rate or a
    tf_keras schedule), sparse categorical cross-entropy, accuracy."""
    keras = _tf.tf_keras()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )


def fit_history(model, data, epochs: int, callbacks: list, validation_data=None) -> dict:
    """``model.fit`` on ``data`` (a :class:`~edgeresnet.host.training.data.TrainData`, which re-raises the
    edgeresnet error that stopped its stream), silent; Keras's per-epoch history as lists of floats."""
    fit = data.fit(model, epochs=epochs, validation_data=validation_data, callbacks=callbacks, verbose=0)
    return {k: [float(v) for v in vals] for k, vals in fit.history.items()}


def progress_callback(keras, progress: ProgressFn, total: int):
    """A ``fit`` callback calling ``progress(done, total)`` at the start and after every training batch."""
    class _Progress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.done = 0

        def on_train_begin(self, logs=None):
            progress(0, total)

        def on_train_batch_end(self, batch, logs=None):
            self.done += 1
            progress(min(self.done, total), total)

    return _Progress()
