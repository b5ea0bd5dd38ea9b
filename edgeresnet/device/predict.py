"""On the device: classify images and measure accuracy with a ``.tflite`` model alone.

``edgeresnet predict`` and ``edgeresnet eval`` run where only an interpreter
is installed (ai-edge-litert, or tflite-runtime 2.14 on an older Raspberry
Pi): nothing on this path imports TensorFlow. Images are read by
:mod:`edgeresnet.device.images` (Pillow + numpy), the same code the host's
``convert``/``report`` use, and the model runs through
:class:`edgeresnet.device.runtime.TFLiteModel` (which quantizes int8/uint8 inputs
with the tensor's own scale and zero point), so a device measures the numbers
the host measured for the same file.

What a model needs is read from its TFLite metadata (:mod:`edgeresnet.device.metadata`):
input size from the input tensor, normalization mean/std and class labels from
the metadata. Flags override it for models from elsewhere:

- ``labels``: a file with one label per line, in output order.
- ``preset`` (a bundled preset name) or ``mean``/``std`` (applied to 0..255
  pixels as ``(pixel - mean) / std``, the TFLite metadata convention).
- ``resize``: ``crop`` (default) or ``stretch``.

Policies of ``eval`` (also in docs/reference.md):

- The folder has one sub-folder per class. When the model carries labels
  (metadata or ``labels``), each folder is matched *by name* to its label, so a
  folder may hold a subset of the classes and folder order does not matter; a
  folder whose name is not a label is an error. A model without labels takes
  the folders in sorted order as output indices (as ``convert --eval`` does),
  and then the folder count must equal the output count.
- ``samples``/``seed`` pick images exactly as ``convert --eval-samples N --seed S``
  does, so both sides can run on the same subset.
- With ``report``, the model is found in the host's ``report.json`` by sha256
  (or, for reports without it, by file name) and the drop is host top-1 minus
  device top-1, in points; ``max_drop`` is checked against it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from edgeresnet.defaults import RESIZE_POLICIES
from edgeresnet.device.image_files import image_set_sha256, list_images
from edgeresnet.device.images import read_image
from edgeresnet.device.presets import Preset, get_preset, load_presets
from edgeresnet.errors import ConfigError, DataError, TFLiteFileError
from edgeresnet.device.metadata import check_label_count, read_labels_file, read_metadata
from edgeresnet.device.runtime import TFLiteModel, read_tflite_bytes, trial_run_isolated
from edgeresnet.device.verify import agreement, topk_accuracy, unpaired_margin

ProgressFn = Callable[[str, int, int], None]
PathLike = Union[str, Path]

DEFAULT_TOP_K = 5
BATCH = 64  # images decoded and run at a time: memory stays flat on a large folder


# ---------------------------------------------------------------------- what the model needs


@dataclass(frozen=True)
class Overrides:
    """Flags that replace what the model's metadata says (for models edgeresnet did not write)."""

    labels: Optional[PathLike] = None
    preset: Optional[str] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    resize: str = "crop"

    def __post_init__(self):
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"--resize must be {' or '.join(RESIZE_POLICIES)}, got {self.resize!r}")
        if self.preset is not None and (self.mean is not None or self.std is not None):
            raise ConfigError("--preset and --mean/--std both say how to normalize; give one of them")
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if values is None:
                continue
            if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{flag} takes 1 or 3 finite numbers (e.g. 127.5 or 123.7,116.3,103.5), got {values!r}")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ConfigError(f"--std values must be positive, got {self.std!r}")


