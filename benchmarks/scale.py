"""Memory and throughput of a convert on many images: streamed data keeps peak RSS flat.

Builds (once, in a cache folder outside the repository) a labelled folder of N
JPEG images at 224x224 by upscaling the CIFAR-10 photographs of
``$EDGERESNET_TEST_DATA/cifar10`` (or takes ``--data DIR``), then, for each N in
``--images``, runs in a fresh process::

    edgeresnet convert MODEL --weights W.h5 --input-size PX --int8 --prune 0.5 \\
        --train DIR --epochs 1 --eval DIR --calib DIR

with a zoo ResNet (weights: the architecture's own initialisation saved to the
cache, a 10-class head; this measures memory and speed, not accuracy) at the
default fine-tuning batch (the one convert chooses for the model and the
memory; ``--batch-size`` to give one) and prints, per N, the peak memory and
images/s of each stage (calibration, fine-tuning, float evaluation, each
.tflite evaluation). A stage's seconds run
from the end of the stage before it, so model conversion counts in the
"calibrate" stage that follows it. On a shared machine the images/s move with
the load; the memory does not.

Memory, three ways, because fine-tuning at 224x224 runs in a child process of
the convert (``ConvertOptions.train_in_child``):

- ``RSS self``: ``resource.getrusage(RUSAGE_SELF)`` peak of the convert process;
- ``RSS child``: ``getrusage(RUSAGE_CHILDREN)``, the largest finished child's peak
  (the fine-tuning process);
- ``tree``: the peak over time of the summed RSS of the convert process and
  all its children, sampled every 0.1 s from ``/proc``; it counts the
  TensorFlow libraries both processes map twice;
- ``held``: what the machine held for the run at once: the peak count of
  distinct physical pages resident in the tree (``/proc/PID/pagemap``, root
  only), else an estimate (summed private memory plus the largest
  file-backed RSS of one process). PSS would also count shared pages once,
  but it splits them with every other program mapping the same libraries
  (another TensorFlow job), so it reads low on a shared machine.

    python benchmarks/scale.py --images 2000 8000 --model resnet18 --input-size 64
    python benchmarks/scale.py --images 5000 20000 --model resnet18   # 224x224: hours on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STORED_SIDE = 224  # the images on disk; the model may take a smaller --input-size


def _cifar() -> Path:
    from _data import data_root

    return data_root() / "cifar10"


def build_folder(n: int, cache: Path) -> Path:
    """``cache/cifar224-N/<class>/*.jpg``: N upscaled CIFAR-10 photographs (built once, reused)."""
    from PIL import Image

    folder = cache / f"cifar{STORED_SIDE}-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    classes = sorted(d for d in (_cifar() / "train").iterdir() if d.is_dir()) if (_cifar() / "train").is_dir() else []
    sources = [sorted(c.glob("*.jpg")) + sorted((_cifar() / "test" / c.name).glob("*.jpg")) for c in classes]
    if not sources or not all(sources):
        raise SystemExit(f"error: no CIFAR-10 images under {_cifar()}; set EDGERESNET_TEST_DATA or pass --data DIR")
    for i in range(n):  # round-robin over the classes, so every N has all ten
        members = sources[i % len(sources)]
        src = members[(i // len(sources)) % len(members)]
        dest = folder / src.parent.name / f"{i:06d}.jpg"
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im.convert("RGB").resize((STORED_SIDE, STORED_SIDE), Image.Resampling.BILINEAR).save(dest, quality=90)
    done.write_text(str(n))
    return folder


def weights_file(model: str, size: int, cache: Path) -> Path:
    path = cache / f"{model}-{size}-10.h5"
    if not path.exists():
        from edgeresnet.host.models import build_model

        build_model(model, input_shape=(size, size, 3), classes=10).save_weights(str(path))
    return path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _memory_kb(pid: int) -> tuple[int, int, int]:
    """(RssAnon + RssShmem, RssFile, VmRSS) of one process in kB; zeros when it is gone."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
                fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields.get("RssAnon", 0) + fields.get("RssShmem", 0), fields.get("RssFile", 0), fields.get("VmRSS", 0)


_PFN_MASK = (1 << 55) - 1


def _resident_frames(pid: int):
    """The physical page frames resident in ``pid`` (``/proc/PID/pagemap``; needs root for real frame numbers),
    or None when they cannot be read."""
    import numpy as np

    frames = []
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            for line in maps:
                fields = line.split()
                if fields[-1] == "[vsyscall]":
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                pagemap.seek((start // 4096) * 8)
                entries = np.frombuffer(pagemap.read(((end - start) // 4096) * 8), dtype=np.uint64)
                present = entries[(entries >> np.uint64(63)).astype(bool)] & np.uint64(_PFN_MASK)
                frames.append(present)
    except OSError:
        return None
    frames = np.concatenate(frames) if frames else np.zeros(0, np.uint64)
    if len(frames) and not frames.any():  # not root: the kernel hides the frame numbers
        return None
    return frames


class TreeMemory(threading.Thread):
    """Samples the memory of this process and all its descendants together; keeps the peaks (MB).

    ``peak_rss``: the summed RSS (counts the TensorFlow libraries both
    processes map twice). ``exact``: the distinct physical pages resident in
    any of them (from ``/proc/PID/pagemap``, root only), i.e. what the
    machine holds for the tree. ``peak_unique``: without root, an estimate
    of the same: the summed private (anonymous) memory plus the largest
    file-backed RSS of any one of them. Unlike PSS, neither depends on what
    other programs on the machine map the same libraries.
    """

    def __init__(self, interval: float = 0.1, exact_every: int = 10):
        super().__init__(daemon=True)
        self.interval, self.peak_rss, self.peak_unique, self.stop = interval, 0.0, 0.0, threading.Event()
        self.samples, self.exact_every = 0, exact_every  # pagemap is read every exact_every-th sample (it costs CPU)
        self.exact = None  # peak of the distinct resident pages of the tree (MB); False: pagemap not readable

    def run(self):
        while not self.stop.is_set():
            pids, todo = [], [os.getpid()]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo += _children(pid)
            samples = [_memory_kb(p) for p in pids]
            rss = sum(s[2] for s in samples)
            unique = sum(s[0] for s in samples) + max(s[1] for s in samples)
            self.peak_rss, self.peak_unique = max(self.peak_rss, rss / 1024), max(self.peak_unique, unique / 1024)
            self.samples += 1
            if self.exact is not False and self.samples % self.exact_every == 1 % self.exact_every:
                import numpy as np

                frames = [_resident_frames(p) for p in pids]
                if any(f is None for f in frames):
                    self.exact = False if self.exact is None else self.exact
                else:
                    pages = len(np.unique(np.concatenate(frames)))
                    self.exact = max(self.exact or 0.0, pages * 4096 / 2**20)
            self.stop.wait(self.interval)


def _rusage_mb(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def run_one(args) -> dict:
    """One convert in this process; per-stage seconds, images and the RSS peak after each stage."""
    from edgeresnet.host.pipeline import ConvertOptions, run_convert
    from edgeresnet.host.training.prune import PruneConfig

    stages: dict = {}
    last = [time.perf_counter()]  # a stage starts where the one before it ended (its first batch counts)

    def progress(stage, done, total):
        stage = str(stage)
        now = time.perf_counter()
        s = stages.setdefault(stage, {"start": last[0], "images": total})
        s["end"] = last[0] = now
        s["peak_rss_mb"] = _rusage_mb(resource.RUSAGE_SELF)
        s["peak_child_mb"] = _rusage_mb(resource.RUSAGE_CHILDREN)
        s["peak_tree_mb"] = tree.peak_rss
        s["peak_held_mb"] = tree.exact or tree.peak_unique

    out = Path(args.out)
    opts = ConvertOptions(
        model=args.model, weights=args.weights, input_size=args.input_size, int8=True,
        calib=args.data, eval=args.data, train=args.data, out=str(out), overwrite=True,
        prune=PruneConfig(sparsity=0.5, epochs=1), batch_size=args.batch_size, formats=("json", "md"),
    )
    tree = TreeMemory()
    tree.start()
    started = time.perf_counter()
    report = run_convert(opts, progress=progress)
    total = time.perf_counter() - started
    tree.stop.set()
    tree.join()
    memory = report.memory
    rows = []
    for name, s in stages.items():
        seconds = max(s["end"] - s["start"], 1e-9)
        images = s["images"]
        if name.startswith("fine-tune"):  # its progress counts steps
            images = s["images"] * memory["batch_size"]
        rows.append({"stage": name, "seconds": round(seconds, 1), "images_per_s": round(images / seconds, 1),
                     "peak_rss_mb": round(s["peak_rss_mb"]), "peak_child_mb": round(s["peak_child_mb"]),
                     "peak_tree_mb": round(s["peak_tree_mb"]), "peak_held_mb": round(s["peak_held_mb"])})
    return {
        "images": report.evaluation["count"], "seconds": round(total, 1), "stages": rows,
        "peak_rss_mb": round(_rusage_mb(resource.RUSAGE_SELF)), "peak_child_mb": round(_rusage_mb(resource.RUSAGE_CHILDREN)),
        "peak_tree_mb": round(tree.peak_rss), "peak_tree_unique_mb": round(tree.peak_unique),
        "peak_tree_exact_mb": round(tree.exact) if tree.exact else None,
        "train_in_child": (report.to_dict().get("prune") or {}).get("process"),
        "batch": f"{memory['batch_size']} ({memory['batch_size_from']})", "bound_mb": memory.get("bound_mib"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="+", default=[2000, 8000], help="image counts to compare")
    ap.add_argument("--model", default="resnet18", help="a zoo architecture (see: edgeresnet models)")
    ap.add_argument("--input-size", type=int, default=64, help="model input side (images are stored at 224)")
    ap.add_argument("--batch-size", type=int, help="fine-tuning batch (default: the one convert chooses)")
    ap.add_argument("--data", type=Path, help="an existing labelled folder (10 classes) instead of building one")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeresnet-scale",
                    help="where built image folders and weights are kept (never the repository)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.data = str(args.data)
        print(json.dumps(run_one(args)))
        return 0

    args.cache.mkdir(parents=True, exist_ok=True)
    weights = weights_file(args.model, args.input_size, args.cache)
    results = []
    for n in args.images:
        data = args.data or build_folder(n, args.cache)
        out = args.cache / f"out-{n}"
        cmd = [sys.executable, __file__, "--child", "--images", str(n), "--model", args.model,
               "--input-size", str(args.input_size), "--data", str(data), "--weights", str(weights), "--out", str(out)]
        cmd += ["--batch-size", str(args.batch_size)] if args.batch_size is not None else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(f"\n{args.model} at {args.input_size}x{args.input_size}, images stored at {STORED_SIDE}x{STORED_SIDE}, "
          f"prune 0.5, 1 epoch, fine-tuning batch {results[0]['batch'] if results else '?'}, int8 cpu; "
          f"bound claimed per process: {results[0]['bound_mb'] if results else '?'} MiB")
    print("peak MB so far at each stage's end: RSS of the convert process (self), of its fine-tuning child, and the "
          "sampled sum over both (tree), and what the machine held for them, shared pages once (held)")
    print(f"{'images':>7} {'stage':<44} {'s':>7} {'img/s':>7} {'self':>6} {'child':>6} {'tree':>6} {'held':>6}")
    for r in results:
        for row in r["stages"]:
            print(f"{r['images']:>7} {row['stage'][:44]:<44} {row['seconds']:>7} {row['images_per_s']:>7} "
                  f"{row['peak_rss_mb']:>6} {row['peak_child_mb']:>6} {row['peak_tree_mb']:>6} {row['peak_held_mb']:>6}")
        print(f"{r['images']:>7} {'whole run':<44} {r['seconds']:>7} {'':>7} {r['peak_rss_mb']:>6} "
              f"{r['peak_child_mb']:>6} {r['peak_tree_mb']:>6} {r['peak_tree_exact_mb'] or r['peak_tree_unique_mb']:>6}")
        held = (f"{r['peak_tree_exact_mb']} MB (distinct resident pages, from pagemap)" if r["peak_tree_exact_mb"]
                else f"~{r['peak_tree_unique_mb']} MB (private memory + the largest file-backed RSS; pagemap needs root)")
        print(f"{'':>7} what the machine held for the run at once, shared pages counted once: {held}")
    return 0


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))
