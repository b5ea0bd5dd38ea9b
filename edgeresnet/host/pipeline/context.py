"""What the stages of a run share: the options and callbacks (:class:`RunContext`), the model and how its
inputs are read (:class:`Source`), and progress for one stage (:func:`stage_progress`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from edgeresnet._util.progress import Stage
from edgeresnet.host.memory import MemoryMeter
from edgeresnet.host.pipeline.options import ConvertOptions
from edgeresnet.report.records import Timings

ProgressFn = Callable[[str, int, int], None]
NotifyFn = Callable[[str], None]


@dataclass(frozen=True)
class RunContext:
    """One run's options, its progress and notice callbacks, and where its time and memory are counted."""

    opts: ConvertOptions
    progress: Optional[ProgressFn] = None
    notify: NotifyFn = lambda message: None
    timings: Timings = field(default_factory=Timings)
    meter: MemoryMeter = field(default_factory=MemoryMeter)


@dataclass(frozen=True)
class Source:
    """The model a run works on and how its images are read."""

    loaded: object  # models.loading.LoadedModel
    reference_meta: Optional[dict]  # the built-in reference model's metadata (None for any other model)
    preset: object  # calibration.Preset: the preprocessing the float model takes
    preset_name: str
    names: Optional[tuple[str, ...]] = None  # --labels' class names in output order
    order_warning: Optional[str] = None  # said when the class folders list --labels' names in another order


def stage_progress(progress: Optional[ProgressFn], stage: str, unit: str = ""):
    """``progress(done, total[, what])`` for one stage; the stage name carries what is counted (``Stage.unit``)."""
    if progress is None:
        return None
    return lambda done, total, what=None: progress(Stage(stage, what or unit), done, total)
