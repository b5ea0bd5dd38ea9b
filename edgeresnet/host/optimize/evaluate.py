"""Build one candidate for real and score it: prune and fine-tune, convert to int8, run it, measure it.

:class:`SearchData` is what every candidate shares (the float model, its preset, the --train stream, the
calibration samples, the --eval stream and the float model's score on it); :func:`evaluate` makes the
candidate's .tflite and returns it with its record. Nothing here writes files: the search keeps state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from edgeresnet.errors import DataError
from edgeresnet.host.optimize.budgets import measure
from edgeresnet.host.optimize.candidates import Candidate
from edgeresnet.host.optimize.options import OptimizeOptions
from edgeresnet.host.optimize.precision import refines

HELD_OUT = 500  # --train images (not fine-tuned on before the profile) the layer sensitivities are measured on


@dataclass
class SearchData:
    loaded: object  # LoadedModel
    preset: object
    train: object  # labelled ImageStream of model inputs
    calib: np.ndarray
    eval: object  # ImageStream of model inputs
    labels: Optional[np.ndarray]
    float_top1: float  # top-1 (%), or 100 (agreement with itself) on unlabelled --eval
    float_pred: np.ndarray  # the float model's classes on --eval
    spec: object = None  # the built-in architecture MODEL names (ArchSpec), None for a model file
    sized: dict = field(default_factory=dict)  # input side -> this data at that side (the input family)


def load_search_data(opts: OptimizeOptions) -> SearchData:
    """The model and every image set a candidate needs; DataError when the folders do not fit the model."""
    from edgeresnet.device.presets import get_preset

    loaded, spec = load_search_model(opts)
    preset = get_preset(opts.preset)

    def check_train(train) -> None:
        if not train.labelled:
            raise DataError(f"--train {opts.train} has no class sub-folders; it needs one sub-folder per class")
        if len(train.class_names) != loaded.num_classes:
            raise DataError(
                f"--train has {len(train.class_names)} class folders but the model has {loaded.num_classes} outputs; "
                "use one sub-folder per model class (sorted names give the label order)"
            )

    train, calib, evals = image_sets(opts, loaded.input_shape, preset, check_train)
    labels = np.asarray(evals.labels) if evals.labelled else None
    if labels is not None and len(evals.class_names) != loaded.num_classes:
        raise DataError(f"--eval has {len(evals.class_names)} class folders but the model has {loaded.num_classes} outputs")
    model = loaded.model
    float_pred = np.argmax(evals.predict(lambda x: model.predict(x, batch_size=64, verbose=0)), axis=-1)
    top1 = 100.0 if labels is None else 100.0 * float(np.mean(float_pred == labels))
    return SearchData(loaded, preset, train, calib, evals, labels, top1, float_pred, spec)


def image_sets(opts: OptimizeOptions, shape: tuple, preset, check_train=None) -> tuple:
    """(--train stream, calibration samples, --eval stream) at input ``shape``, as the model takes them
    (``preset``); ``check_train(train)`` sees --train before the calibration images are read."""
    from edgeresnet.device.images import load_images, stream_images

    train = stream_images(opts.train, shape, seed=opts.seed, resize=opts.resize)
    if check_train is not None:
        check_train(train)
    calib = load_images(opts.calib or opts.train, shape, samples=opts.calib_samples, seed=opts.seed, resize=opts.resize)
    evals = stream_images(opts.eval, shape, samples=opts.eval_samples, seed=opts.seed, resize=opts.resize)
    return train.with_preset(preset), preset.apply(calib.images), evals.with_preset(preset)


def load_search_model(opts: OptimizeOptions) -> tuple:
    """(the model as a LoadedModel, its ArchSpec): a built-in architecture is built (--input-size) and filled
    from --weights by layer name; a file is loaded safely (spec None)."""
    from edgeresnet.host.models.loading import LoadedModel, load_model

    spec = opts.zoo
    if spec is None:
        return load_model(opts.model, trust_code=opts.trust_model_code), None
    from edgeresnet.host.models.zoo import build_zoo_model

    model = build_zoo_model(spec, opts.weights, None, opts.input_size, seed=opts.seed)
    return LoadedModel.from_keras(model, spec.name), spec


def held_out(data: SearchData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """HELD_OUT seeded --train images and labels for the layer profile (model inputs)."""
    rng = np.random.default_rng(seed + 1)
    idx = np.sort(rng.choice(len(data.train), size=min(HELD_OUT, len(data.train)), replace=False))
    return data.train.inputs(idx), np.asarray(data.train.labels)[idx]


_SESSION: dict = {}  # the last conversion: (model, method, io type, calibration) -> its ConversionResult


def convert_result(keras_model, opts: OptimizeOptions, calib: np.ndarray, method: Optional[str] = None):
    """``keras_model`` as the target's full-integer .tflite: the converter's result, with its int8 session.

    The last one is kept: the ranking of the int8 layers and every mixed candidate are built on the
    float model's one session (one calibration, the same ranges and weights) instead of converting again."""
    from edgeresnet.host.converter import ConversionSpec, convert
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.targets import get_target

    target = get_target(opts.target)
    spec = ConversionSpec("int8", target.io_type_for("int8", None), method or opts.int8_method)
    key = (id(keras_model), spec, calib.shape, hash(np.ascontiguousarray(calib).tobytes()))
    if _SESSION.get("key") != key or _SESSION.get("model") is not keras_model:
        _SESSION.clear()
        result = convert(LoadedModel.from_keras(keras_model, "candidate").tflite_converter, spec, calib)
        _SESSION.update(key=key, model=keras_model, result=result)
    return _SESSION["result"]


