"""Quantization-aware fine-tuning (QAT) with tensorflow-model-optimization, and its int8 conversion.

What tfmot does with a Conv-BN-ReLU ResNet (checked on the zoo ResNets and
the MLPerf Tiny ResNet-8 with tfmot 0.8.1): ``quantize_model`` does *not*
fold BatchNormalization into the convolution while training. Its
Default8Bit transforms match ``Conv2D -> BatchNormalization -> ReLU`` (and
``Conv2D -> BatchNormalization`` before an ``Add``) and only move the fake
quantization: the convolution's kernel is fake-quantized per output channel
(symmetric, narrow range), nothing is quantized between the convolution, the
BatchNormalization and the ReLU, and the block's output (after the ReLU, or
after the BatchNormalization when an ``Add`` follows) gets an int8 range
(set by :func:`_set_ranges` before and after training). The TFLite converter then folds BatchNormalization into the
convolution. Folding multiplies each output channel by one number, and
symmetric per-channel quantization commutes with that, so the folded int8
weights are the trained ones up to float rounding. BatchNormalization keeps
training (batch statistics) during fine-tuning, as tfmot expects; on the
ResNet-8 this was 1.7 points better than freezing it.

With ``preserve_sparsity`` (a pruned model) the scheme is
``tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme``: the
zero weights stay zero through fine-tuning, so the emitted .tflite keeps
the pruned sparsity.

Conversion (:func:`convert_qat`) gives the same kind of model post-training
quantization gives: TFLITE_BUILTINS_INT8 only, int8 per-channel weights,
int8 activations, the io type asked for. Every activation range is the
QAT model's own; the converter still insists on a representative dataset for
full-integer io, but its values do not change the result (checked: output
identical with unrelated data), so a few calibration samples are passed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet._util.validate import learning_rate, whole_number
from edgeresnet.errors import ConfigError, QATError
from edgeresnet.host.training.data import mean_across_workers, statistics_batches, training_data
from edgeresnet.host.training.fit import (
    ProgressFn,
    compile_classifier,
    fit_history,
    progress_callback,
    train_stream,
    uses_logits,
)
from edgeresnet.host.training.record import TrainedRun

# Measured on the pretrained MLPerf Tiny ResNet-8, cifar10/train (5,000 JPEGs),
# 2 shared cores (benchmarks/qat.py): 3 epochs of Adam at 1e-4 take ~20 s; 3e-4
# ended 2 points lower (QAT fine-tunes an already trained model: small steps).
# The learning rate decays to 0 along a cosine over all steps: with a constant
# rate QAT int8 ended 0.5 points below the float model fine-tuned the same way
# (mean of 3 seeds), with the cosine 0.1 above it (with the final ranges below).
DEFAULT_EPOCHS = 3
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-4
# After pruning (PQAT) the default is pruning's own rate: the 75 %-sparse ResNet-8 is far from converged, and
# 3e-4 ended 1.2 points above 1e-4 (2 seeds, 3 epochs, cosine).
PRUNED_LEARNING_RATE = 3e-4
SCHEDULES = ("cosine", "constant")
DEFAULT_SCHEDULE = "cosine"
# Samples handed to the converter's representative dataset (see module docstring).
REPRESENTATIVE_SAMPLES = 4
# Training batches whose activation ranges initialise the fake-quantization ranges.
RANGE_INIT_BATCHES = 16
_RANGE_VARS = {"output": "out", "post_activation": "out", "pre_activation": "pre"}

KERAS3_HINT = (
    "quantization-aware training needs a tf_keras (Keras 2) model because tensorflow-model-optimization only "
    "wraps tf_keras layers; rebuild the architecture with tf_keras (pip install tf-keras; import tf_keras as "
    "keras), copy the weights layer by layer and save it with model.save('model.h5'), or drop --qat"
)


@dataclass(frozen=True)
class QATConfig:
    """How to fine-tune with fake quantization; validated on construction."""

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: Optional[float] = None  # None: DEFAULT_LEARNING_RATE, or PRUNED_LEARNING_RATE for a pruned model
    seed: int = 0
    strategy: str = "auto"  # the tf.distribute strategy it trains under (edgeresnet.host.training.cluster), as pruning
    schedule: str = DEFAULT_SCHEDULE  # learning rate: "cosine" (decays to 0 over all steps) or "constant"

    def __post_init__(self):
        from edgeresnet.host.training.cluster import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown --strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        object.__setattr__(self, "epochs", whole_number("--epochs (quantization-aware training)", self.epochs, 1))
        object.__setattr__(self, "batch_size", whole_number("--batch-size", self.batch_size, 1))
        if self.learning_rate is not None:
            object.__setattr__(self, "learning_rate", learning_rate(self.learning_rate))
        object.__setattr__(self, "seed", whole_number("seed", self.seed, 0))
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown learning-rate schedule {self.schedule!r} for quantization-aware training; "
                f"choose one of {', '.join(SCHEDULES)}"
            )

    def for_model(self, pruned: bool) -> "QATConfig":
        """This config with its learning rate decided: the one given, else the default for a pruned or dense model."""
        if self.learning_rate is not None:
            return self
        return replace(self, learning_rate=PRUNED_LEARNING_RATE if pruned else DEFAULT_LEARNING_RATE)

    def learning_rate_for(self, steps: int):
        """What the optimizer takes: the rate, or a tf_keras schedule decaying it over ``steps``."""
        lr = DEFAULT_LEARNING_RATE if self.learning_rate is None else self.learning_rate
        if self.schedule == "constant":
            return lr
        return _tf.tf_keras().optimizers.schedules.CosineDecay(lr, max(1, int(steps)))

    def to_dict(self) -> dict:
        return asdict(self)


# The report's name for each scheme: sparsity-, cluster- or both-preserving QAT (tfmot's PQAT, CQAT, PCQAT).
_METHODS = {"prune_preserve_8bit": "pqat", "cluster_preserve_8bit": "cqat", "prune_cluster_preserve_8bit": "pcqat"}


@dataclass(frozen=True)
class QATResult(TrainedRun):
    """The fine-tuned quantization-aware tf_keras model and how it was made."""

    model: Any  # tf_keras Model with tfmot quantize wrappers (fake quantization)
    config: QATConfig
    scheme: str  # "default_8bit", "prune_preserve_8bit", "cluster_preserve_8bit" or "prune_cluster_preserve_8bit"
    train_samples: int
    steps: int
    train_seconds: float
    strategy: str
    replicas: int
    history: dict = field(default_factory=dict)
    range_init_batches: int = 0  # batches whose float activations set the fake-quant ranges (before and after)
    shard: Optional[dict] = None  # in a cluster: this worker's share of the training files

    def to_dict(self) -> dict:
        return {
            "method": _METHODS.get(self.scheme, "qat"),
            "scheme": self.scheme,
            "epochs": self.config.epochs,
            "batch_size": self.config.batch_size,
            "learning_rate": self.config.learning_rate,
            "schedule": self.config.schedule,
            "optimizer": "adam",
            "train_samples": self.train_samples,
            **self.run_record(),
            "range_init_batches": self.range_init_batches,
            "activation_ranges": "mse",  # before training from the float model, after it from the trained weights
            "history": {k: [round(float(v), 6) for v in vals] for k, vals in self.history.items()},
        }


def _keras_model(model_or_loaded):
    """The tf_keras Model inside a LoadedModel (or the model itself), or QATError."""
    keras = _tf.tf_keras()
    label = getattr(model_or_loaded, "name", None) or "the model"
    flavor = getattr(model_or_loaded, "flavor", None)
    model = model_or_loaded.model if flavor is not None and hasattr(model_or_loaded, "model") else model_or_loaded
    if flavor == "keras3" or type(model).__module__.split(".")[0] == "keras":
        raise QATError(f"{label} is a Keras 3 model; {KERAS3_HINT}")
    if flavor == "saved_model" or not isinstance(model, keras.Model):
        raise QATError(
            f"{label} has no tf_keras layers to fine-tune ({type(model).__name__}); pass the tf_keras model "
            "(.h5, or .keras saved by tf_keras) or drop --qat"
        )
    if not (getattr(model, "_is_graph_network", False) or isinstance(model, keras.Sequential)):
        raise QATError(
            f"{model.name} is a subclassed tf_keras model; tfmot quantizes functional or Sequential models only: "
            "rebuild it with the functional API or drop --qat"
        )
    return model


def unsupported_layers(model) -> list:
    """``name (Class)`` of every layer tfmot's default 8-bit scheme cannot quantize."""
    keras = _tf.tf_keras()
    mot = _tf.tfmot()
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry_mod,
    )

    registry = registry_mod.Default8BitQuantizeRegistry()
    foldable = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    bad = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or isinstance(layer, mot.quantization.keras.QuantizeWrapperV2):
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            # tfmot quantizes BatchNormalization only right after a linear Conv2D/DepthwiseConv2D/Dense
            # (its Conv-BN(-ReLU) transforms); a free-standing one (e.g. pre-activation ResNets) is refused.
            inbound = [n.inbound_layers for n in layer._inbound_nodes]
            prev = inbound[0] if len(inbound) == 1 and not isinstance(inbound[0], list) else None
            if isinstance(prev, foldable) and prev.get_config().get("activation") == "linear":
                continue
            bad.append(f"{layer.name} (BatchNormalization not directly after a linear convolution)")
            continue
        # Lambda layers are skipped (left float) by tfmot with only a warning; nested models are refused.
        if isinstance(layer, (keras.layers.Lambda, keras.Model)) or not registry.supports(layer):
            bad.append(f"{layer.name} ({type(layer).__name__})")
    return bad


