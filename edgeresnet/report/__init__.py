"""The run report: typed records, their JSON Schema, and one registry of writers.

- ``records.py``: :class:`VariantRecord` (declared fields, a :class:`Status`)
  and :class:`RunReport`; ``report.json`` is ``RunReport.to_dict()``.
- ``schema.json`` / ``schema.py``: the JSON Schema of ``report.json``, shipped
  in the package, and :func:`validate_report`.
- ``writers.py``: the writer registry (json, md, csv, png, html) that both
  ``convert`` (json and md unless ``--format`` adds more) and ``report`` (all) use.
- ``markdown.py``: ``report.md`` and the table the CLI prints; one module per
  other view: ``csv_table.py`` (the CSV table), ``plot.py`` (the
  accuracy-vs-size plot, its labels placed by ``layout.py``) and ``html.py``
  (the HTML page), which read the variants alike through ``reading.py``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

from edgeresnet.report.markdown import runtimes_markdown, safe_mode_text, to_markdown, variants_table
from edgeresnet.report.records import OPTIONAL_FIELDS, STATUSES, RunReport, Status, VariantRecord
from edgeresnet.report.writers import DEFAULT_FORMATS, WRITERS, check_formats, write_formats


def write_reports(report: RunReport, folder, formats=DEFAULT_FORMATS) -> dict:
    """Write ``report`` into ``folder`` in each of ``formats`` (atomically); return its dict."""
    data = report.to_dict()
    write_formats(data, Path(folder), formats)
    return data


__all__ = [
    "DEFAULT_FORMATS", "OPTIONAL_FIELDS", "STATUSES", "RunReport", "Status", "VariantRecord", "WRITERS",
    "check_formats", "runtimes_markdown", "safe_mode_text", "to_markdown", "variants_table", "write_formats",
    "write_reports",
]


class _CallablePackage(types.ModuleType):
    """``edgeresnet.report(...)`` runs the variant sweep (:func:`edgeresnet.api.report`).

    The package's name is also the public function's, and importing a package
    always sets it on its parent, so the package itself is made callable: it
    stays a package for every ``from edgeresnet.report import ...``.
    """

    def __call__(self, *args, **kwargs):
        from edgeresnet.api import report

        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