def convert_int8(keras_model, opts: OptimizeOptions, calib: np.ndarray, method: Optional[str] = None,
                 float_nodes: tuple = ()) -> bytes:
    """``keras_model`` as the target's int8 .tflite (``method``: default --int8-method); ``float_nodes`` (node
    names) kept in float with the same ranges and weights for the rest (``Int8Session.mixed``)."""
    result = convert_result(keras_model, opts, calib, method)
    return result.session.mixed(tuple(float_nodes)) if float_nodes else result.model


def score(model: bytes, data: SearchData) -> dict:
    """top-1 (or agreement with the float model) of ``model`` on --eval, run in the interpreter."""
    from edgeresnet.device.runtime import TFLiteModel

    tfl = TFLiteModel(model, label="candidate")
    pred = np.argmax(data.eval.predict(lambda x: tfl.predict(x, batch=len(x))), axis=-1)
    if data.labels is None:
        acc = 100.0 * float(np.mean(pred == data.float_pred))
        return {"agreement": round(acc, 3), "score": round(acc, 3), "drop": round(100.0 - acc, 3)}
    from edgeresnet.device.verify import paired_margin

    acc = 100.0 * float(np.mean(pred == data.labels))
    margin = paired_margin(data.float_pred == data.labels, pred == data.labels)
    return {"top1": round(acc, 3), "score": round(acc, 3), "drop": round(data.float_top1 - acc, 3),
            "drop_margin": round(margin, 3)}


def fine_tune(cand: Candidate, opts: OptimizeOptions, data: SearchData, progress=None):
    """The candidate's pruned (or clustered, or resized), fine-tuned tf_keras model (the float model for the plain
    int8 one)."""
    if cand.input_size and not cand.level:  # (a pruned one is fine-tuned at its size by the pruning below)
        from edgeresnet.host.optimize.inputs import fine_tune_at_size

        return fine_tune_at_size(opts, data, progress), None
    if cand.clusters:
        return _clustered(cand, opts, data, progress), None
    if not cand.layer_sparsity:
        return data.loaded.model, None
    from edgeresnet.host.training.prune import DEFAULT_LEARNING_RATE, PruneConfig, prune_model

    config = PruneConfig(
        sparsity=min(max(cand.level, 0.01), 0.99), layer_sparsity=cand.layer_sparsity, epochs=opts.epochs,
        batch_size=opts.batch_size, learning_rate=opts.learning_rate or DEFAULT_LEARNING_RATE, seed=opts.seed,
        strategy=opts.strategy,
    )
    result = prune_model(data.loaded, config, train=data.train, progress=progress)
    return result.model, result


def _clustered(cand: Candidate, opts: OptimizeOptions, data: SearchData, progress=None):
    """Pruned in one shot to the candidate's sparsity, clustered, then fine-tuned keeping zeros and clusters."""
    from edgeresnet.host.optimize.candidates import one_shot
    from edgeresnet.host.training.clustering import ClusterConfig, cluster_model
    from edgeresnet.host.training.prune import DEFAULT_LEARNING_RATE

    config = ClusterConfig(cand.clusters, epochs=opts.epochs, batch_size=opts.batch_size,
                           learning_rate=opts.learning_rate or DEFAULT_LEARNING_RATE, seed=opts.seed,
                           strategy=opts.strategy, layers=cand.clustered)
    model, _ = cluster_model(one_shot(data.loaded.model, dict(cand.layer_sparsity)), config, data.train, progress)
    return model