def check_quantizable(model_or_loaded, dry_run: bool = True) -> None:
    """Raise QATError (one line, naming the layers) unless tfmot can quantize every layer.

    Cheap (no training): a layer scan, then (``dry_run``) tfmot's own wrapping of a copy.
    """
    model = _keras_model(model_or_loaded)
    bad = unsupported_layers(model)
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise QATError(
            f"tensorflow-model-optimization cannot quantize {len(bad)} layer(s) of {model.name}: {shown}; "
            "replace them with built-in Keras layers (Conv2D, Dense, BatchNormalization, ReLU, Add, pooling) "
            "or drop --qat and use post-training int8"
        )
    out = model.output_shape
    if isinstance(out, list) or len(out) != 2:
        raise QATError(f"{model.name} has output shape {out}; --qat fine-tunes single-output classifiers")
    if dry_run:
        _quantize(model, preserve_sparsity=False)  # a dry run on a copy catches what the scan above does not


def _quantize(model, preserve_sparsity: bool):
    """tfmot's quantization-aware copy of ``model`` (not trained), or QATError naming the cause."""
    from edgeresnet.host.quantize.engine import one_line

    keras, mot = _tf.tf_keras(), _tf.tfmot()
    qk = mot.quantization.keras
    work = keras.models.clone_model(model)
    work.set_weights(model.get_weights())
    try:
        if preserve_sparsity:
            scheme = mot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            return qk.quantize_apply(qk.quantize_annotate_model(work), scheme)
        return qk.quantize_model(work)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise QATError(
            f"tensorflow-model-optimization cannot quantize {model.name}: {one_line(exc)}; drop --qat"
        ) from None


