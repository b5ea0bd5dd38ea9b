"""Where the declarative files live: ``converters/`` and ``calibration/``.

In the repository they are top-level folders. A built wheel carries them
inside the package as ``edgeresnet/_resources/<name>`` (see pyproject.toml), so an
installed package works from any directory.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]


def resource_dir(name: str) -> Path:
    """Path of the ``converters`` or ``calibration`` folder, installed or in a checkout."""
    if name not in ("converters", "calibration"):
        raise ValueError(f"unknown resource folder {name!r}")
    for candidate in (_PKG / "_resources" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"resource folder {name!r} is missing from this installation")


def read_toml(path, what: str) -> dict:
    """A declarative file as a dict; ConfigError naming the file (as ``what``) when it cannot be read."""
    from edgeresnet._util.toml import tomllib
    from edgeresnet.errors import ConfigError

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
