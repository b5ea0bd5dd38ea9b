"""The *input* family: a built-in architecture rebuilt at a smaller square input, for latency and memory budgets.

A ResNet's weights do not depend on its input size (global average pooling before the classifier), so a
zoo MODEL is rebuilt at a smaller side with the same weights. Its MACs scale with the pixels, and with
them the latency and the activations in the interpreter's tensor arena; the file and the download do not
change. It is the one lever that brings latency and peak memory below the plain int8 model's.

The sizes are the multiples of the architecture's total stride (:func:`size_step`: 32 for the ImageNet
ResNets, 4 for the three-stage CIFAR ones) below the model's side, down to the side whose last stage still
has a MIN_FINAL_MAP x MIN_FINAL_MAP map (64 px and 8 px).

The family is planned only when --max-latency or --max-memory is given and the plain int8 model is over
it. Each exceeded budget over the plain model's measured value is the share of MACs the model may keep;
the largest size whose MACs (counted from the architecture's stage table) are within that share is
*probed*: the model at that size, the same weights, converted without fine-tuning and measured (latency
and memory do not depend on the weights' values). The probes walk the sizes up while the next larger one
fits and down until one fits, usually one or two conversions; only the largest size that fits is
fine-tuned on --train (--epochs, the images resized to that size by --resize), converted, run on --eval at
that size and measured as every candidate. One measured over its budget (timing noise) is rebuilt one
size smaller.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from edgeresnet.host.optimize.budgets import Budgets, measure
from edgeresnet.host.optimize.candidates import Candidate

FAMILY = "input"
SCALED = ("latency", "memory")  # the budgets a smaller input lowers
MIN_FINAL_MAP = 2  # the last stage's map is at least this many pixels a side
PROBE_MARGIN = 0.95  # probes aim this far under a latency or memory budget: timing noise
PROBE_FILE = "input_probes.json"


def size_step(spec) -> int:
    """The architecture's total stride: 4 (stem and max pool) x 2 per later stage (ImageNet), 2 per later stage (CIFAR)."""
    return (4 if spec.family == "imagenet" else 1) * 2 ** (len(spec.stages) - 1)