def quantize_aware_train(
    model,
    config: QATConfig,
    train: tuple,
    preserve_sparsity: bool = False,
    progress: Optional[ProgressFn] = None,
    clustered: tuple = (),
) -> QATResult:
    """Fine-tune ``model`` (tf_keras Model or LoadedModel) with fake quantization; the input is not modified.

    ``clustered``: names of layers whose kernels are clustered (``--cluster``): after every training step
    each of their clusters is set back to its mean (cluster-preserving QAT), so the int8 model keeps at
    most as many values per output channel as the float one had clusters.

    ``train`` is ``(x, y)`` (preprocessed float32 NHWC images exactly as the
    model takes them, integer class labels) or a labelled
    :class:`~edgeresnet.device.images.ImageStream`, read in batches as pruning
    does. Runs under ``config.strategy`` as pruning does: in a cluster every
    worker trains on its own share of the files. The activation ranges are
    set from the float model before training and measured again on the
    trained weights after it (see :func:`_set_ranges`).
    """
    from edgeresnet.host.training.cluster import make_strategy

    if not isinstance(config, QATConfig):
        raise ConfigError(f"config must be a QATConfig, got {type(config).__name__}")
    config = config.for_model(pruned=preserve_sparsity)
    source = _keras_model(model)
    check_quantizable(source, dry_run=False)  # the real wrapping below is the dry run
    train = _train_data(train, source)
    tf, keras, mot = _tf.tf(), _tf.tf_keras(), _tf.tfmot()
    strategy = make_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    data = training_data(tf, strategy, train, config.batch_size, config.seed)
    with strategy.scope():
        qmodel = _quantize(source, preserve_sparsity)
        range_batches = _set_ranges(qmodel, source, train, config.batch_size, config.seed, data, strategy)
        steps, seconds, history = _fit(qmodel, source, config, train, data, progress,
                                       _keep_clusters(keras, qmodel, source, clustered))
    # A plain copy (no strategy-mirrored variables) for the converter.
    with mot.quantization.keras.quantize_scope():
        final = keras.models.clone_model(qmodel)
    final.set_weights(qmodel.get_weights())
    _set_ranges(final, _float_twin(final, source), train, config.batch_size, config.seed, data, strategy,
                epoch=config.epochs)
    return QATResult(
        model=final,
        config=config,
        scheme=_scheme(preserve_sparsity, bool(clustered)),
        train_samples=len(train),
        steps=steps,
        train_seconds=seconds,
        strategy=type(strategy).__name__,
        replicas=int(strategy.num_replicas_in_sync),
        history=history,
        range_init_batches=range_batches,
        shard=data.shard(),
    )


