"""``edgeresnet optimize``: the most accurate int8 model that fits the device's budgets.

- ``budgets.py``: the budgets and how each is measured on the .tflite file;
- ``candidates.py``: the layer profile (weights, MACs, pruning sensitivity) and the per-layer allocation;
- ``evaluate.py``: one candidate built for real (fine-tuned, converted, run, measured);
- ``search.py``: probes, levels, retries; ``worker.py``: its --jobs processes;
- ``inputs.py``: the input family (a built-in architecture rebuilt at a smaller input size);
- ``precision.py``: the mixed family (the worst int8 layers in float, cpu only) and the Edge TPU's
  on-chip parameter memory;
- ``state.py``: the resume state; ``result.py``: the choice, the front, the output; ``run.py``: the job.

See docs/optimize.md.
"""

from edgeresnet.host.optimize.budgets import Budgets
from edgeresnet.host.optimize.options import OptimizeOptions

__all__ = ["Budgets", "OptimizeOptions", "run_optimize"]


def __getattr__(name):
    if name == "run_optimize":
        from edgeresnet.host.optimize.run import run_optimize

        return run_optimize
    raise AttributeError(name)