def parse_numbers(text: Optional[str], flag: str) -> Optional[tuple[float, ...]]:
    """``"127.5"`` or ``"123.7,116.3,103.5"`` -> a tuple of floats (None stays None)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes numbers separated by commas, e.g. 127.5 or 123.7,116.3,103.5; got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} needs at least one number, got {text!r}")
    return values


def _bundled_equivalent(mean: tuple[float, ...], std: tuple[float, ...]) -> Optional[Preset]:
    """The bundled RGB preset whose ``(x * scale - m) / s`` is ``(x - mean) / std``, if any.

    Using it reproduces the host's arithmetic exactly (the host applies the preset).
    """
    for preset in load_presets().values():
        if preset.channel_order != "rgb":
            continue
        pm = [m / preset.scale for m in preset.mean]
        ps = [s / preset.scale for s in preset.std]
        n = max(len(mean), len(std), len(pm), len(ps))
        grow = lambda v: list(v) * n if len(v) == 1 else list(v)  # noqa: E731
        if all(len(v) == n for v in map(grow, (mean, std, pm, ps))) and np.allclose(
            grow(mean), grow(pm), rtol=1e-5, atol=1e-6
        ) and np.allclose(grow(std), grow(ps), rtol=1e-5, atol=1e-6):
            return preset
    return None


@dataclass(frozen=True)
class ModelSetup:
    """How images become this model's input, and what its outputs are called."""

    preset: Preset
    normalization_from: str  # "metadata", "--preset", "--mean/--std", "none (raw 0..255 pixels)"
    labels: Optional[tuple[str, ...]]
    labels_from: Optional[str]  # "metadata", "--labels FILE", None
    resize: str
    input_shape: tuple[int, int, int]
    input_type: str
    metadata: Optional[dict]
    notes: tuple[str, ...] = ()  # what was assumed because the model does not say (the CLI shows them)

    def to_dict(self) -> dict:
        mean, std = self.preset.channel_stats(self.input_shape[2])
        return {
            "input_shape": list(self.input_shape),
            "input_type": self.input_type,
            "resize": self.resize,
            "normalization": {
                "from": self.normalization_from,
                "preset": self.preset.name,
                # as (pixel - mean) / std on 0..255 pixels
                "mean": [round(float(m) / self.preset.scale, 6) for m in mean],
                "std": [round(float(s) / self.preset.scale, 6) for s in std],
                "channel_order": self.preset.channel_order,
            },
            "labels": len(self.labels) if self.labels is not None else None,
            "labels_from": self.labels_from,
        }


def model_setup(model: TFLiteModel, data: bytes, overrides: Overrides, label: str) -> ModelSetup:
    """Preprocessing and labels for ``model``: its metadata, replaced by whatever ``overrides`` gives."""
    shape = tuple(int(d) for d in model.input.shape[1:])
    if len(shape) != 3 or shape[2] not in (1, 3):
        raise TFLiteFileError(
            f"{label} takes input of shape {list(model.input.shape)}; predict and eval need an image input "
            "(1, height, width, 1 or 3 channels)"
        )
    num_classes = int(np.prod(model.output.shape[1:]))
    meta = read_metadata(data, label)
    meta_dict = meta.to_dict() if meta is not None else None
    notes: list[str] = []

    if overrides.preset is not None:
        preset, norm_from = get_preset(overrides.preset), f"--preset {overrides.preset}"
    elif overrides.mean is not None or overrides.std is not None:
        mean = overrides.mean or (0.0,)
        std = overrides.std or (1.0,)
        preset = _bundled_equivalent(mean, std) or Preset(
            name="custom", description="--mean/--std on 0..255 pixels", mean=mean, std=std
        )
        norm_from = "--mean/--std"
    elif meta is not None and meta.mean is not None:
        mean, std = tuple(meta.mean), tuple(meta.std)
        preset = _bundled_equivalent(mean, std) or Preset(
            name="metadata", description="normalization from the model's metadata", mean=mean, std=std
        )
        norm_from = "metadata"
    else:
        preset, norm_from = get_preset("raw"), "none in the metadata: raw 0..255 pixels (use --preset or --mean/--std)"
        said = "has no metadata" if meta is None else "has metadata without normalization (e.g. a BGR preset, which the schema cannot state)"
        notes.append(
            f"{label} {said}; feeding raw 0..255 pixels. If it was trained on other inputs, pass --preset NAME or --mean/--std"
        )

    if overrides.labels is not None:
        labels = read_labels_file(overrides.labels, num_classes)
        labels_from = f"--labels {overrides.labels}"
    elif meta is not None and meta.labels:
        labels = check_label_count(tuple(meta.labels), f"{label}'s metadata (override: --labels FILE)", num_classes)
        labels_from = "metadata"
    else:
        labels, labels_from = None, None
        notes.append(f"{label} carries no labels; showing output indices (pass --labels FILE for class names)")
    return ModelSetup(
        preset=preset,
        normalization_from=norm_from,
        labels=labels,
        labels_from=labels_from,
        resize=overrides.resize,
        input_shape=shape,
        input_type=str(model.input.dtype),
        metadata=meta_dict,
        notes=tuple(notes),
    )