def _keep_clusters(keras, qmodel, source, clustered: tuple) -> list:
    """The callback that keeps ``clustered`` layers' clusters (read off ``source``) in ``qmodel``, or none."""
    if not clustered:
        return []
    from edgeresnet.host.training.clustering import clusters_of, keep_clusters, kernels_of

    return [keep_clusters(keras, kernels_of(qmodel, clustered), clusters_of(source, clustered))]


def _scheme(preserve_sparsity: bool, preserve_clusters: bool) -> str:
    """tfmot's name for what the QAT kept: default_8bit, prune_preserve_8bit, cluster_/prune_cluster_preserve_8bit."""
    if not (preserve_sparsity or preserve_clusters):
        return "default_8bit"
    return ("prune_" if preserve_sparsity else "") + ("cluster_" if preserve_clusters else "") + "preserve_8bit"


def quantize_aware_train_in_child(model, config: QATConfig, train, preserve_sparsity: bool = False,
                                  progress: Optional[ProgressFn] = None, clustered: tuple = ()) -> QATResult:
    """:func:`quantize_aware_train` run in a fresh process (see :mod:`edgeresnet.host.training.child`): the
    same result, without the training step's memory pool left in this one."""
    from edgeresnet.host.training.child import train_in_child

    source = _keras_model(model)
    result, weights = train_in_child(quantize_aware_train, source, config, train, preserve_sparsity,
                                     what="quantization-aware fine-tuning", progress=progress,
                                     clustered=tuple(clustered))
    keras, mot = _tf.tf_keras(), _tf.tfmot()
    with mot.quantization.keras.quantize_scope():  # the same wrapped model the child trained, then its weights
        final = keras.models.clone_model(_quantize(source, preserve_sparsity))
    final.set_weights(weights)
    return replace(result, model=final)


