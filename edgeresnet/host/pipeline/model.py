"""The model a run converts: a file, a zoo architecture or the built-in reference; random weights refused
for accuracy work (a zoo model with random weights is only timed)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from edgeresnet._util.tf import require_host
from edgeresnet.errors import ConfigError, ModelLoadError
from edgeresnet.host.converter import ConversionSpec, convert
from edgeresnet.host.pipeline.data import TIMING_CALIB_SAMPLES, random_pixels
from edgeresnet.host.pipeline.options import ConvertOptions
from edgeresnet.host.quantize.registry import DEFAULT_METHOD
from edgeresnet.targets import PRECISIONS, get_target


def zoo_model_spec(opts: ConvertOptions):
    """The zoo architecture MODEL names (None for a file); --weights/--classes/--input-size need one;
    random weights are refused for accuracy work."""
    from edgeresnet.host.models.zoo import zoo_spec

    spec = zoo_spec(opts.model)
    zoo_only = [f for f, v in (("--weights", opts.weights), ("--classes", opts.classes), ("--input-size", opts.input_size))
                if v is not None]
    if spec is None and zoo_only:
        raise ConfigError(f"{zoo_only[0]} applies to a built-in architecture MODEL (e.g. resnet50; see `edgeresnet models`), "
                          "not to a model file")
    if spec is not None and opts.weights is None and opts.train is None and not opts.timing_only:
        raise ConfigError(
            f"{spec.name} has random weights, so its accuracy and drift would mean nothing; pass --weights FILE.h5 "
            "(trained weights) or --classes N --train DIR (fine-tune it on your images)"
        )
    if spec is not None and opts.weights is None and opts.classes is None and not opts.timing_only:
        raise ConfigError(
            f"{spec.name} without --weights would fine-tune random weights only while pruning; "
            "pass --weights FILE.h5, or --classes N to train it on --train DIR first"
        )
    return spec


def load_run_model(opts: ConvertOptions):
    """The run's model as a LoadedModel, and the reference model's metadata (None for any other model)."""
    from edgeresnet.host.models.loading import LoadedModel, load_model

    if opts.model is None:
        from edgeresnet.host import demo
        from edgeresnet.host.calibration import grey_from_rgb

        # The reference model reads one grey channel; it ships taking RGB, as phone runtimes feed it.
        loaded = load_model(demo.reference_model_path())
        loaded = LoadedModel.from_keras(grey_from_rgb(loaded.model), loaded.name)
        return loaded, demo.reference_metadata()
    spec = zoo_model_spec(opts)
    if spec is not None:
        from edgeresnet.host.models.zoo import build_zoo_model

        model = build_zoo_model(spec, opts.weights, opts.classes, opts.input_size, seed=opts.seed)
        return LoadedModel.from_keras(model, spec.name), None
    return load_model(opts.model, trust_code=opts.trust_model_code), None


def check_finite_weights(loaded, label: str) -> None:
    """NaN or infinite weights make every converted model (and the float accuracy) meaningless: name the layers."""
    bad = []
    for layer in getattr(loaded.model, "layers", ()):
        count = sum(int(np.size(w) - np.isfinite(w).sum()) for w in layer.get_weights()
                    if np.issubdtype(np.asarray(w).dtype, np.floating))
        if count:
            bad.append(f"{layer.name} ({count})")
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ModelLoadError(
            f"{label} has NaN or infinite weights in layer {shown}; the model is broken "
            "(a diverged training run?): fix or retrain it before converting"
        )


def random_weights(opts: ConvertOptions) -> bool:
    """A zoo MODEL with nothing to give it weights: no --weights, no --train to fine-tune it on."""
    from edgeresnet.host.models.zoo import zoo_spec

    return zoo_spec(opts.model) is not None and opts.weights is None and opts.train is None


def random_weights_reason(name: str) -> str:
    """Why a model with random weights is never judged on accuracy (the report's and the errors' words)."""
    return f"{name} has random weights (no --weights), so its accuracy and drift would mean nothing"


def timing_only(opts: ConvertOptions) -> ConvertOptions:
    """`report` of a zoo MODEL with random weights: it may be timed (sizes, latency), never judged on accuracy."""
    from dataclasses import replace

    from edgeresnet.host.models.zoo import zoo_spec

    name = zoo_spec(opts.model).name
    asked = [flag for flag, value in (("--eval", opts.eval), ("--eval-samples", opts.eval_samples),
                                      ("--max-drop", opts.max_drop), ("--device-check", opts.device_check))
             if value is not None]
    if asked:
        raise ConfigError(
            f"{random_weights_reason(name)}: {asked[0]} asks for accuracy; pass --weights FILE.h5 (trained weights), "
            f"or drop {asked[0]} to time the architecture (sizes and latency only)"
        )
    return replace(opts, timing_only=True)


def zoo_timing_model(name: str, precision: str = "int8", input_size: Optional[int] = None, seed: int = 0) -> bytes:
    """The .tflite of built-in architecture ``name`` with random weights, for timing only (``bench resnet50``).

    Full-integer precisions are calibrated on seeded random pixels: the ranges
    do not change how long a model takes, and its accuracy is never measured.
    """
    require_host("bench of a built-in architecture")
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.host.models.zoo import build_zoo_model, check_input_size, zoo_spec

    spec = zoo_spec(name)
    if spec is None:
        raise ConfigError(f"{name} is not a built-in architecture; see `edgeresnet models`")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if input_size is not None:
        check_input_size(input_size)
    loaded = LoadedModel.from_keras(build_zoo_model(spec, input_size=input_size, seed=seed), spec.name)
    conversion = ConversionSpec(precision, get_target("cpu").io_type_for(precision), DEFAULT_METHOD)
    calib = random_pixels(loaded.input_shape, TIMING_CALIB_SAMPLES, seed).images.astype(np.float32)
    return convert(loaded.tflite_converter, conversion, calib if conversion.needs_calibration else None).model
