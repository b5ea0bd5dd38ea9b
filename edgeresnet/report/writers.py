"""The registry of report writers: each format is a name and one function.

``convert`` writes ``json`` and ``md`` unless ``--format`` adds more; ``report``
writes every format. A writer takes the ``report.json`` dict and the output
folder and returns the files it wrote (atomically: temporary name, rename).
Writers run in registry order, so ``html`` finds the ``png`` written before it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from edgeresnet.errors import ConfigError, OutputExistsError
from edgeresnet._util.files import atomic_write_text

Writer = Callable[[dict, Path], Path]

FILE_NAMES = {"json": "report.json", "md": "report.md", "csv": "report.csv",
              "png": "accuracy_vs_size.png", "html": "report.html"}


def check_parent(path: Path) -> Path:
    """``path``, once its folder is known to exist (OutputExistsError naming the folder otherwise)."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputExistsError(f"the folder {parent} for {path.name} does not exist; create it first")
    return path


def _json(data: dict, folder: Path) -> Path:
    return atomic_write_text(folder / FILE_NAMES["json"], json.dumps(data, indent=2, allow_nan=False) + "\n")


def _md(data: dict, folder: Path) -> Path:
    from edgeresnet.report.markdown import to_markdown

    return atomic_write_text(folder / FILE_NAMES["md"], to_markdown(data))


def _csv(data: dict, folder: Path) -> Path:
    from edgeresnet.report.csv_table import write_csv

    return write_csv(data, folder / FILE_NAMES["csv"])


def _png(data: dict, folder: Path) -> Path:
    from edgeresnet.report.plot import plot_accuracy_vs_size

    return plot_accuracy_vs_size(data, folder / FILE_NAMES["png"])


def _html(data: dict, folder: Path) -> Path:
    from edgeresnet.report.html import write_html

    plot = folder / FILE_NAMES["png"]  # embedded when the png writer ran before
    return write_html(data, folder / FILE_NAMES["html"], plot if plot.is_file() else None)


WRITERS: dict[str, Writer] = {"json": _json, "md": _md, "csv": _csv, "png": _png, "html": _html}
DEFAULT_FORMATS = ("json", "md")  # what `convert` writes without --format


def check_formats(formats) -> tuple[str, ...]:
    """``formats`` as a tuple of known writer names (ConfigError naming the unknown ones)."""
    formats = tuple(formats)
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ConfigError(f"unknown report format {', '.join(map(repr, unknown))}; choose from {', '.join(WRITERS)}")
    return formats


def write_formats(data: dict, folder, formats=DEFAULT_FORMATS) -> dict[str, Path]:
    """Write ``data`` (a ``report.json`` dict) in each of ``formats`` into ``folder``, in registry order."""
    wanted = set(check_formats(formats))
    folder = Path(folder)
    return {name: WRITERS[name](data, folder) for name in WRITERS if name in wanted}