class Classifier:
    """A ``.tflite`` image classifier ready to run on pixels: interpreter + preprocessing + labels."""

    def __init__(
        self,
        path: PathLike,
        overrides: Optional[Overrides] = None,
        backend: Optional[str] = None,
        num_threads: Optional[int] = None,
    ):
        self.path = str(path)
        self.data = read_tflite_bytes(path)
        trial_run_isolated(self.data, self.path, num_threads=num_threads, backend=backend)  # a crash stays in a child
        self.model = TFLiteModel(self.data, num_threads=num_threads, backend=backend)
        self.setup = model_setup(self.model, self.data, overrides or Overrides(), self.path)
        self.sha256 = hashlib.sha256(self.data).hexdigest()

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.model.output.shape[1:]))

    @property
    def interpreter(self) -> str:
        return f"{self.model.backend.name} {self.model.backend.version}"

    def read(self, path: PathLike) -> np.ndarray:
        return read_image(path, self.setup.input_shape, self.setup.resize)

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 pixels -> (N, classes) float outputs (dequantized)."""
        x = self.setup.preset.apply(pixels)
        return self.model.predict(x).reshape(len(pixels), -1)

    def name_of(self, index: int) -> str:
        return self.setup.labels[index] if self.setup.labels is not None else str(index)


# ---------------------------------------------------------------------- predict


@dataclass(frozen=True)
class Prediction:
    image: str
    top: tuple[tuple[int, str, float], ...]  # (index, label, score), best first

    def to_dict(self) -> dict:
        return {"image": self.image, "top": [{"index": i, "label": n, "score": round(s, 6)} for i, n, s in self.top]}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties: lower index first, as top-1 does)."""
    return np.argsort(-np.asarray(scores), kind="stable")[:k]