def _quantization_aware(cand: Candidate, model, opts: OptimizeOptions, data: SearchData, progress=None) -> tuple:
    """``model`` (the candidate's fine-tuned float model) after --epochs of QAT that keeps its zeros and clusters;
    (the QAT model, tfmot's scheme name)."""
    from edgeresnet.host.training.qat import QATConfig, quantize_aware_train

    config = QATConfig(epochs=opts.epochs, batch_size=opts.batch_size, learning_rate=opts.learning_rate,
                       seed=opts.seed, strategy=opts.strategy)
    pruned = any(s > 0 for _, s in cand.layer_sparsity)
    result = quantize_aware_train(model, config, data.train, preserve_sparsity=pruned,
                                  clustered=tuple(cand.clustered) if cand.clusters else (), progress=progress)
    return result.model, result.scheme


def fine_tuned(cand: Candidate) -> bool:
    """Is ``cand`` fine-tuned on --train (every family but the plain int8 model and its mixed-precision copies)?"""
    return cand.family not in ("int8", "mixed")


def trained(cand: Candidate, opts: OptimizeOptions, data: SearchData, progress=None, kept: Optional[Path] = None) -> tuple:
    """(the search data at the candidate's input size, its float model ready for int8, its PruneResult or None,
    the QAT scheme or None): every fine-tuning the candidate needs, the same on every worker of a cluster.
    ``kept``: the search state's folder, where a mixed candidate's base has its weights."""
    if cand.input_size:  # the model rebuilt at that side with the same weights, the images resized to it
        from edgeresnet.host.optimize.inputs import at_size

        data = at_size(data, cand.input_size, opts)
    if cand.base is not None:  # mixed on top of a fine-tuned candidate: its kept weights, nothing trained again
        return data, base_model(cand.base, data, kept), None, None
    model, pruned = fine_tune(cand, opts, data, progress)
    qat = None
    if opts.qat and fine_tuned(cand):
        model, qat = _quantization_aware(cand, model, opts, data, progress)
    return data, model, pruned, qat


_BASE: dict = {}  # the last base model loaded: its ranking and its mixed candidates share one int8 session


def base_model(base: Candidate, data: SearchData, kept: Optional[Path]):
    """The fine-tuned float model of ``base`` (``data`` at its input size), from the weights kept in ``kept``; the
    same object again for the same base, so :func:`convert_result` converts it once."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.optimize.state import load_weights

    key = (str(kept), base.key, id(data))
    if _BASE.get("key") != key:
        weights = None if kept is None else load_weights(kept, base.key)
        if weights is None:
            raise DataError(f"the search state lost the weights of {base.label}; start the search again with --overwrite")
        model = _tf.tf_keras().models.clone_model(data.loaded.model)
        model.set_weights(weights)
        _BASE.clear()
        _BASE.update(key=key, model=model)
    return _BASE["model"]


def evaluate(cand: Candidate, opts: OptimizeOptions, data: SearchData, progress=None,
             kept: Optional[Path] = None) -> tuple[bytes, dict]:
    """(the candidate's .tflite, its record: settings, measured quantities, score, seconds). ``kept``: the search
    state's folder; a fine-tuned candidate's weights are kept there when the mixed family may build on them."""
    from edgeresnet.host.training.record import weights_sha256

    started = time.perf_counter()
    data, model, pruned, qat = trained(cand, opts, data, progress, kept)
    if kept is not None and fine_tuned(cand) and refines(opts):
        from edgeresnet.host.optimize.state import save_weights

        save_weights(kept, cand.key, model)
    tuned = time.perf_counter()
    tflite = convert_int8(model, opts, data.calib, method="qat" if qat else None, float_nodes=cand.float_nodes)
    record = {
        "key": cand.key, "label": cand.label, "settings": cand.to_dict(),
        "measured": measure(tflite, opts.budgets, opts.threads, opts.bench_repeats),
        **score(tflite, data), "input_shape": list(data.loaded.input_shape),
        "keras_sparsity": None if pruned is None else round(pruned.keras_sparsity, 4),
        "fine_tuned_epochs": opts.epochs * (2 if qat else 1) if fine_tuned(cand) else 0,
        "qat": qat, "weights_sha256": weights_sha256(model) if fine_tuned(cand) else None,
        "seconds": {"fine_tune": round(tuned - started, 1), "total": round(time.perf_counter() - started, 1)},
    }
    if opts.target_name == "edgetpu":
        from edgeresnet.host.optimize.precision import edgetpu_memory

        record["edgetpu_memory"] = edgetpu_memory(tflite)
    return tflite, record
