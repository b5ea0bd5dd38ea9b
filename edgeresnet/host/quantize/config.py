"""Settings of the int8 engine's statistics passes (the method is chosen apart)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgeresnet._util.validate import whole_number
from edgeresnet.errors import ConfigError


@dataclass(frozen=True)
class QuantOptConfig:
    """Which samples each statistic of the one statistics pass looks at.

    Every calibration sample gives the min/max ranges of tensors without a
    histogram (a graph output's). ``stats_samples``: the evenly spread subset
    whose activations feed the histograms (the ranges of the rest) and layer
    input means; ``None`` uses all.
    ``gptq_samples`` / ``gptq_rows``: samples, and patch rows drawn per sample
    and layer, for the GPTQ Hessians (``mse+gptq`` only). ``equalize``:
    rescale channels that dwarf the rest of their tensor (see
    ``equalize.equalize``), measured on ``equalize_samples`` samples.
    ``learn_samples`` / ``learn_iters`` / ``learn_batch``: the samples, optimisation
    steps per block and samples per step of learned rounding (``mse+learned`` only).
    ``range_samples`` / ``range_iters`` / ``range_batch``: the samples (``None``: all), optimisation steps and
    samples per step of learned activation ranges (``mse+gptq+ranges`` only).
    ``bins``: histogram bins (both signs); each side's range ends at the power
    of two above its largest value (``stats.Histogram``), so 4096 bins are
    never coarser than 2048 over the exact maximum.
    """

    stats_samples: Optional[int] = 128
    gptq_samples: int = 128
    gptq_rows: int = 512
    bins: int = 4096
    seed: int = 0
    equalize: bool = True
    equalize_samples: int = 32
    learn_samples: int = 256
    learn_iters: int = 500
    learn_batch: int = 32
    range_samples: Optional[int] = 512
    range_iters: int = 200
    range_batch: int = 100

    def __post_init__(self):
        for name in ("stats_samples", "range_samples"):
            if getattr(self, name) is not None:
                whole_number(name, getattr(self, name), 1)
        if not isinstance(self.equalize, bool):
            raise ConfigError(f"equalize must be True or False, got {self.equalize!r}")
        for name in ("gptq_samples", "gptq_rows", "bins", "equalize_samples", "learn_samples", "learn_iters", "learn_batch",
                     "range_iters", "range_batch"):
            whole_number(name, getattr(self, name), 1)
        if self.bins % 2:
            raise ConfigError(f"bins must be even, got {self.bins}")
