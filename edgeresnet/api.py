"""The public Python API: the CLI's commands as functions (``import edgeresnet``).

Every function raises :class:`~edgeresnet.errors.EdgeResNetError` (or a
subclass) for anything the caller can fix, and never prints: progress and
notices go to the optional ``progress(stage, done, total)`` and
``notify(message)`` callbacks. Importing this module imports no TensorFlow;
:func:`convert` and :func:`report` import it when called, the device-side
functions (:func:`inspect`, :func:`predict`, :func:`benchmark`) never do.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Callable, Optional, Sequence, Union

from edgeresnet.errors import ConfigError

PathLike = Union[str, "os.PathLike[str]"]
ProgressFn = Callable[[str, int, int], None]
NotifyFn = Callable[[str], None]

# ConvertOptions fields that name a file or folder: a pathlib.Path is taken as well as a str.
_PATH_FIELDS = ("model", "calib", "eval", "out", "train", "labels", "weights")


def _as_tuple(value, name: str) -> tuple:
    """``"cpu"`` or ``["cpu", "gpu"]`` -> ``("cpu", "gpu")``."""
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(f"{name} takes a name or a list of names, got {value!r}") from None


def _options(model, out, overwrite, fields_given: dict):
    """A validated ``ConvertOptions`` from keyword arguments named as its fields (paths may be ``Path``)."""
    from edgeresnet.host.pipeline import ConvertOptions
    from edgeresnet.host.training.prune import PruneConfig
    from edgeresnet.host.training.qat import QATConfig

    known = {f.name for f in fields(ConvertOptions)}
    unknown = sorted(set(fields_given) - known)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; the options are the fields of ConvertOptions: "
                          f"{', '.join(sorted(known - {'model', 'out', 'overwrite'}))}")
    given = dict(fields_given, model=model, out=out, overwrite=overwrite)
    for name in _PATH_FIELDS:
        if given.get(name) is not None:
            given[name] = os.fspath(given[name])
    for name in ("targets", "formats"):
        if name in given:
            given[name] = _as_tuple(given[name], name)
    seed = given.get("seed", 0)
    if isinstance(given.get("prune"), (int, float)) and not isinstance(given["prune"], bool):
        given["prune"] = PruneConfig(sparsity=given["prune"], seed=seed)  # a sparsity, as `convert --prune S`
    if isinstance(given.get("cluster"), (int, float)) and not isinstance(given["cluster"], bool):
        from edgeresnet.host.training.clustering import ClusterConfig

        given["cluster"] = ClusterConfig(given["cluster"], seed=seed)  # a number of clusters, as `convert --cluster N`
    if given.get("qat") is True:
        given["qat"] = QATConfig(seed=seed)  # as `convert --qat`
    elif given.get("qat") is False:
        given["qat"] = None
    return ConvertOptions(**given)


def convert(
    model: Optional[PathLike] = None,
    *,
    out: PathLike = "edgeresnet-out",
    overwrite: bool = False,
    progress: Optional[ProgressFn] = None,
    notify: Optional[NotifyFn] = None,
    **options,
):
    """Convert ``model`` to TFLite for each target, verify its drift, write a report to ``out``; return the report.

    ``model`` is a .h5 / .keras file, a SavedModel folder or a built-in
    architecture name; ``None`` converts the built-in reference ResNet-8 and
    verifies it on built-in held-out digits. The other keyword arguments are
    the fields of :class:`~edgeresnet.host.pipeline.ConvertOptions`, named as
    the ``convert`` flags: ``int8=True``, ``targets=("cpu", "edgetpu")`` (or one
    name), ``calib=DIR``, ``eval=DIR``, ``max_drop=1.0``, ``prune=0.5`` (a
    sparsity), ``qat=True``, ``cluster=16`` (clusters per kernel)... Returns the
    :class:`~edgeresnet.report.RunReport` (also written to ``out/report.json``).
    Raises :class:`~edgeresnet.errors.DriftBudgetExceeded` over ``max_drop`` and
    :class:`~edgeresnet.errors.ConversionError` when a variant fails, after
    writing everything to ``OUT.failed``.

    >>> report = edgeresnet.convert(int8=True, targets=["cpu", "edgetpu"], out="out")  # doctest: +SKIP
    >>> [(v.name, v.drift.top1) for v in report.variants]  # doctest: +SKIP
    """
    from edgeresnet.host.pipeline import run_convert

    return run_convert(_options(model, out, overwrite, options), progress=progress, notify=notify)


def report(
    model: Optional[PathLike] = None,
    *,
    out: PathLike = "edgeresnet-report",
    overwrite: bool = False,
    sparsities: Sequence[float] = (),
    latency: bool = True,
    bench_repeats: int = 30,
    progress: Optional[ProgressFn] = None,
    notify: Optional[NotifyFn] = None,
    **options,
):
    """Build every sensible variant of ``model``, measure each, write all report formats to ``out``; return the report.

    As ``edgeresnet report``: every precision each target takes (default
    targets: all registered ones) plus pruned int8 variants at ``sparsities``;
    ``latency`` times each variant here (``bench_repeats`` timed runs). Other
    keyword arguments are as for :func:`convert`. Writes report.json,
    report.md, report.csv, report.html and accuracy_vs_size.png.

    >>> run = edgeresnet.report(targets="cpu", out="sweep", bench_repeats=5)  # doctest: +SKIP
    >>> sorted(v.precision for v in run.variants)  # doctest: +SKIP
    ['dynamic', 'fp32', 'int16x8', 'int8']
    """
    from edgeresnet.device.bench import BenchConfig
    from edgeresnet.host.pipeline import run_report
    from edgeresnet.targets import target_names

    sparsities = tuple(sparsities)
    options.setdefault("targets", target_names())
    if sparsities:
        options.setdefault("prune", sparsities[0])  # how pruned variants are made, as `report --sparsity S1,S2`
    opts = _options(model, out, overwrite, options)
    bench_config = BenchConfig(warmup=5, repeats=bench_repeats) if latency else None
    return run_report(opts, sparsities=sparsities, bench_config=bench_config, progress=progress, notify=notify)


def optimize(
    model: PathLike,
    *,
    train: PathLike,
    eval: PathLike,  # noqa: A002 - the name of the command's option
    out: PathLike = "edgeresnet-optimize",
    max_size: Optional[int] = None,
    max_download: Optional[int] = None,
    max_latency: Optional[float] = None,
    max_memory: Optional[int] = None,
    max_drop: Optional[float] = None,
    progress: Optional[ProgressFn] = None,
    notify: Optional[NotifyFn] = None,
    **options,
):
    """The most accurate int8 model of ``model`` within every budget given, as ``edgeresnet optimize``
    (on ``target="cpu"`` also int8 with its worst layers in float).

    Other keyword arguments are the command's options by their field names (``target``, ``epochs``,
    ``jobs``, ``threads``, ``overwrite``, ...; see ``OptimizeOptions``). Returns an ``OptimizeResult``
    (``chosen``, ``candidates``, ``front``, ``why``); raises ``BudgetNotMet`` naming the closest candidate.
    """
    from edgeresnet.host.optimize import Budgets, OptimizeOptions
    from edgeresnet.host.optimize.run import run_optimize

    known = {f.name for f in fields(OptimizeOptions)} - {"model", "train", "eval", "out", "budgets"}
    unknown = sorted(set(options) - known)
    if unknown:  # as convert: the project's error naming the options, not a TypeError from the dataclass
        raise ConfigError(f"unknown option {unknown[0]!r}; the options are the budgets (max_size, max_download, "
                          "max_latency, max_memory, max_drop) and the fields of OptimizeOptions: "
                          f"{', '.join(sorted(known))}")
    if options.get("calib") is not None:
        options["calib"] = str(options["calib"])  # a Path, as for the other folders
    budgets = Budgets(size=max_size, download=max_download, latency=max_latency, memory=max_memory, drop=max_drop)
    opts = OptimizeOptions(model=str(model), train=str(train), eval=str(eval), out=str(out), budgets=budgets,
                           **options)
    return run_optimize(opts, progress=progress, notify=notify)


def inspect(path: Union[PathLike, bytes], *, gpu: bool = True, runtimes: bool = True):
    """Will this .tflite run on cpu / edgetpu / gpu? Ops, tensors, quantization, a verdict per target.

    ``path`` is any TFLite file (or its bytes). ``gpu=False`` skips the GPU
    analysis, ``runtimes=False`` the check that each installed interpreter
    loads and runs it. Needs no TensorFlow. Returns an
    :class:`~edgeresnet.device.inspection.InspectReport` (``.to_dict()``,
    ``.to_json()``, ``.verdicts``).

    >>> info = edgeresnet.inspect("out/model_int8_cpu.tflite")  # doctest: +SKIP
    >>> info.precision, info.verdicts["edgetpu"].ok  # doctest: +SKIP
    """
    from edgeresnet.device.inspection import inspect_tflite

    return inspect_tflite(path if isinstance(path, (bytes, bytearray)) else os.fspath(path), gpu=gpu, runtimes=runtimes)


def predict(model, images: Union[PathLike, Sequence[PathLike]], k: int = 5, **overrides):
    """Top-``k`` classes of each image file, with a .tflite model (a path or a :class:`Classifier`).

    Input size, normalization and class names come from the model's metadata;
    ``overrides`` replace them for models from elsewhere (``labels=FILE``,
    ``preset=NAME``, ``mean=(...)``, ``std=(...)``, ``resize="crop"|"stretch"``)
    and apply only when ``model`` is a path. Needs no TensorFlow. Returns one
    :class:`~edgeresnet.device.predict.Prediction` per image
    (``.top``: ``(index, label, score)``, best first).

    >>> [p.top[0] for p in edgeresnet.predict("model.tflite", ["cat.png", "dog.png"], k=3)]  # doctest: +SKIP
    """
    from edgeresnet.device.predict import Classifier, Overrides
    from edgeresnet.device.predict import predict as run_predict

    if isinstance(model, Classifier):
        if overrides:
            raise ConfigError(f"{', '.join(overrides)}: give the overrides to Classifier(path, Overrides(...)), "
                              "or pass the model's path")
        clf = model
    else:
        clf = Classifier(os.fspath(model), Overrides(**overrides))
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    return run_predict(clf, list(images), k)


def benchmark(
    path: Union[PathLike, bytes],
    *,
    repeats: int = 50,
    warmup: int = 10,
    threads: Optional[int] = None,
    interpreter: Optional[str] = None,
):
    """Time a .tflite model's ``invoke()`` on this machine (random input); needs no TensorFlow.

    ``warmup`` untimed runs, then ``repeats`` timed ones; ``interpreter``
    forces ai-edge-litert, tflite-runtime or tf.lite. The model is first run
    once in a child process, so a file that crashes the interpreter is a
    :class:`~edgeresnet.errors.TFLiteFileError` here. Returns a
    :class:`~edgeresnet.device.bench.BenchResult` (``median_ms``, ``p90_ms``, ...).

    >>> edgeresnet.benchmark("out/model_int8_cpu.tflite", repeats=20).median_ms  # doctest: +SKIP
    """
    from edgeresnet.device.bench import BenchConfig
    from edgeresnet.device.bench import benchmark as run_benchmark

    config = BenchConfig(warmup=warmup, repeats=repeats, threads=threads)
    model = path if isinstance(path, (bytes, bytearray)) else os.fspath(path)
    return run_benchmark(model, config, backend=interpreter)
