"""Peak runtime memory of a .tflite model in the interpreter, measured in a fresh process (no TensorFlow).

The child imports the interpreter, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), notes
its resident memory, then loads the model, allocates its tensors and invokes it once. The figure is the
peak resident set (``VmHWM``) minus the resident memory before the model was loaded: the model's bytes,
the interpreter's tensor arena, XNNPACK's packed weights and scratch, i.e. what running the model costs
on top of the runtime itself. Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from edgeresnet.errors import TFLiteFileError

_CHILD = r"""
import json, sys
import numpy as np
from edgeresnet.device.runtime import TFLiteModel
from edgeresnet.device.bench import random_input

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)

path, threads = sys.argv[1], (int(sys.argv[2]) or None)
data = open(path, "rb").read()
# Warm-up: a first load pages in the interpreter's code and its one-off state; freed, it leaves the library.
warm = TFLiteModel(data, num_threads=threads, label=path)
warm.interpreter.set_tensor(warm.input.index, random_input(warm.input))
warm.interpreter.invoke()
del warm
import gc, ctypes
gc.collect()
try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
except (OSError, AttributeError):
    pass
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
before = kib("VmRSS")
model = TFLiteModel(data, num_threads=threads, label=path)
x = random_input(model.input)
model.interpreter.set_tensor(model.input.index, x)
model.interpreter.invoke()
print(json.dumps({"before_kib": before, "peak_kib": kib("VmHWM"), "reset": reset}))
"""


def peak_memory(model: bytes, threads: Optional[int] = None) -> int:
    """Bytes of resident memory the interpreter needed on top of itself to load, allocate and invoke ``model``."""
    if not Path("/proc/self/status").exists():
        raise TFLiteFileError("peak memory is measured from /proc (Linux); this system has no /proc/self/status")
    with tempfile.TemporaryDirectory(prefix="edgeresnet-mem-") as tmp:
        path = os.path.join(tmp, "model.tflite")
        Path(path).write_bytes(model)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, path, str(threads or 0)],
            capture_output=True, text=True, env=env, timeout=300,
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TFLiteFileError(f"measuring the model's peak memory failed: {last}")
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    return max(0, numbers["peak_kib"] - numbers["before_kib"]) * 1024