def predict(clf: Classifier, images: Sequence[PathLike], k: int = DEFAULT_TOP_K) -> list[Prediction]:
    """Top-``k`` classes of each image file."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ConfigError(f"--top-k must be a positive number of classes, got {k!r}")
    if not images:
        raise DataError("no images given; pass one or more image files after the model")
    pixels = np.stack([clf.read(p) for p in images])  # every file is read before any is run
    out = []
    for path, row in zip(images, clf.scores(pixels)):
        idx = top_k(row, min(k, len(row)))
        out.append(Prediction(str(path), tuple((int(i), clf.name_of(int(i)), float(row[i])) for i in idx)))
    return out


# ---------------------------------------------------------------------- host report


@dataclass(frozen=True)
class HostNumbers:
    """What the host measured for this exact file (a variant of its report.json)."""

    report: str
    variant: str
    matched_by: str  # "sha256" or "file name"
    top1: Optional[float]
    top5: Optional[float]
    count: Optional[int]
    float_top1: Optional[float]
    evaluation: dict

    def to_dict(self) -> dict:
        return {
            "report": self.report, "variant": self.variant, "matched_by": self.matched_by,
            "top1": self.top1, "top5": self.top5, "count": self.count, "float_top1": self.float_top1,
            "evaluation_source": self.evaluation.get("source"),
        }


def host_numbers(report_path: PathLike, model_path: PathLike, sha256: str) -> HostNumbers:
    """The variant of ``report_path`` that is this model file: by sha256, else by file name."""
    p = Path(report_path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: no such report; pass the report.json that convert/report wrote for this model") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{p} is not a readable JSON report ({exc}); pass the report.json that convert/report wrote") from None
    variants = doc.get("variants") if isinstance(doc, dict) else None
    if not isinstance(variants, list) or not variants:
        raise DataError(f"{p} has no variants; pass the report.json that convert/report wrote for this model")
    name = Path(model_path).name
    hit, how = next(((v, "sha256") for v in variants if isinstance(v, dict) and v.get("sha256") == sha256), (None, ""))
    if hit is None:
        by_name = [v for v in variants if isinstance(v, dict) and Path(str(v.get("path") or v.get("name") or "")).name == name]
        if by_name and by_name[0].get("sha256"):
            raise DataError(
                f"{model_path} is not the file {p} measured (same name, different sha256); "
                "copy the model again from the host, or pass the report that belongs to this file"
            )
        if by_name:
            hit, how = by_name[0], "file name"
    if hit is None:
        names = ", ".join(str(v.get("name")) for v in variants if isinstance(v, dict))
        raise DataError(f"{p} has no entry for {name} (by sha256 or name; it lists {names}); pass the report of the run that wrote this model")
    if hit.get("top1") is None:
        raise DataError(
            f"{p}: variant {hit.get('name')} has no top-1 (the host evaluated without labels or the model failed); "
            "rerun convert with a labelled --eval folder"
        )
    return _checked_host_numbers(p, doc, hit, how)


def _checked_host_numbers(p: Path, doc: dict, hit: dict, how: str) -> HostNumbers:
    """The host's numbers of variant ``hit`` of report ``doc``, each of the type and range convert writes; DataError
    naming the field of a report edited or damaged since (a check that passed on a top-1 of NaN would be a lie)."""
    where = f"variant {hit.get('name')}"

    def bad(name: str, value, what: str):
        return DataError(f"{p}: {name} is {value!r}, not {what}; the report was edited or damaged: "
                         "pass the report.json that convert/report wrote for this model")

    def percent(name: str, value) -> Optional[float]:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0:
            raise bad(name, value, "a percentage from 0 to 100")  # NaN fails the range check too
        return float(value)

    count = hit.get("eval_count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise bad(f"{where} eval_count", count, "a number of images")
    float_doc, evaluation = doc.get("float") or {}, doc.get("evaluation") or {}
    if not isinstance(float_doc, dict):
        raise bad("float", float_doc, "the float model's numbers")
    if not isinstance(evaluation, dict):
        raise bad("evaluation", evaluation, "a description of the evaluated images")
    digest = evaluation.get("images_sha256")
    if digest is not None and not isinstance(digest, str):
        raise bad("evaluation images_sha256", digest, "a sha256")
    return HostNumbers(
        report=str(p), variant=str(hit.get("name")), matched_by=how, top1=percent(f"{where} top1", hit["top1"]),
        top5=percent(f"{where} top5", hit.get("top5")), count=count,
        float_top1=percent("float top1", float_doc.get("top1")), evaluation=evaluation,
    )


# ---------------------------------------------------------------------- eval


@dataclass
class EvalResult:
    model: str
    sha256: str
    interpreter: str
    images: str
    count: int
    classes: int
    labels_matched: str  # "by name" or "sorted folder order"
    setup: dict
    top1: float
    top5: float
    against: Optional[dict] = None
    host: Optional[HostNumbers] = None
    max_drop: Optional[float] = None
    warnings: list = field(default_factory=list)
    #: True: the very images the host evaluated (their digest matches the report's); False: other images; None:
    #: the report has no digest (the host evaluated arrays, or an older report).
    same_images: Optional[bool] = None
    #: Per image, in evaluation order: (file, folder label as output index, predicted index).
    per_image: list = field(default_factory=list, repr=False)

    @property
    def drop_pts(self) -> Optional[float]:
        """Host top-1 minus device top-1 (positive: the device is worse), at the report's precision.

        report.json keeps top-1 to 4 decimals: the device's is rounded the same way first, so the
        same answers on the same images are a drop of exactly 0 (233/300 is 77.6667 in both).
        """
        return None if self.host is None else round(self.host.top1 - round(self.top1, 4), 4)

    @property
    def drop_margin_pts(self) -> Optional[float]:
        """Half-width of the drop's 95 % interval: 0 on the host's own images (the drop is exact: any difference
        is this runtime's), else that of two independent samples (verify.unpaired_margin); None without the host's
        count."""
        if self.host is None or not self.host.count:
            return None
        if self.same_images:
            return 0.0
        return unpaired_margin(self.host.top1, self.host.count, self.top1, self.count)

    @property
    def over_budget(self) -> bool:
        return self.max_drop is not None and self.drop_pts is not None and self.drop_pts > self.max_drop + 1e-9

    def to_dict(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
        return {
            "model": self.model, "sha256": self.sha256, "interpreter": self.interpreter,
            "images": self.images, "count": self.count, "classes": self.classes,
            "labels_matched": self.labels_matched, "preprocessing": self.setup,
            "top1": r(self.top1), "top5": r(self.top5),
            "against": self.against,
            "host": None if self.host is None else self.host.to_dict(),
            "drop_pts": r(self.drop_pts), "drop_margin_pts": r(self.drop_margin_pts), "same_images": self.same_images,
            "max_drop": self.max_drop,
            "passed": not self.over_budget, "warnings": list(self.warnings),
        }


def predictions_csv(result: EvalResult) -> str:
    """Per-image results as CSV (image, label, predicted): compare two devices image by image."""
    rows = ["image,label,predicted"]
    rows += [f"{json.dumps(f)},{t},{p}" for f, t, p in result.per_image]
    return "\n".join(rows) + "\n"


def _label_map(clf: Classifier, class_names: tuple[str, ...], folder: str) -> tuple[np.ndarray, str]:
    """Folder index -> model output index: by name when the model has labels, else sorted order."""
    labels = clf.setup.labels
    if labels is not None:
        index = {name: i for i, name in enumerate(labels)}
        unknown = [c for c in class_names if c not in index]
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            known = ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "")
            raise DataError(
                f"{folder}: class folder(s) {shown} are not among the model's {len(labels)} labels ({known}, "
                f"from {clf.setup.labels_from}); name each folder after its label, or pass --labels FILE"
            )
        return np.array([index[c] for c in class_names], dtype=np.int64), "by name"
    if len(class_names) != clf.num_classes:
        raise DataError(
            f"{folder} has {len(class_names)} class folders but the model has {clf.num_classes} outputs and no labels; "
            "use one sub-folder per output (sorted names give the output order) or pass --labels FILE"
        )
    return np.arange(len(class_names), dtype=np.int64), "sorted folder order"


def _scores(clf: Classifier, against: Optional[Classifier], files: Sequence[str],
            progress: Optional[ProgressFn]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``clf``'s scores on ``files``, a batch at a time, and ``against``'s (None without it); the pixels are read
    once when both models take the same input."""
    outs, other_outs = [], []
    n = len(files)
    if progress is not None:
        progress("evaluate", 0, n)
    for start in range(0, n, BATCH):
        chunk = files[start : start + BATCH]
        pixels = np.stack([clf.read(f) for f in chunk])
        outs.append(clf.scores(pixels))
        if against is not None:
            same = against.setup.input_shape == clf.setup.input_shape and against.setup.resize == clf.setup.resize
            other_outs.append(against.scores(pixels if same else np.stack([against.read(f) for f in chunk])))
        if progress is not None:
            progress("evaluate", start + len(chunk), n)
    return np.concatenate(outs), (np.concatenate(other_outs) if against is not None else None)


def evaluate(
    clf: Classifier,
    folder: PathLike,
    samples: Optional[int] = None,
    seed: int = 0,
    against: Optional[Classifier] = None,
    report: Optional[PathLike] = None,
    max_drop: Optional[float] = None,
    progress: Optional[ProgressFn] = None,
) -> EvalResult:
    """Top-1/top-5 of ``clf`` on a labelled image folder, optionally against a second model and the host's report."""
    if max_drop is not None and not (max_drop >= 0):
        raise ConfigError(f"--max-drop must be zero or more accuracy points, got {max_drop}")
    if max_drop is not None and report is None:
        raise ConfigError("--max-drop compares with the host's number; add --report report.json")
    if not Path(folder).is_dir():
        raise DataError(f"{folder}: no such folder; pass a folder with one sub-folder of images per class")
    host = host_numbers(report, clf.path, clf.sha256) if report is not None else None  # before the long part
    if against is not None and against.num_classes != clf.num_classes:
        raise DataError(
            f"{against.path} has {against.num_classes} outputs but {clf.path} has {clf.num_classes}; "
            "--against needs a model of the same classes"
        )
    files, folder_labels, class_names = list_images(folder, samples=samples, seed=seed)
    if folder_labels is None:
        raise DataError(f"{folder} has no class sub-folders; eval needs one sub-folder of images per class")
    mapping, how = _label_map(clf, class_names, str(folder))
    labels = mapping[folder_labels]

    n = len(files)
    out, other = _scores(clf, against, files, progress)
    result = EvalResult(
        model=clf.path, sha256=clf.sha256, interpreter=clf.interpreter, images=str(folder), count=n,
        classes=len(class_names), labels_matched=how, setup=clf.setup.to_dict(),
        top1=topk_accuracy(out, labels, 1), top5=topk_accuracy(out, labels, 5),
        host=host, max_drop=max_drop,
        per_image=[(str(f), int(t), int(p)) for f, t, p in zip(files, labels, out.argmax(axis=1))],
    )
    if against is not None:
        result.against = {
            "model": against.path, "sha256": against.sha256,
            "top1": round(topk_accuracy(other, labels, 1), 4), "top5": round(topk_accuracy(other, labels, 5), 4),
            "agreement": round(agreement(other, out), 4),
        }
    if host is not None:
        _compare_with_host(result, host, files)
    return result


def _compare_with_host(result: EvalResult, host: HostNumbers, files) -> None:
    """Whether ``files`` are the images the host evaluated, and warnings when the comparison is weaker than asked."""
    digest = host.evaluation.get("images_sha256")
    if digest:
        result.same_images = image_set_sha256(files) == digest
    if host.count is not None and host.count != result.count:
        result.warnings.append(
            f"the host measured {host.count} images and this run {result.count}; for the same images use the folder "
            f"the host evaluated and --samples/--seed as given to convert --eval-samples/--seed"
        )
    margin = result.drop_margin_pts
    if result.max_drop is not None and margin is not None and margin > result.max_drop:
        result.warnings.append(
            f"on {'other' if result.same_images is False else 'possibly other'} images than the host's, the drop is "
            f"known only to within ±{margin:.2f} points (95 %), wider than --max-drop {result.max_drop:g}: passing "
            "is partly chance; evaluate on the images the host evaluated, or on more images"
        )
