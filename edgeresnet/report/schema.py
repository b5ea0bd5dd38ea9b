"""The JSON Schema of ``report.json`` (``schema.json``, shipped in the package) and its check."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from edgeresnet.errors import ConfigError, MissingDependencyError

SCHEMA_PATH = Path(__file__).with_name("schema.json")


@lru_cache(maxsize=1)
def report_schema() -> dict:
    """The schema as a dict."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_report(data: dict) -> None:
    """Raise ConfigError naming the first place ``data`` departs from the schema (needs ``jsonschema``)."""
    try:
        import jsonschema
    except ImportError:
        raise MissingDependencyError("checking a report against its schema needs jsonschema: pip install jsonschema") from None
    validator = jsonschema.Draft202012Validator(report_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"report.json does not match its schema at {where}: {e.message[:200]}")
