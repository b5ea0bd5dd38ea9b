"""Which variants a run emits (:class:`PlannedVariant`): ``convert``'s plan, ``report``'s sweep, file names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgeresnet.host.converter import ConversionSpec
from edgeresnet.host.pipeline.options import ConvertOptions
from edgeresnet.targets import PRECISIONS, Target, get_target


def file_name(model_name: str, target: Target, spec: ConversionSpec) -> str:
    """The .tflite name of a variant: model, target, precision and (when not the target's default) io type."""
    io = "" if spec.io_type in ("float32",) or spec.io_type == target.int8_io_types[0] else f"_{spec.io_type}io"
    return f"{model_name}_{target.name}_{spec.precision}{io}.tflite"


@dataclass(frozen=True)
class PlannedVariant:
    """One model to emit: a target, a precision/io spec, and which model (pruned or not)."""

    target: Target
    spec: ConversionSpec
    sparsity: Optional[float] = None  # None: the model as given; else pruned to this sparsity
    qat: bool = False  # quantization-aware fine-tuned (sparsity-preserving when pruned); spec.method is "qat"

    @property
    def model_key(self) -> tuple:
        return (self.sparsity, self.qat)


def _qat_variant(target: Target, spec: ConversionSpec, sparsity: Optional[float]) -> PlannedVariant:
    from dataclasses import replace

    return PlannedVariant(target, replace(spec, method="qat"), sparsity, qat=True)


def convert_plan(opts: ConvertOptions) -> list[PlannedVariant]:
    """The requested variants; with --prune, each target gets the unpruned and the pruned model,
    side by side, so the report shows what pruning bought."""
    plan = [PlannedVariant(t, s) for t, s in opts.variant_plan()]
    if opts.prune is not None:
        plan += [PlannedVariant(v.target, v.spec, opts.prune.sparsity) for v in plan]
    if opts.qat is not None:
        # QAT fine-tunes the model that is shipped: the pruned one with --prune (keeping its zeros).
        s = opts.prune.sparsity if opts.prune is not None else None
        plan += [_qat_variant(v.target, v.spec, s) for v in plan if v.sparsity == s and v.spec.precision == "int8"]
    return plan


def sweep_plan(opts: ConvertOptions, sparsities: tuple = ()) -> list[PlannedVariant]:
    """Every precision each target takes, plus a pruned int8 model per sparsity and int8 target."""
    plan = []
    for name in opts.targets:
        target = get_target(name)
        for precision in target.precisions:
            io = target.io_type_for(precision, opts.io_type if PRECISIONS[precision].integer_only else None)
            plan.append(PlannedVariant(target, ConversionSpec(precision, io, opts.int8_method)))
    for s in sparsities:
        for name in opts.targets:
            target = get_target(name)
            if "int8" in target.precisions:
                spec = ConversionSpec("int8", target.io_type_for("int8", opts.io_type), opts.int8_method)
                plan.append(PlannedVariant(target, spec, s))
    if opts.qat is not None:
        plan += [_qat_variant(v.target, v.spec, v.sparsity) for v in list(plan) if v.spec.precision == "int8"]
    return plan