def float_fine_tune(model, config: QATConfig, train: tuple):
    """``model`` fine-tuned with the QAT recipe but no fake quantization: the fair float reference.

    Same optimizer, learning-rate schedule, epochs, batch size, seeded batch
    order and seed as :func:`quantize_aware_train` (on one machine); returns a
    new tf_keras model (the input is not modified). Used by
    ``benchmarks/qat.py`` to tell what quantization costs apart from what
    fine-tuning gains.
    """
    if not isinstance(config, QATConfig):
        raise ConfigError(f"config must be a QATConfig, got {type(config).__name__}")
    config = config.for_model(pruned=False)
    source = _keras_model(model)
    train = _train_data(train, source)
    tf, keras = _tf.tf(), _tf.tf_keras()
    keras.utils.set_random_seed(config.seed)
    data = training_data(tf, tf.distribute.get_strategy(), train, config.batch_size, config.seed)
    work = keras.models.clone_model(source)
    work.set_weights(source.get_weights())
    _fit(work, source, config, train, data, None)
    return work


def _train_data(train, source):
    if train is None:
        raise ConfigError("quantization-aware training needs labelled training images; pass --train DIR")
    return train_stream(train, source, int(source.output_shape[-1]))


def _fit(model, source, config: QATConfig, train, data, progress, callbacks=()) -> tuple:
    """Compile and fit ``model`` with ``config``'s recipe on ``data``; (steps, seconds, Keras history)."""
    keras = _tf.tf_keras()
    steps = data.steps_per_epoch * config.epochs
    compile_classifier(model, config.learning_rate_for(steps), from_logits=uses_logits(source, train))
    callbacks = list(callbacks) + ([] if progress is None else [progress_callback(keras, progress, steps)])
    started = time.perf_counter()
    history = fit_history(model, data, config.epochs, callbacks)
    return steps, time.perf_counter() - started, history


def _float_twin(qmodel, source):
    """A float copy of ``source`` holding the (trained) weights of its quantization-aware model ``qmodel``."""
    keras = _tf.tf_keras()
    twin = keras.models.clone_model(source)
    trained = {v.name: v for v in qmodel.weights}
    # A wrapped layer's weights are named after the layer ("conv/kernel:0"), or after its wrapper in a clone
    # of the quantization-aware model ("quant_conv/kernel:0").
    found = [trained.get(v.name, trained.get("quant_" + v.name)) for v in twin.weights]
    missing = [v.name for v, t in zip(twin.weights, found) if t is None]
    if missing:
        raise QATError(f"the quantization-aware model of {source.name} has no weight {missing[0]}; drop --qat")
    twin.set_weights([t.numpy() for t in found])
    return twin


def _range_variables(qmodel) -> list:
    """(variable, "out"/"pre", is_min, float layer name) for every activation range tfmot keeps in ``qmodel``."""
    mot = _tf.tfmot()
    wanted = []
    for wrapper in qmodel.layers:
        if not isinstance(wrapper, mot.quantization.keras.QuantizeWrapperV2):
            continue
        for var in wrapper.non_trainable_weights:
            short = var.name.split("/")[-1].split(":")[0]
            kind = _RANGE_VARS.get(short.rsplit("_", 1)[0])
            if kind is not None and var.shape.rank == 0:
                wanted.append((var, kind, short.endswith("_min"), wrapper.layer.name))
    return wanted


