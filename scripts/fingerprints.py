"""sha256 of every .tflite edgeresnet emits over a matrix of settings.

A refactoring check: run it before and after a change that must not alter
behaviour, then compare the two JSON files.

    python scripts/fingerprints.py OUT.json [--quick]

Each row converts the built-in reference model (its own data, seeded), so the
run needs no files. Rows cover every int8 method, every target, every io type
and and every precision.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROWS = {
    **{f"int8-{m}-all-targets": ["--int8", "--int8-method", m, "--target", "cpu",
                                 "--target", "edgetpu", "--target", "gpu"]
       for m in ("minmax", "mse", "mse+bias", "mse+gptq")},
    "int8-io-int8": ["--int8", "--io", "int8"],
    "int8-io-float32": ["--int8", "--io", "float32"],
    "int16x8": ["--precision", "int16x8"],
    "dynamic": ["--precision", "dynamic"],
    "fp32": ["--precision", "fp32"],
}


def fingerprint(args: list[str], work: Path) -> dict[str, str]:
    out = work / "out"
    cmd = [sys.executable, "-m", "edgeresnet.cli", "convert", *args, "--out", str(out), "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tflite"))}


def main() -> int:
    dest = Path(sys.argv[1])
    rows = dict(list(ROWS.items())[:2]) if "--quick" in sys.argv else ROWS
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in rows.items():
            result[name] = fingerprint(args, Path(tmp))
            print(name, json.dumps(result[name]), flush=True)
    dest.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
