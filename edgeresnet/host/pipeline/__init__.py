"""The ``convert`` job: load, calibrate, convert per target, verify, report.

This is the Python API behind ``edgeresnet convert`` and ``edgeresnet report``. It never prints: progress
goes to an optional ``progress(stage, done, total)`` callback and notices to an
optional ``notify(message)`` callback; everything else is in the returned
:class:`~edgeresnet.report.RunReport`.

One idea per module: ``options`` (what can be asked), ``plan`` (which variants), ``model`` (the model a run
converts), ``data`` (its images), ``finetune`` (new classifier, pruning, QAT), ``emit`` (each variant
converted, measured, checked), ``run`` (the staged job), ``worker`` (a cluster worker), ``parallel``
(``--jobs N``); ``context`` holds what the stages share.
"""

from edgeresnet.host.pipeline.context import NotifyFn, ProgressFn
from edgeresnet.host.pipeline.emit import retry_command
from edgeresnet.host.pipeline.model import random_weights_reason, zoo_timing_model
from edgeresnet.host.pipeline.options import DEFAULT_OUT, ConvertOptions
from edgeresnet.host.pipeline.plan import PlannedVariant, convert_plan, sweep_plan
from edgeresnet.host.pipeline.run import run_convert, run_report
from edgeresnet.host.pipeline.worker import WorkerRun

__all__ = [
    "DEFAULT_OUT",
    "ConvertOptions",
    "NotifyFn",
    "PlannedVariant",
    "ProgressFn",
    "WorkerRun",
    "convert_plan",
    "random_weights_reason",
    "retry_command",
    "run_convert",
    "run_report",
    "sweep_plan",
    "zoo_timing_model",
]
