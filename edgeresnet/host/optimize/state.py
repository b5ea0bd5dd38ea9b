"""The search's resume state: one JSON record and one .tflite per finished candidate (and a fine-tuned one's
float weights, which the mixed family builds on).

It lives in a hidden folder beside --out, ``.OUT.optimize-state/``, written file by file with atomic
renames (the .tflite first, its record last, so a record always has its model). A search that is killed
and started again with the same model, data and settings (``settings.json``, the options' fingerprint)
reuses every finished candidate and the layer profile; with other settings the old state is discarded.
The folder is removed when the search has written --out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from edgeresnet._util.files import atomic_write_bytes, atomic_write_text


def state_path(out) -> Path:
    out = Path(out)
    return out.resolve().parent / f".{out.name}.optimize-state"


def save_weights(folder: Path, key: str, model) -> None:
    """Keep a fine-tuned candidate's float weights in the state ``folder`` (the mixed family builds on them)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, *model.get_weights())
    atomic_write_bytes(Path(folder) / "candidates" / f"{key}.weights.npz", buffer.getvalue())


def load_weights(folder: Path, key: str) -> Optional[list]:
    """The weights :func:`save_weights` kept for ``key``, or None."""
    import numpy as np

    try:
        with np.load(Path(folder) / "candidates" / f"{key}.weights.npz") as kept:
            return [kept[f"arr_{k}"] for k in range(len(kept.files))]
    except (OSError, ValueError):
        return None


class SearchState:
    def __init__(self, out, fingerprint: dict):
        self.path = state_path(out)
        self.resumed = 0
        settings = self.path / "settings.json"
        if self.path.is_dir():
            try:
                same = json.loads(settings.read_text("utf-8")) == fingerprint
            except (OSError, ValueError):
                same = False
            if not same:
                shutil.rmtree(self.path)
        (self.path / "candidates").mkdir(parents=True, exist_ok=True)
        atomic_write_text(settings, json.dumps(fingerprint, indent=1, sort_keys=True))
        self.resumed = len(list((self.path / "candidates").glob("*.json")))

    def _record(self, key: str) -> Path:
        return self.path / "candidates" / f"{key}.json"

    def model_path(self, key: str) -> Path:
        return self.path / "candidates" / f"{key}.tflite"

    def finished(self, key: str) -> Optional[dict]:
        """The record of a finished candidate, or None."""
        path = self._record(key)
        if not path.is_file() or not self.model_path(key).is_file():
            return None
        try:
            return json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def save(self, key: str, model: bytes, record: dict) -> None:
        atomic_write_bytes(self.model_path(key), model)
        atomic_write_text(self._record(key), json.dumps(record, indent=1, sort_keys=True))

    def load(self, name: str) -> Optional[object]:
        try:
            return json.loads((self.path / name).read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def keep(self, name: str, value) -> None:
        atomic_write_text(self.path / name, json.dumps(value, indent=1, sort_keys=True))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