def _set_ranges(qmodel, source, train, batch_size: int, seed: int, data=None, strategy=None, epoch: int = 0) -> int:
    """Set every activation range of ``qmodel`` from the float tensors of ``source``; returns batches used.

    tfmot learns activation ranges as a moving average (decay 0.999) of each
    training batch's min and max, starting from [-6, 6]. A fine-tune of a few
    hundred steps leaves them mostly where they started. So before training
    each range is set from the float model, and after training measured again
    on the trained weights (``source`` is then the float twin of ``qmodel``).
    Each range is the one edgeresnet's post-training ``mse`` method picks: the
    range minimising int8 rounding plus clipping error over a histogram of the
    tensor on up to RANGE_INIT_BATCHES training batches (zero included). On
    the ResNet-8 (3 seeds, cosine schedule) this after-training pass added
    0.2 points of int8 top-1 over the moving averages (0.6 when the start was
    the mean batch min/max). In a cluster each worker measures its
    own files and the workers average their ranges. Weights are not touched.
    """
    from edgeresnet.host.quantize.config import QuantOptConfig
    from edgeresnet.host.quantize.mse import mse_range
    from edgeresnet.host.quantize.stats import Histogram

    keras = _tf.tf_keras()
    wanted = _range_variables(qmodel)
    names = sorted({(kind, name) for _, kind, _, name in wanted})
    if not names:
        return 0
    # The float tensors: a layer's output, or (pre-activation) what it computes before its activation.
    probe = keras.Model(source.inputs, [source.get_layer(n).output if k == "out" else source.get_layer(n).input
                                        for k, n in names])
    chunks = statistics_batches(data, len(train), batch_size, seed, RANGE_INIT_BATCHES, epoch=epoch)
    bins = QuantOptConfig().bins  # the histogram of post-training ``mse``
    hists = {key: Histogram(bins, 0.0, 0.0) for key in names}
    batches = 0
    for chunk in chunks:
        outs = probe(train.inputs(chunk), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for (kind, name), value in zip(names, outs):
            if kind == "pre":
                layer = source.get_layer(name)
                activation, layer.activation = layer.activation, keras.activations.linear
                try:
                    value = layer(value, training=False)
                finally:
                    layer.activation = activation
            hists[(kind, name)].add(np.asarray(value))
        batches += 1
    ranges = {key: mse_range(hists[key]) for key in names}
    if data is not None and data.workers > 1:  # the mean over every worker's ranges (the same batch count on each)
        shared = mean_across_workers(_tf.tf(), strategy, [np.array([ranges[key] for key in names], np.float64)])[0]
        ranges = {key: (float(lo), float(hi)) for key, (lo, hi) in zip(names, shared)}
    for var, kind, is_min, name in wanted:
        lo, hi = ranges[(kind, name)]
        var.assign(min(lo, 0.0) if is_min else max(hi, 0.0))
    return batches


def convert_qat(make_converter: Callable[[], object], io_type: str, samples: Optional[np.ndarray]) -> bytes:
    """The full-integer int8 .tflite of a quantization-aware model (ranges from training).

    ``make_converter`` returns a fresh ``tf.lite.TFLiteConverter`` for the QAT
    model; ``samples`` are a few preprocessed inputs the converter's API
    requires for integer io (their values do not change the result).
    """
    from edgeresnet.host.quantize.engine import IO_TYPES, check_full_integer, configure_int8, run_converter

    if io_type not in IO_TYPES:
        raise ConfigError(f"io type {io_type!r} is not possible for full-integer int8; choose one of {', '.join(IO_TYPES)}")
    if samples is None or len(samples) == 0:
        raise ConfigError("int8 conversion of the QAT model needs a few input samples; pass --calib with images")
    converter = make_converter()
    # The same converter settings as post-training int8 (TFLITE_BUILTINS_INT8 only, the io type asked for).
    configure_int8(converter, np.asarray(samples[:REPRESENTATIVE_SAMPLES], dtype=np.float32), io_type, lambda: None)
    data = run_converter(converter, "int8 conversion of the quantization-aware model")
    check_full_integer(data, io_type)
    return data
