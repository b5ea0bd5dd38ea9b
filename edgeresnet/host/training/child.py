"""Fine-tuning in a child process.

TensorFlow's oneDNN CPU allocator keeps the largest training step's memory as a
pool it never returns (about 1.3 GB for ResNet-18 at 224x224, batch 32), so a
convert that fine-tunes would carry it through conversion and evaluation.
Fine-tuned in a child process, the pool dies with the child: the model goes
there as its architecture (JSON) and weights (:class:`ModelParcel`), and only
the trained weights and the run's record come back (:func:`train_in_child`).
"""

from __future__ import annotations


def portable(model) -> bool:
    """Can ``model`` be rebuilt in another process from its JSON and weights? Only from tf_keras built-in
    layers: a custom layer class exists only in this process, and a Lambda's function (with its closure and
    globals) does not survive serialization faithfully."""
    layers = getattr(model, "layers", None)
    if not layers or not (getattr(model, "_is_graph_network", False) or type(model).__name__ == "Sequential"):
        return False
    return all(type(layer).__module__.startswith("tf_keras.") and type(layer).__name__ != "Lambda" for layer in layers)


class ModelParcel:
    """A tf_keras model on its way to a child process, rebuilt there by :meth:`open`.

    It pickles as the model's architecture (JSON) and weights, copied at that
    moment: the parent keeps no second copy while the child trains, and the
    child lets go of the arrays once the rebuilt model's variables hold them.
    """

    def __init__(self, model):
        self._model, self._state = model, None

    def __getstate__(self):
        return {"architecture": self._model.to_json(), "weights": self._model.get_weights()}

    def __setstate__(self, state):
        self._model, self._state = None, state

    def open(self):
        """In the child: the model (once; the parcel is empty afterwards)."""
        from edgeresnet._util import tf as _tf

        state, self._state = self._state, None
        model = _tf.tf_keras().models.model_from_json(state["architecture"])
        model.set_weights(state["weights"])
        return model


def child_failure(failure, what: str):
    """An ``IsolatedFailure`` of a fine-tuning child as the one-line error a user can act on."""
    from edgeresnet.errors import EdgeResNetError

    hint = ("the system probably ran out of memory; lower --batch-size or free memory"
            if "SIGKILL" in failure.how else "run again; if it repeats, report it")
    return EdgeResNetError(f"the {what} process {failure.how}: {hint}")


def train_in_child(fn, model, *args, what: str, progress=None, **kwargs):
    """``fn(model, *args, progress=..., **kwargs)`` in a fresh process on a copy of ``model`` (a
    :func:`portable` tf_keras model); returns (fn's result, the trained weights).

    ``fn`` either returns a result whose ``model`` is the trained model (it comes back as None: the caller
    rebuilds it from the weights) or trains ``model`` in place. A child that dies without an answer is the
    one-line error of :func:`child_failure`, naming ``what``.
    """
    from edgeresnet._util.isolation import IsolatedFailure, run_in_child

    try:
        return run_in_child(_train_rebuilt, fn, ModelParcel(model), args, kwargs, progress=progress)
    except IsolatedFailure as failure:
        raise child_failure(failure, what) from None


def _train_rebuilt(fn, parcel: ModelParcel, args: tuple, kwargs: dict, progress=None):
    """In the child: ``fn`` on the rebuilt model; (its result without a model, the trained weights)."""
    from dataclasses import replace

    model = parcel.open()
    result = fn(model, *args, progress=progress, **kwargs)
    trained = getattr(result, "model", None)
    if trained is None:  # trained in place (e.g. transfer.fine_tune, which returns its report)
        return result, model.get_weights()
    return replace(result, model=None), trained.get_weights()
