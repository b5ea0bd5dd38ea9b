"""``tomllib`` on Python 3.11+, the ``tomli`` backport before (Raspberry Pi OS Bullseye has 3.9)."""

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["tomllib"]
