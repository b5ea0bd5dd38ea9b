"""Record a benchmark's printed tables in ``benchmarks/RESULTS.md``, with the date, machine and command.

Every script in this folder ends with ``sys.exit(run(main))``. Run as usual, a script only
prints; with ``--results`` it also appends a dated section to RESULTS.md holding what it
printed on stdout (its tables; progress goes to stderr and is left out), the machine it ran
on and the exact command line, so results are never copied by hand::

    nice -n 10 python benchmarks/edgetpu_mapping.py --results

The section is appended only when the script finishes without an error.
"""

from __future__ import annotations

import datetime
import io
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
FLAG = "--results"
HELP = f"  {FLAG}  also append the printed tables, date, machine and command to benchmarks/RESULTS.md"


def memory_gib() -> Optional[float]:
    """Total memory in GiB from /proc/meminfo (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> str:
    """One line: architecture, cores, memory, OS, Python, and the load when the run started."""
    mem = memory_gib()
    parts = [platform.machine() or "unknown architecture", f"{os.cpu_count()} cores"]
    parts.append(f"{mem:.0f} GiB memory" if mem is not None else "memory unknown")
    parts.append(f"{platform.system()} {platform.release()}")
    parts.append(f"Python {platform.python_version()}")
    if hasattr(os, "getloadavg"):
        parts.append("load average at start " + "/".join(f"{v:.1f}" for v in os.getloadavg()))
    return ", ".join(parts)


def section(title: str, command: str, output: str, machine_line: str, when: Optional[datetime.datetime] = None) -> str:
    """The Markdown section for one run."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    body = output.rstrip("\n").replace("```", "'''")
    return (
        f"\n## {when:%Y-%m-%d %H:%M} UTC: {title}\n\n"
        f"- machine: {machine_line}\n"
        f"- command: `{command}`\n\n"
        f"```text\n{body}\n```\n"
    )


def append_section(title: str, command: str, output: str, path: Path = RESULTS,
                   machine_line: Optional[str] = None) -> Path:
    """Append one dated section (date, machine, command, printed output) to ``path``."""
    text = section(title, command, output, machine_line or machine())
    if not path.exists():
        text = "# Benchmark results\n" + text
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    return path


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy."""

    def __init__(self, stream):
        self.stream = stream
        self.copy = io.StringIO()

    def write(self, s):
        self.copy.write(s)
        return self.stream.write(s)

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return self.stream.isatty()


def run(main: Callable[[], Optional[int]], argv: Optional[list] = None, path: Path = RESULTS) -> int:
    """Run a benchmark's ``main()`` (which reads ``sys.argv``); with ``--results``, record what it printed."""
    args = list(sys.argv[1:] if argv is None else argv)
    record = FLAG in args
    args = [a for a in args if a != FLAG]
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        shown = script
    sys.argv = [sys.argv[0], *args]
    if not record:
        try:
            return main() or 0
        except SystemExit as exc:
            if exc.code in (0, None) and ("-h" in args or "--help" in args):
                print(HELP)
            raise
    start_machine = machine()
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        rc = main() or 0
    finally:
        sys.stdout = tee.stream
    if rc == 0:
        module = sys.modules.get(getattr(main, "__module__", ""), None)
        doc = (getattr(module, "__doc__", None) or "").strip().splitlines()
        title = f"{shown}" + (f" ({doc[0].rstrip('.')})" if doc else "")
        command = " ".join(shlex.quote(a) for a in ["python", str(shown), *args, FLAG])
        append_section(title, command, tee.copy.getvalue(), path, start_machine)
        print(f"appended to {path}", file=sys.stderr)
    return rc
