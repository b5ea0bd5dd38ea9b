"""``--jobs N``: a run's conversions in N child processes at once.

Conversion (calibration and quantization) is the long part of a sweep and
each variant's is independent. Every model to convert is saved once as a
tf_keras ``.h5`` in the run's temporary folder, the calibration samples as a
``.npy``, and each (model, precision, io, method) is converted by a fresh
Python (:func:`edgeresnet._util.isolation.run_isolated`; it never re-runs the
caller's ``__main__``). The bytes come back to this process, which then runs,
measures and checks the variants one at a time as with ``--jobs 1``, so
latency is never measured while another conversion is running. A conversion is
deterministic: a reloaded ``.h5`` converts to the same bytes as the model in
memory, so the files are bit-identical to ``--jobs 1``'s.

Models that cannot be saved as ``.h5`` (Keras 3, SavedModels, quantization-
aware models) and conversions that fail in a child are left to the ordinary
in-process path, which then reports them as it always does.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgeresnet._util.isolation import run_isolated

#: A child's conversion may take as long as a big model's calibration does.
CONVERT_TIMEOUT_S = 6 * 3600.0


def _convert_in_child(model_path: str, spec, calib_path: Optional[str], trust_code: bool):
    """In the child: load the saved model and convert it; (model bytes, seconds)."""
    from edgeresnet.host.converter import convert
    from edgeresnet.host.models.loading import load_model

    loaded = load_model(model_path, trust_code=trust_code)
    calib = np.load(calib_path) if calib_path is not None else None
    result = convert(loaded.tflite_converter, spec, calib)
    return result.model, result.seconds


def _save_models(items, folder: Path) -> dict:
    """model_key -> saved .h5 path, for the models tf_keras can save (the others are skipped)."""
    paths = {}
    for key, model in items:
        if getattr(model, "flavor", None) != "tf_keras":
            continue
        path = folder / f"model-{len(paths)}.h5"
        try:
            with warnings.catch_warnings():  # tf_keras calls .h5 "legacy": it is what loads by layer name here
                warnings.simplefilter("ignore")
                model.model.save(str(path))
        except Exception:  # noqa: BLE001 - e.g. custom layers without get_config: converted in-process instead
            continue
        paths[key] = str(path)
    return paths


def convert_in_parallel(
    jobs: int,
    work: list,
    calibration: Optional[np.ndarray],
    folder: Path,
    trust_code: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict:
    """Convert ``work`` ((cache key, LoadedModel, ConversionSpec), ...) ``jobs`` at a time.

    Returns cache key -> (model bytes, seconds) for each
    conversion that succeeded in a child; the rest are for the caller to do.
    """
    folder.mkdir(parents=True, exist_ok=True)
    saved = _save_models({key[0]: model for key, model, _ in work}.items(), folder)
    calib_path = None
    if calibration is not None and any(spec.needs_calibration for _, _, spec in work):
        calib_path = str(folder / "calibration.npy")
        np.save(calib_path, np.asarray(calibration))
    todo = [(key, spec) for key, _, spec in work if key[0] in saved]
    results: dict = {}
    done = 0

    def one(item):
        key, spec = item
        try:
            return key, run_isolated(_convert_in_child, saved[key[0]], spec,
                                     calib_path if spec.needs_calibration else None, trust_code,
                                     timeout=CONVERT_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a crash (IsolatedFailure) or an error: done again in-process, which reports it
            return key, None

    if progress is not None:
        progress(0, len(todo))
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="edgeresnet-convert") as pool:
        for key, answer in pool.map(one, todo):
            done += 1
            if answer is not None:
                results[key] = answer
            if progress is not None:
                progress(done, len(todo))
    return results
