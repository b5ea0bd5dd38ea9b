"""Corrupted real models never crash or hang `inspect` and `bench`.

Seeded random 1-4 byte corruptions at the head, middle and tail of the MLPerf
Tiny ResNet-8 models (float and int8) and of one model edgeresnet emitted. Each
corrupted file goes through ``edgeresnet inspect`` and ``edgeresnet bench``; a run
must exit 0, or non-zero with exactly one ``error:`` line and no traceback,
never die by a signal, and never take longer than ``RUN_TIMEOUT``.

For speed the runs are batched: two worker processes (the machine has two
cores) each run the real CLI entry point in-process on their share of the
files, announcing every run before it starts. The CLI itself must keep native
crashes inside its own child processes; if one escapes, the worker dies by the
signal and the test names the file and command it was running.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORRUPTIONS_PER_MODEL = 70  # x 3 models = 210 corrupted files, 420 CLI runs
RUN_TIMEOUT = 60.0  # seconds one inspect or bench run may take
WORKERS = 2

# Corruptions of pretrainedResnet.tflite found to crash the native GPU analyzer
# (SIGSEGV, most runs) when it ran in-process: {offset: new byte}.
KNOWN_CRASHERS = ({703: 36, 1005: 239}, {1254: 36, 3586: 24})

_WORKER = r"""
import contextlib, io, json, sys, time
from edgeresnet.cli import main

def emit(**kw):
    sys.__stdout__.write(json.dumps(kw) + "\n")
    sys.__stdout__.flush()

for path in sys.argv[1:]:
    for args in (["inspect", path], ["bench", path, "--warmup", "0", "--repeats", "2"]):
        emit(event="start", args=args)
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as exc:
                code = exc.code
        emit(event="done", args=args, code=code, stdout=out.getvalue()[-2000:], stderr=err.getvalue()[-2000:],
             seconds=time.perf_counter() - start)
