"""Magnitude pruning of tf_keras models with tensorflow-model-optimization.

What gets pruned: ``Conv2D`` and ``Dense`` kernels. Two layers are found by
their place in the graph, not by name, and left at low or no sparsity by
default because they are small and sensitive: the *stem* (a Conv2D with no
other Conv2D/Dense layer between it and the input) and the *classifier* (a
Dense layer with no Conv2D/Dense layer after it). Depthwise and transposed
convolutions are never pruned.

With labelled training data the model is fine-tuned while sparsity ramps up
(``polynomial``, the default) or is held at the target from the first step
(``constant``). Without training data the target sparsity is applied in one
shot from the weight magnitudes, which costs accuracy; a warning says so.
Training runs under the strategy ``--strategy`` names (:mod:`edgeresnet.host.training.cluster`):
with two or more GPUs visible, a ``MirroredStrategy``; in a ``TF_CONFIG``
cluster, ``MultiWorkerMirroredStrategy`` with each worker reading only its own
share of the files (:mod:`edgeresnet.host.training.data`).

The result holds the *stripped* tf_keras model (no pruning wrappers), ready
for the TFLite converter, and a per-layer record of what was asked and what
was achieved. The int8 zeros that reach the .tflite file are counted by
:mod:`edgeresnet.device.sparsity`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet._util.validate import is_whole, learning_rate, whole_number
from edgeresnet.host.training.cluster import STRATEGIES, make_strategy
from edgeresnet.errors import ConfigError, DataError, PruningError
from edgeresnet.host.training.data import mean_across_workers, statistics_batches, training_data
from edgeresnet.host.training.fit import (
    ProgressFn,
    check_data,
    compile_classifier,
    fit_history,
    progress_callback,
    train_stream,
    uses_logits,
)
from edgeresnet.defaults import PRUNE_SCHEDULES as SCHEDULES
from edgeresnet.host.training.prune_plan import plan_layers
from edgeresnet.host.training.record import TrainedRun

STRUCTURES = ("unstructured", "block", "2:4")
POLICIES = ("xnnpack",)

# Defaults measured on the pretrained MLPerf Tiny ResNet-8, 5,000 CIFAR-10 training
# images, 2 shared CPU cores (benchmarks/prune_sweep.py): at sparsity 0.5, 3 epochs
# of Adam at 3e-4 take 20-30 s and end 3-4 points *above* the unpruned float model
# on cifar10/test (fine-tuning also adapts it to the JPEG images); 1 epoch ended
# 3 points below it. 1e-3 recovers more at 0.75-0.9 but spreads the surviving
# weights, which compresses slightly worse (zlib 0.748 vs 0.745 of unpruned).
DEFAULT_EPOCHS = 3
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 3e-4
DEFAULT_BLOCK_SIZE = (1, 4)
# Polynomial schedule: sparsity ramps up over this share of the training
# steps, the rest fine-tunes at the final sparsity.
RAMP_SHARE = 0.6
# At most this many mask updates while sparsity ramps up.
RAMP_UPDATES = 10
# XNNPACK runs a 1x1 convolution sparse only when >= 2/3 of its weights are zero.
XNNPACK_MIN_SPARSITY = 2.0 / 3.0

ONE_SHOT_WARNING = "no --train data: one-shot pruning without fine-tuning; expect an accuracy drop"
KERAS3_HINT = (
    "pruning needs a tf_keras (Keras 2) model because tensorflow-model-optimization only wraps "
    "tf_keras layers; rebuild the architecture with tf_keras (pip install tf-keras; import tf_keras "
    "as keras), copy the weights layer by layer (set_weights(get_weights())) or retrain, and save it "
    "with model.save('model.h5')"
)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how; every field is validated on construction.

    ``sparsity`` is the share of zero weights asked for in every pruned layer
    (0 < s < 1). ``stem_sparsity`` and ``classifier_sparsity`` apply to the
    first convolution and the last Dense layer instead (0 leaves them dense).
    ``epochs``, ``batch_size`` and ``learning_rate`` only matter when training
    data is given. ``policy="xnnpack"`` prunes only the 1x1 convolutions of
    models XNNPACK can run sparse, and refuses other models.
    """

    sparsity: float
    schedule: str = "polynomial"
    structure: str = "unstructured"
    block_size: Optional[tuple] = None
    stem_sparsity: float = 0.0
    classifier_sparsity: float = 0.0
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = DEFAULT_LEARNING_RATE
    policy: Optional[str] = None
    seed: int = 0
    strategy: str = "auto"  # the tf.distribute strategy fine-tuning runs under (edgeresnet.host.training.cluster)
    # Per-layer sparsity, ((layer name, sparsity), ...): overrides the role's sparsity for those layers (0 leaves
    # one dense). What `edgeresnet optimize` allocates; names must be Conv2D/Dense layers of the model.
    layer_sparsity: tuple = ()

    def __post_init__(self):
        s = self.sparsity
        if not _is_number(s) or not math.isfinite(float(s)) or not 0.0 < float(s) < 1.0:
            raise ConfigError(
                f"--prune must be a sparsity strictly between 0 and 1 (e.g. 0.5 for half the weights zero), got {s!r}"
            )
        object.__setattr__(self, "sparsity", float(s))
        for name in ("stem_sparsity", "classifier_sparsity"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(float(v)) or not 0.0 <= float(v) < 1.0:
                raise ConfigError(f"{name} must be at least 0 and below 1 (0 leaves the layer dense), got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown --strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown pruning schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.structure not in STRUCTURES:
            raise ConfigError(f"unknown pruning structure {self.structure!r}; choose one of {', '.join(STRUCTURES)}")
        self._check_structure()
        whole_number("--epochs", self.epochs, 0)
        whole_number("--batch-size", self.batch_size, 1)
        object.__setattr__(self, "learning_rate", learning_rate(self.learning_rate))
        if self.policy is not None:
            self._check_policy()
        if not is_whole(self.seed):
            raise ConfigError(f"seed must be a whole number, got {self.seed!r}")
        object.__setattr__(self, "layer_sparsity", _layer_sparsity(self.layer_sparsity))

    def _check_structure(self) -> None:
        """The block size fits the structure (and is normalised); 2:4 asks for exactly 50 %."""
        if self.structure == "block":
            bs = DEFAULT_BLOCK_SIZE if self.block_size is None else self.block_size
            try:
                bs = tuple(bs)
            except TypeError:
                bs = (bs,)
            if len(bs) != 2 or not all(is_whole(b) and b >= 1 for b in bs) or bs == (1, 1):
                raise ConfigError(
                    f"block size must be two positive integers other than (1, 1), e.g. (1, 4), got {self.block_size!r}"
                )
            object.__setattr__(self, "block_size", (int(bs[0]), int(bs[1])))
        elif self.block_size is not None:
            raise ConfigError(
                f"a block size ({self.block_size!r}) only applies to structure 'block', not {self.structure!r}"
            )
        if self.structure == "2:4":
            for name in ("sparsity", "stem_sparsity", "classifier_sparsity"):
                v = getattr(self, name)
                if name == "sparsity" and v != 0.5 or name != "sparsity" and v not in (0.0, 0.5):
                    raise ConfigError(
                        f"2:4 structure zeroes exactly 2 of every 4 weights (50 %), so {name} must be 0.5"
                        f"{'' if name == 'sparsity' else ' or 0'}, got {v}"
                    )

    def _check_policy(self) -> None:
        """A known policy, and (xnnpack) unstructured pruning at a sparsity XNNPACK runs sparse."""
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown pruning policy {self.policy!r}; choose one of {', '.join(POLICIES)} or none")
        if self.structure != "unstructured":
            raise ConfigError(
                f"the xnnpack policy prunes 1x1 convolutions element-wise; structure {self.structure!r} "
                "does not apply (tfmot's block and 2:4 masks are not what XNNPACK's sparse kernels use)"
            )
        if self.sparsity < XNNPACK_MIN_SPARSITY - 1e-9:
            raise ConfigError(
                f"XNNPACK runs 1x1 convolutions sparse only when at least 2/3 of their weights are zero; "
                f"--prune {self.sparsity} would make the model smaller but not faster: use --prune 0.7 or more, "
                "or drop the xnnpack policy"
            )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["block_size"] = list(self.block_size) if self.block_size is not None else None
        out["layer_sparsity"] = [list(pair) for pair in self.layer_sparsity]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PruneConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown pruning settings {unknown}; known ones are {sorted(known)}")
        values = dict(data)
        if values.get("block_size") is not None:
            values["block_size"] = tuple(values["block_size"])
        return cls(**values)


def _layer_sparsity(pairs) -> tuple:
    """``layer_sparsity`` checked and normalised: ((name, float), ...), each sparsity at least 0 and below 1."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    out = []
    try:
        for name, value in items:
            if not isinstance(name, str) or not _is_number(value) or not 0.0 <= float(value) < 1.0:
                raise ValueError
            out.append((name, float(value)))
    except (TypeError, ValueError):
        raise ConfigError(
            f"layer_sparsity must be (layer name, sparsity) pairs with 0 <= sparsity < 1, got {pairs!r}"
        ) from None
    if len({name for name, _ in out}) != len(out):
        raise ConfigError(f"layer_sparsity names a layer twice: {pairs!r}")
    return tuple(out)


@dataclass(frozen=True)
class LayerSparsity:
    """One Conv2D/Dense layer: what was asked and what its Keras kernel holds now."""

    name: str
    kind: str  # "conv" or "dense"
    role: str  # "stem", "classifier" or "body"
    target_sparsity: float
    achieved_sparsity: float
    weights: int
    structure: str  # "unstructured", "block 1x4", "2:4" or "dense"
    reason: Optional[str] = None  # why it was left dense (target 0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["achieved_sparsity"] = round(self.achieved_sparsity, 6)
        return out


@dataclass(frozen=True)
class PruneResult(TrainedRun):
    """The stripped model plus what the pruning did.

    ``history`` is Keras's per-epoch log (loss, accuracy, and val_* when
    validation data was given), measured during fine-tuning, i.e. before the
    BatchNorm statistics are re-estimated; ``val_accuracy`` is the top-1 (%) of
    the returned model on the validation data.
    """

    model: Any  # the stripped tf_keras Model
    config: PruneConfig
    layers: tuple
    fine_tuned: bool
    train_samples: int
    steps: int
    train_seconds: float
    strategy: str
    replicas: int
    warnings: tuple = ()
    history: dict = field(default_factory=dict)
    val_accuracy: Optional[float] = None  # top-1 (%) of the returned model on ``val``
    bn_recalibration_batches: int = 0
    shard: Optional[dict] = None  # in a cluster: this worker's share of the training files (train_data.TrainData)

    @property
    def pruned_layers(self) -> tuple:
        return tuple(layer for layer in self.layers if layer.target_sparsity > 0)

    @property
    def left_dense(self) -> tuple:
        return tuple(layer for layer in self.layers if layer.target_sparsity == 0)

    @property
    def keras_sparsity(self) -> float:
        """Zero share over all Conv2D/Dense kernels (pruned and dense ones)."""
        total = sum(layer.weights for layer in self.layers)
        zeros = sum(layer.achieved_sparsity * layer.weights for layer in self.layers)
        return zeros / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "sparsity": self.config.sparsity,
            "schedule": self.config.schedule if self.fine_tuned else "one-shot",
            "structure": self.config.structure,
            "policy": self.config.policy,
            "fine_tuned": self.fine_tuned,
            "train_samples": self.train_samples,
            "epochs": self.config.epochs if self.fine_tuned else 0,
            **self.run_record(),
            "keras_sparsity": round(self.keras_sparsity, 6),
            "val_accuracy": None if self.val_accuracy is None else round(self.val_accuracy, 3),
            "bn_recalibration_batches": self.bn_recalibration_batches,
            "left_dense": [{"name": layer.name, "reason": layer.reason} for layer in self.left_dense],
            "warnings": list(self.warnings),
            "config": self.config.to_dict(),
            "history": {k: [round(float(v), 6) for v in vals] for k, vals in self.history.items()},
            "layers": [layer.to_dict() for layer in self.layers],
        }


def validate_train_classes(num_classes_model: int, class_names: Sequence[str]) -> None:
    """Raise DataError unless the training folder has one class sub-folder per model output."""
    names = list(class_names)
    if len(names) != int(num_classes_model):
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise DataError(
            f"--train has {len(names)} class folders ({shown or 'none'}) but the model has {num_classes_model} "
            "outputs; give one sub-folder per output class, named so that their sorted order matches the "
            "model's class indices"
        )


# --------------------------------------------------------------------------- model checks


def _unwrap(model_or_loaded):
    """The tf_keras Model inside a LoadedModel (or the model itself), or PruningError."""
    flavor = getattr(model_or_loaded, "flavor", None)
    label = getattr(model_or_loaded, "name", None) or "the model"
    model = model_or_loaded
    if flavor is not None and hasattr(model_or_loaded, "model"):
        if flavor == "keras3":
            raise PruningError(f"{label} is a Keras 3 model; {KERAS3_HINT}")
        if flavor == "saved_model":
            raise PruningError(
                f"{label} is a TensorFlow SavedModel, which has no Keras layers to prune; "
                "pass the tf_keras model it was exported from (.h5 or .keras saved by tf_keras)"
            )
        model = model_or_loaded.model
    keras = _tf.tf_keras()
    if not isinstance(model, keras.Model):
        top = type(model).__module__.split(".")[0]
        if top == "keras":
            raise PruningError(f"{label} is a Keras 3 model; {KERAS3_HINT}")
        raise PruningError(f"cannot prune a {type(model).__name__}; pass a tf_keras Model (Keras 2)")
    if not (getattr(model, "_is_graph_network", False) or isinstance(model, keras.Sequential)):
        raise PruningError(
            f"{model.name} is a subclassed tf_keras model; pruning needs a functional or Sequential model "
            "(build it with keras.Input and layer calls)"
        )
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise PruningError(
            f"{model.name} contains nested models ({', '.join(nested)}); rebuild it as one flat functional "
            "model (e.g. call the backbone's layers on your input) before pruning"
        )
    if not model.built:
        raise PruningError(f"{model.name} is not built; give its Input a shape before pruning")
    return model


# --------------------------------------------------------------------------- schedule


def _schedule(mot, target: float, config: PruneConfig, total_steps: Optional[int]):
    """The tfmot schedule for one layer; ``total_steps=None`` means one-shot."""
    sched = mot.sparsity.keras
    if total_steps is None:
        return sched.ConstantSparsity(target, begin_step=0, frequency=1)
    if config.schedule == "constant":
        # begin_step=1: the first training step (pruning_step 1) already prunes to the target.
        return sched.ConstantSparsity(target, begin_step=1, frequency=max(1, total_steps // RAMP_UPDATES))
    ramp = max(1, int(round(total_steps * RAMP_SHARE)))
    frequency = max(1, ramp // RAMP_UPDATES)
    end = max(frequency, (ramp // frequency) * frequency)  # a multiple of frequency: the last update reaches target
    return sched.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=target, begin_step=0, end_step=end, frequency=frequency
    )


# --------------------------------------------------------------------------- main entry


def prune_model(
    model,
    config: PruneConfig,
    train: Optional[tuple] = None,
    val: Optional[tuple] = None,
    progress: Optional[ProgressFn] = None,
) -> PruneResult:
    """Prune ``model`` (a tf_keras Model or a LoadedModel) and return the stripped result.

    ``train`` and ``val`` are ``(x, y)`` pairs: x preprocessed float32 NHWC
    batches exactly as the model takes them, y integer class indices; ``train``
    may also be a labelled :class:`~edgeresnet.device.images.ImageStream` (with
    its preset), read a batch at a time so memory does not grow with it. With
    ``train`` the model is fine-tuned for ``config.epochs`` epochs; without it
    the sparsity is applied in one shot. The input model is not modified.
    """
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"config must be a PruneConfig, got {type(config).__name__}")
    source = _unwrap(model)
    tf, keras, mot = _tf.tf(), _tf.tf_keras(), _tf.tfmot()
    train, val = _check_train_val(source, config, train, val)
    strategy = make_strategy(config.strategy) if train is not None else tf.distribute.get_strategy()
    tf.random.set_seed(config.seed)
    data = training_data(tf, strategy, train, config.batch_size, config.seed) if train is not None else None
    total_steps = data.steps_per_epoch * config.epochs if train is not None else None

    with strategy.scope():
        # Work on a copy: tfmot wraps layer instances in place, and the caller
        # still needs the original (e.g. as the float baseline).
        work = keras.models.clone_model(source)
        work.set_weights(source.get_weights())
        plans = plan_layers(work, config, keras, mot)
        pruned = _wrap(work, source.name, plans, config, total_steps)
        started = time.perf_counter()
        history = _fine_tune(pruned, work, config, data, train, val, total_steps, progress)
        seconds = time.perf_counter() - started

    final = _stripped_copy(pruned)
    bn_batches = 0
    if train is not None and _RECALIBRATE_BN:
        bn_batches = _recalibrate_batchnorm(final, keras, train, config.batch_size, config.seed, data, strategy,
                                            epoch=config.epochs)
    return PruneResult(
        model=final,
        config=config,
        layers=_layer_records(final, plans, config),
        fine_tuned=train is not None,
        train_samples=0 if train is None else len(train),
        steps=total_steps or 0,
        train_seconds=seconds,
        strategy=type(strategy).__name__,
        replicas=int(strategy.num_replicas_in_sync),
        warnings=_warnings(config, train),
        history=history,
        val_accuracy=_val_accuracy(final, val, config.batch_size),
        bn_recalibration_batches=bn_batches,
        shard=data.shard() if data is not None else None,
    )


def _stripped_copy(pruned):
    """``pruned`` without its pruning wrappers, as a fresh copy with plain variables (no strategy-mirrored
    ones, no shared layers)."""
    keras, mot = _tf.tf_keras(), _tf.tfmot()
    stripped = mot.sparsity.keras.strip_pruning(pruned)
    final = keras.models.clone_model(stripped)
    final.set_weights(stripped.get_weights())
    return final


def _val_accuracy(model, val, batch_size: int) -> Optional[float]:
    """Top-1 (%) of ``model`` on the ``(x, y)`` pair ``val``, or None without it."""
    if val is None:
        return None
    pred = model.predict(val[0], batch_size=batch_size, verbose=0)
    return 100.0 * float(np.mean(np.argmax(pred, axis=-1) == val[1]))


def prune_model_in_child(model, config: PruneConfig, train=None, progress: Optional[ProgressFn] = None) -> PruneResult:
    """:func:`prune_model` run in a fresh process (see :mod:`edgeresnet.host.training.child`): the same result,
    without the training step's memory pool left in this one. Needs a
    :func:`~edgeresnet.host.training.child.portable` model (built-in tf_keras layers); one machine (not a cluster)."""
    from edgeresnet.host.training.child import train_in_child

    source = _unwrap(model)
    result, weights = train_in_child(prune_model, source, config, train=train, what="fine-tuning (pruning)",
                                     progress=progress)
    final = _tf.tf_keras().models.clone_model(source)
    final.set_weights(weights)
    return replace(result, model=final)


def _check_train_val(source, config: PruneConfig, train, val):
    """The model is a single-output classifier and the data fit it; checked before any work."""
    out_shape = source.output_shape
    if isinstance(out_shape, list) or len(out_shape) != 2:
        raise PruningError(f"{source.name} has output shape {out_shape}; edgeresnet prunes single-output classifiers")
    n_outputs = int(out_shape[-1])
    train = train_stream(train, source, n_outputs)
    val = check_data("validation data", val, source, n_outputs)
    if train is not None and config.epochs == 0:
        raise ConfigError(
            "--epochs 0 with --train would not fine-tune at all; pass --epochs 1 or more, "
            "or leave out --train for one-shot pruning"
        )
    return train, val


def _warnings(config: PruneConfig, train) -> tuple[str, ...]:
    warnings = []
    if config.policy == "xnnpack":
        warnings.append(
            "xnnpack policy: XNNPACK runs sparse kernels only for float models whose weights are stored sparse "
            "(converter Optimize.EXPERIMENTAL_SPARSITY); int8 variants get smaller, not faster"
        )
    if train is None:
        warnings.append(ONE_SHOT_WARNING)
    return tuple(warnings)


def _wrap(work, model_name: str, plans, config: PruneConfig, total_steps):
    """A clone of ``work`` with every planned layer wrapped for tfmot's magnitude pruning."""
    tf, keras, mot = _tf.tf(), _tf.tf_keras(), _tf.tfmot()
    targets = {p.name: p.target for p in plans}

    def wrap(layer):
        target = targets.get(layer.name, 0.0)
        if target <= 0:
            return layer
        kwargs = {"pruning_schedule": _schedule(mot, target, config, total_steps)}
        if config.structure == "block":
            kwargs["block_size"] = config.block_size
        elif config.structure == "2:4":
            kwargs["sparsity_m_by_n"] = (2, 4)
        try:
            return mot.sparsity.keras.prune_low_magnitude(layer, **kwargs)
        except ValueError as exc:
            raise PruningError(f"tfmot cannot prune layer {layer.name}: {exc}") from None

    try:
        return keras.models.clone_model(work, clone_function=wrap)
    except (ValueError, tf.errors.InvalidArgumentError) as exc:
        raise PruningError(f"tfmot cannot prune {model_name}: {str(exc).strip().splitlines()[0]}") from None


def _fine_tune(pruned, work, config: PruneConfig, data, train, val, total_steps, progress) -> dict:
    """Fine-tune ``pruned`` on ``train`` (its Keras history), or, without data, apply the masks at once."""
    keras, mot = _tf.tf_keras(), _tf.tfmot()
    if train is None:
        for layer in pruned.layers:
            if getattr(layer, "pruning_obj", None) is not None:  # a PruneLowMagnitude wrapper
                layer.pruning_step.assign(1)
                layer.pruning_obj.conditional_mask_update()
                layer.pruning_obj.weight_mask_op()
        return {}
    compile_classifier(pruned, config.learning_rate, from_logits=uses_logits(work, train))
    callbacks = [mot.sparsity.keras.UpdatePruningStep()]
    if progress is not None:
        callbacks.append(progress_callback(keras, progress, total_steps))
    return fit_history(pruned, data, config.epochs, callbacks, validation_data=val)


def _layer_records(final, plans, config: PruneConfig) -> tuple:
    """Per planned layer: the sparsity asked for and the share of zeros its kernel ended with."""
    records = []
    for p in plans:
        kernel = final.get_layer(p.name).kernel.numpy()
        achieved = float(np.count_nonzero(kernel == 0)) / kernel.size
        if p.target <= 0:
            structure = "dense"
        elif config.structure == "block":
            structure = f"block {config.block_size[0]}x{config.block_size[1]}"
        else:
            structure = config.structure
        records.append(LayerSparsity(
            name=p.name, kind=p.kind, role=p.role, target_sparsity=p.target, achieved_sparsity=achieved,
            weights=p.weights, structure=structure, reason=p.reason,
        ))
    return tuple(records)


_RECALIBRATE_BN = True
BN_RECALIBRATION_BATCHES = 100


def _recalibrate_batchnorm(model, keras, train, batch_size: int, seed: int, data=None, strategy=None,
                           epoch: int = 0) -> int:
    """Re-estimate BatchNorm moving statistics of the pruned weights; returns batches used (on this worker).

    Pruning changes the weights faster than the moving averages (momentum 0.99)
    follow, so a short fine-tune leaves statistics that describe weights from
    several hundred steps ago. A forward pass over the training data in training
    mode, with momentum set so that the moving values become the plain average
    over the batches seen, replaces them. No weight is changed. In a cluster each
    worker averages over batches of its own files (the same number everywhere)
    and the workers then average their statistics, so all end with the same ones.
    """
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not bns:
        return 0
    chunks = statistics_batches(data, len(train), batch_size, seed, BN_RECALIBRATION_BATCHES, epoch)
    saved = [layer.momentum for layer in bns]
    batches = 0
    try:
        for chunk in chunks:
            for layer in bns:
                layer.momentum = batches / (batches + 1.0)  # running mean over batches
            model(train.inputs(chunk), training=True)
            batches += 1
    finally:
        for layer, momentum in zip(bns, saved):
            layer.momentum = momentum
    if data is not None and data.workers > 1:  # every worker ends with the mean over all workers' batches
        stats = [v for layer in bns for v in (layer.moving_mean, layer.moving_variance)]
        for var, value in zip(stats, mean_across_workers(_tf.tf(), strategy, [v.numpy() for v in stats])):
            var.assign(value)
    return batches
