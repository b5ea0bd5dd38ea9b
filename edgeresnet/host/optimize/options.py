"""What ``edgeresnet optimize`` can be asked: :class:`OptimizeOptions`, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edgeresnet._util.validate import whole_number
from edgeresnet.defaults import DEFAULT_SAMPLES, RESIZE_POLICIES
from edgeresnet.errors import ConfigError, DataError
from edgeresnet.host.optimize.budgets import Budgets
from edgeresnet.host.quantize.registry import get_method
from edgeresnet.host.training.cluster import STRATEGIES
from edgeresnet.targets import get_target

# Every candidate's int8 method: mse+bias converts in about a second; auto (convert's default) would
# score up to three methods for each candidate, which multiplies the search's conversions.
SEARCH_METHOD = "mse+bias"
DEFAULT_OUT = "edgeresnet-optimize"
DEFAULT_EPOCHS = 3


@dataclass(frozen=True)
class OptimizeOptions:
    """The model, its data, the budgets, and how candidates are fine-tuned and converted."""

    model: str
    train: str
    eval: str
    budgets: Budgets = field(default_factory=Budgets)
    target: str = "cpu"
    calib: Optional[str] = None  # default: --train
    calib_samples: int = DEFAULT_SAMPLES
    eval_samples: Optional[int] = None
    seed: int = 0
    preset: str = "raw"
    resize: str = "crop"
    out: str = DEFAULT_OUT
    overwrite: bool = False
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 64
    learning_rate: Optional[float] = None
    strategy: str = "auto"
    int8_method: str = SEARCH_METHOD
    qat: bool = False  # fine-tuned candidates then get --epochs of QAT (sparsity-/cluster-preserving) for their int8
    jobs: int = 1
    threads: Optional[int] = None  # interpreter threads for latency and memory (None: the interpreter's choice)
    bench_repeats: int = 30
    trust_model_code: bool = False
    weights: Optional[str] = None  # a built-in architecture MODEL: its trained weights (.h5, by layer name)
    input_size: Optional[int] = None  # a built-in architecture MODEL: its square input side (default: the architecture's)

    def __post_init__(self):
        if not isinstance(self.budgets, Budgets):
            raise ConfigError(f"budgets must be a Budgets, got {type(self.budgets).__name__}")
        if not self.budgets.given and self.budgets.drop is None:
            raise ConfigError(
                "give at least one budget: --max-size, --max-download, --max-latency, --max-memory or --max-drop"
            )
        target = get_target(self.target)  # TargetError with a suggestion
        if "int8" not in target.precisions:
            raise ConfigError(
                f"optimize searches int8 models; target {target.name} runs {', '.join(target.precisions)}: "
                "use --target cpu or --target edgetpu"
            )
        for flag, path in (("--train", self.train), ("--eval", self.eval)):
            if path is None or not Path(path).is_dir():
                raise DataError(f"{flag} {path} is not a folder; {flag} takes a folder of images (one sub-folder per class)")
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"--resize must be {' or '.join(RESIZE_POLICIES)}, got {self.resize!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown --strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        get_method(self.int8_method)
        whole_number("--epochs", self.epochs, 1)
        whole_number("--batch-size", self.batch_size, 1)
        whole_number("--jobs", self.jobs, 1)
        whole_number("--calib-samples", self.calib_samples, 1)
        whole_number("--bench-repeats", self.bench_repeats, 1)
        whole_number("--seed", self.seed, 0)
        if self.eval_samples is not None:
            whole_number("--eval-samples", self.eval_samples, 1)
        if self.threads is not None:
            whole_number("--threads", self.threads, 1)
        self._check_zoo()

    def _check_zoo(self) -> None:
        """A built-in architecture MODEL needs --weights (random weights score nothing); a file takes neither flag."""
        from edgeresnet.host.models.zoo import check_input_size, zoo_spec

        spec = zoo_spec(self.model)
        if spec is None:
            flag = next((f for f, v in (("--weights", self.weights), ("--input-size", self.input_size)) if v is not None), None)
            if flag:
                raise ConfigError(f"{flag} applies to a built-in architecture MODEL (e.g. resnet8; see `edgeresnet models`), "
                                  "not to a model file")
            return
        if self.weights is None:
            raise ConfigError(f"{spec.name} has random weights, so no candidate's accuracy would mean anything; "
                              "pass --weights FILE.h5 (its trained weights, loaded by layer name)")
        if self.input_size is not None:
            check_input_size(self.input_size)

    @property
    def zoo(self):
        """The built-in architecture MODEL names (an ArchSpec), or None for a model file."""
        from edgeresnet.host.models.zoo import zoo_spec

        return zoo_spec(self.model)

    @property
    def target_name(self) -> str:
        return get_target(self.target).name

    def fingerprint(self) -> dict:
        """What a finished candidate depends on: a resumed search reuses candidates only when this is equal."""
        model = Path(self.model)
        stat = model.stat() if model.is_file() else None
        weights = Path(self.weights) if self.weights else None
        wstat = weights.stat() if weights is not None and weights.is_file() else None
        return {
            "weights": str(weights.resolve()) if weights else None, "weights_bytes": wstat.st_size if wstat else None,
            "weights_mtime": wstat.st_mtime if wstat else None, "input_size": self.input_size,
            "model": str(model.resolve()), "model_bytes": stat.st_size if stat else None,
            "model_mtime": stat.st_mtime if stat else None,
            "train": str(Path(self.train).resolve()), "eval": str(Path(self.eval).resolve()),
            "calib": str(Path(self.calib or self.train).resolve()), "calib_samples": self.calib_samples,
            "eval_samples": self.eval_samples, "seed": self.seed, "preset": self.preset, "resize": self.resize,
            "epochs": self.epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
            "int8_method": self.int8_method, "target": self.target_name, "threads": self.threads, "qat": self.qat,
        }