"""


def corrupt(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """1-4 random bytes changed in one region (head: first 1 KiB; middle; tail: last 1 KiB)."""
    region = rng.choice(("head", "middle", "tail"))
    n = len(data)
    window = min(1024, n)
    lo = {"head": 0, "middle": n // 2 - window // 2, "tail": n - window}[region]
    out = bytearray(data)
    changed = []
    for _ in range(rng.randint(1, 4)):
        pos = lo + rng.randrange(window)
        value = rng.randrange(256)
        while value == out[pos]:
            value = rng.randrange(256)
        out[pos] = value
        changed.append(pos)
    return bytes(out), f"{region} bytes {sorted(changed)}"


@pytest.fixture(scope="module")
def emitted_model(tiny_int8_run) -> Path:
    """An int8 model written by `edgeresnet convert` (the session's conftest.tiny_int8_run; read, never written)."""
    (model,) = tiny_int8_run["out"].glob("*.tflite")
    return model


def _run_workers(files: list[Path], labels: dict, tmp: Path) -> list[dict]:
    """Run every file through the workers; fail at once on a signal, a hang or a lost run."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("EDGERESNET_DEBUG", None)
    chunks = [files[i::WORKERS] for i in range(WORKERS)]
    sel = selectors.DefaultSelector()
    procs = []
    for n, chunk in enumerate(chunks):
        # Native code writes to fd 2 below Python's redirection: a file, so a full pipe never blocks a worker.
        log = open(tmp / f"worker{n}.log", "w+")
        p = subprocess.Popen([sys.executable, "-c", _WORKER, *map(str, chunk)], stdout=subprocess.PIPE,
                             stderr=log, text=True, env=env, cwd=str(REPO))
        p.log = log
        procs.append(p)
        sel.register(p.stdout, selectors.EVENT_READ, {"proc": p, "current": None, "since": time.monotonic()})
    results = []
    try:
        while sel.get_map():
            for key, _ in sel.select(timeout=1.0):
                state = key.data
                line = key.fileobj.readline()
                if not line:
                    sel.unregister(key.fileobj)
                    p = state["proc"]
                    code = p.wait()
                    current = state["current"]
                    assert code == 0 and current is None, (
                        f"worker died (status {code}) while running edgeresnet {' '.join(current or [])} "
                        f"[{labels.get(current[1]) if current else ''}]: {_tail(p.log)}"
                    )
                    continue
                event = json.loads(line)
                if event["event"] == "start":
                    state["current"], state["since"] = event["args"], time.monotonic()
                else:
                    state["current"] = None
                    results.append(event)
            for key in list(sel.get_map().values()):
                state = key.data
                if state["current"] is not None and time.monotonic() - state["since"] > RUN_TIMEOUT:
                    raise AssertionError(
                        f"edgeresnet {' '.join(state['current'])} [{labels.get(state['current'][1])}] "
                        f"ran past {RUN_TIMEOUT:g} s"
                    )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.log.close()
    return results


def _tail(log) -> str:
    log.seek(0)
    return log.read()[-2000:]


@pytest.mark.slow
def test_corrupted_models_never_crash_or_hang(shared_data, emitted_model, tmp_path):
    sources = [
        shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet.tflite",
        shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite",
        emitted_model,
    ]
    rng = random.Random(8)
    files, labels = [], {}
    for src in sources:
        data = src.read_bytes()
        for i in range(CORRUPTIONS_PER_MODEL):
            blob, where = corrupt(data, rng)
            path = tmp_path / f"{src.stem}_{i:03d}.tflite"
            path.write_bytes(blob)
            files.append(path)
            labels[str(path)] = f"{src.name}, {where}"
    float_model = sources[0].read_bytes()
    for i, change in enumerate(KNOWN_CRASHERS):
        blob = bytearray(float_model)
        for pos, value in change.items():
            blob[pos] = value
        path = tmp_path / f"known_crasher_{i}.tflite"
        path.write_bytes(bytes(blob))
        files.append(path)
        labels[str(path)] = f"{sources[0].name}, known analyzer crasher {change}"
    assert len(files) >= 200

    results = _run_workers(files, labels, tmp_path)

    assert len(results) == 2 * len(files)
    outcomes = {"ok": 0, "error": 0}
    for r in results:
        what = f"edgeresnet {' '.join(r['args'])} [{labels[r['args'][1]]}]"
        text = r["stdout"] + r["stderr"]
        assert "Traceback" not in text, f"{what}: {text}"
        assert r["seconds"] < RUN_TIMEOUT, what
        if r["code"] == 0:
            outcomes["ok"] += 1
            continue
        errors = [ln for ln in r["stderr"].splitlines() if ln.startswith("error:")]
        assert r["code"] == 2, f"{what}: exit {r['code']}: {r['stderr']}"
        assert len(errors) == 1, f"{what}: {r['stderr']!r}"
        assert "internal error" not in errors[0], f"{what}: {errors[0]}"
        outcomes["error"] += 1
    # Real corruption: some files still work, some are refused (a fuzzer that changed nothing would pass trivially).
    assert outcomes["ok"] > 0 and outcomes["error"] > 0, outcomes


# ------------------------------------------------------------ the isolation itself, deterministically

_SEGFAULT_IN = r"""
import os, signal, sys
import edgeresnet.{module} as m
m.{name} = lambda *a, **k: os.kill(os.getpid(), signal.SIGSEGV)
from edgeresnet.cli import main
main(sys.argv[1:])
"""


def _cli_with_segfault(module: str, name: str, args: list) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh Python where ``edgeresnet.<module>.<name>`` kills its process with SIGSEGV."""
    code = _SEGFAULT_IN.format(module=module, name=name)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=RUN_TIMEOUT)


def test_inspect_reports_a_crashing_gpu_analyzer_and_the_rest(shared_data):
    model = shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite"
    res = _cli_with_segfault("targets.gpu.analysis", "_run_analyzer", ["inspect", model])
    assert res.returncode == 0, res.stderr
    assert "GPU analysis crashed (SIGSEGV) on this model" in res.stdout
    assert "loads and runs in ai-edge-litert" in res.stdout  # the rest of the report is still there
    assert "16/16 ops would map to the Edge TPU" in res.stdout


def test_inspect_reports_a_crashing_interpreter(shared_data):
    model = shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite"
    res = _cli_with_segfault("device.inspection", "_load_and_run", ["inspect", model])
    assert res.returncode == 0, res.stderr
    assert "the interpreter crashed (SIGSEGV) on this model" in res.stdout
    assert "16/16 ops would map to the Edge TPU" in res.stdout


def test_bench_turns_a_crashing_interpreter_into_one_line(shared_data):
    model = shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite"
    res = _cli_with_segfault("device.runtime", "_trial_run", ["bench", model, "--repeats", "2"])
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2, res.stderr
    assert len(errors) == 1 and "crashed (SIGSEGV)" in errors[0] and str(model) in errors[0], res.stderr
    assert "Traceback" not in res.stderr


def test_a_hung_child_is_killed_at_its_timeout():
    from edgeresnet._util.isolation import IsolatedFailure, run_isolated

    start = time.monotonic()
    with pytest.raises(IsolatedFailure, match="did not finish within 1 s"):
        run_isolated(time.sleep, 30, timeout=1)
    assert time.monotonic() - start < 10