def input_sizes(spec, base: int) -> list[int]:
    """The smaller sides tried for a model of side ``base``, largest first."""
    step = size_step(spec)
    return list(range(step * ((base - 1) // step), MIN_FINAL_MAP * step - 1, -step))


def macs(spec, size: int, channels: int, classes: int) -> int:
    return spec.counts((size, size, channels), classes)[1]


def over_share(measured: dict, budgets: Budgets) -> dict:
    """quantity -> budget / measured for each latency or memory budget the plain model exceeds."""
    return {q: getattr(budgets, q) / measured[q] for q in SCALED
            if getattr(budgets, q) is not None and q in measured and measured[q] > getattr(budgets, q)}


def at_size(data, size: int, opts):
    """The search data at input side ``size``: the model rebuilt there with the same weights, the images
    resized to it (kept in ``data.sized``)."""
    if not size or size == data.loaded.input_shape[0]:
        return data
    if size not in data.sized:
        from edgeresnet.host.models.loading import LoadedModel
        from edgeresnet.host.models.zoo import build_zoo_model
        from edgeresnet.host.optimize.evaluate import image_sets

        model = build_zoo_model(data.spec, classes=data.loaded.num_classes, input_size=size, seed=opts.seed)
        model.set_weights(data.loaded.model.get_weights())
        train, calib, evals = image_sets(opts, (size, size, data.loaded.input_shape[-1]), data.preset)
        data.sized[size] = replace(data, loaded=LoadedModel.from_keras(model, f"{data.spec.name}-{size}px"),
                                   train=train, calib=calib, eval=evals, sized={})
    return data.sized[size]


def fine_tune_at_size(opts, data, progress=None):
    """A copy of ``data``'s model (already at the candidate's size) fine-tuned on its --train, every layer."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.training.prune import DEFAULT_LEARNING_RATE
    from edgeresnet.host.training.transfer import TransferConfig, fine_tune

    keras = _tf.tf_keras()
    model = keras.models.clone_model(data.loaded.model)
    model.set_weights(data.loaded.model.get_weights())
    config = TransferConfig(epochs=opts.epochs, batch_size=opts.batch_size, seed=opts.seed, strategy=opts.strategy,
                            learning_rate=opts.learning_rate or DEFAULT_LEARNING_RATE)
    fine_tune(model, data.train, config, progress, freeze_backbone=False)
    return model


def probe(opts, data, size: int) -> dict:
    """The latency and memory (as budgeted) of the model at ``size`` converted without fine-tuning."""
    from edgeresnet.host.optimize.evaluate import convert_int8

    sized = at_size(data, size, opts)
    tflite = convert_int8(sized.loaded.model, opts, sized.calib)
    scaled = Budgets(latency=opts.budgets.latency, memory=opts.budgets.memory)
    return measure(tflite, scaled, opts.threads, opts.bench_repeats)


class _Walk:
    """Probes by size (kept in the resume state), and whether a size's probe meets the scaled budgets."""

    def __init__(self, opts, data, state, progress=None):
        self.opts, self.data, self.state, self.progress = opts, data, state, progress
        self.seen = dict(state.load(PROBE_FILE) or {})

    def __call__(self, size: int) -> bool:
        key = str(size)
        if key not in self.seen:
            if self.progress is not None:
                self.progress(0, 1)
            self.seen[key] = probe(self.opts, self.data, size)
            self.state.keep(PROBE_FILE, self.seen)
            if self.progress is not None:
                self.progress(1, 1)
        budgets = self.opts.budgets
        return all(self.seen[key][q] <= getattr(budgets, q) * PROBE_MARGIN for q in SCALED
                   if getattr(budgets, q) is not None)


def largest_fitting(sizes: list[int], guess: int, fits) -> Optional[int]:
    """The largest of ``sizes`` (largest first) whose probe fits, starting at index ``guess``; None when none does."""
    if fits(sizes[guess]):
        while guess > 0 and fits(sizes[guess - 1]):
            guess -= 1
        return sizes[guess]
    return next((s for s in sizes[guess + 1:] if fits(s)), None)


def plan_inputs(opts, data, state, plain: dict, notify=None, progress=None, pruned=None) -> list[Candidate]:
    """The input family's candidate (none, and a note why, for a model file or budgets it cannot help).

    ``pruned(size)``: the candidate at ``size`` with the uniform sparsity the size and download budgets need
    (None when none meets them); a smaller input leaves the file as it is, so with those budgets too the
    input candidate is pruned as well."""
    notify = notify or (lambda message: None)
    why = absent_reason(opts, data, plain)
    if why:
        if data.spec is None:
            notify(why)
        return []
    shape, classes = data.loaded.input_shape, data.loaded.num_classes
    base, sizes = shape[0], input_sizes(data.spec, shape[0])
    share = min(over_share(plain["measured"], opts.budgets).values())
    full = macs(data.spec, base, shape[-1], classes)
    guess = next((k for k, s in enumerate(sizes) if macs(data.spec, s, shape[-1], classes) <= share * full),
                 len(sizes) - 1)
    size = largest_fitting(sizes, guess, _Walk(opts, data, state, progress))
    if size is None:
        notify(f"input sizes: even at {sizes[-1]} px the model is over the latency or memory budget")
        return []
    cand = Candidate(FAMILY, input_size=size)
    if pruned is not None and (opts.budgets.size or opts.budgets.download):
        cand = pruned(size)
        if cand is None:
            notify(f"input sizes: {size} px meets the latency and memory budgets, but no sparsity meets the size ones")
            return []
    return [cand]


def smaller(cand: Candidate, data) -> Optional[Candidate]:
    """The input candidate one size smaller, with the same sparsity (a retry after a measurement over a latency or
    memory budget), or None at the smallest."""
    sizes = [s for s in input_sizes(data.spec, data.loaded.input_shape[0]) if s < cand.input_size]
    return replace(cand, input_size=sizes[0]) if sizes else None


def absent_reason(opts, data, plain: Optional[dict]) -> str:
    """Why the input family is not built, in one line, or '' when it is."""
    if data.spec is None:
        return ("MODEL is a model file, not a built-in architecture: the input family (the architecture rebuilt at "
                "smaller input sizes with the same weights) needs a name from `edgeresnet models` and --weights")
    if opts.budgets.latency is None and opts.budgets.memory is None:
        return "no --max-latency or --max-memory: a smaller input lowers only latency and memory, so none was tried"
    if not input_sizes(data.spec, data.loaded.input_shape[0]):
        return f"{data.spec.name} at {data.loaded.input_shape[0]} px has no smaller input size to try"
    if plain is not None and not over_share(plain["measured"], opts.budgets):
        return "the plain int8 model meets the latency and memory budgets: a smaller input would only cost accuracy"
    return ""


def input_note(opts, data, records: list[dict]) -> str:
    """What optimize.json and optimize.md say about the input-size lever."""
    plain = next((r for r in records if r["settings"]["family"] == "int8"), None)
    why = absent_reason(opts, data, plain)
    if why:
        return why
    family = [r for r in records if r["settings"]["family"] == FAMILY]
    built = sorted({r["settings"]["input_size"] for r in family}, reverse=True)
    base = data.loaded.input_shape[0]
    if not built:
        return f"{data.spec.name}: no input size down to {input_sizes(data.spec, base)[-1]} px met the budgets"
    levels = sorted({r["settings"]["level"] for r in family if r["settings"]["level"]})
    pruning = (f", pruned to uniform {', '.join(f'{v:.2f}' for v in levels)} for the size budgets" if levels else "")
    return (f"{data.spec.name} at {', '.join(f'{s}x{s}' for s in built)} (from {base}x{base}, picked by MACs and "
            f"probes), fine-tuned with the same weights{pruning}")
