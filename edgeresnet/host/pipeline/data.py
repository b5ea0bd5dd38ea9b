"""A run's images: calibration, evaluation and --train, and the class order (--labels) they are labelled in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edgeresnet.errors import DataError
from edgeresnet.host import shipping
from edgeresnet.device.images import ImageStream, load_images, stream_images
from edgeresnet.device.imageset import ImageSet
from edgeresnet.host.calibration import calibration_record
from edgeresnet.device.metadata import read_labels_file
from edgeresnet.host.pipeline.context import RunContext, Source, stage_progress

HELD_OUT_EVAL_SAMPLES = 500
TIMING_CALIB_SAMPLES = 32  # random pixels calibrate a random-weights model for timing: the values do not matter


@dataclass
class RunData:
    """The images of one run: as loaded, preprocessed, and as the converter takes them."""

    calib: Optional[ImageSet] = None
    calib_record: Optional[object] = None  # calibration.CalibrationRecord, for the report
    eval: Optional[ImageStream] = None  # read a batch at a time: never all in memory
    eval_float: Optional[ImageStream] = None  # the same stream, preprocessed for the float model
    eval_origin: str = ""
    conv_calib: Optional[np.ndarray] = None  # calibration samples the converter sees (raw when folded)
    conv_eval: Optional[ImageStream] = None  # the evaluation stream as the converted models take it


def random_pixels(input_shape, count: int, seed: int) -> ImageSet:
    """Seeded random 0..255 pixels: calibration for a model that is only timed (ranges, not accuracy)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(count,) + tuple(input_shape), dtype=np.uint8)
    return ImageSet(images=pixels, source="random pixels (timing only)")


def same_data(a: Optional[str], b: Optional[str]) -> bool:
    """Are ``a`` and ``b`` both given and the same file or folder?"""
    try:
        return a is not None and b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _eval_set(opts, loaded, reference_meta, calib: Optional[ImageSet]) -> tuple[ImageStream, str]:
    """The evaluation images as a stream (decoded a batch at a time), and where they came from."""
    shape = loaded.input_shape
    if opts.eval is not None:
        images = stream_images(opts.eval, shape, samples=opts.eval_samples, seed=opts.seed, resize=opts.resize)
        return images, "--eval"
    if reference_meta is not None and opts.calib is None:
        from edgeresnet.host import demo

        return ImageStream.from_imageset(demo.digits_images("eval", shape[-1])), "built-in held-out split"
    if opts.calib is not None and Path(opts.calib).is_dir():
        # Images of the calibration folder that calibration did not use.
        try:
            images = stream_images(
                opts.calib, shape, samples=opts.eval_samples or HELD_OUT_EVAL_SAMPLES,
                seed=opts.seed + 1, resize=opts.resize, exclude=set(calib.paths) if calib is not None else None,
            )
            return images, "calibration folder, images not used for calibration (no --eval given)"
        except DataError:
            pass
    if calib is None:
        raise DataError("nothing to evaluate on; pass --eval with a folder of images")
    return ImageStream.from_imageset(calib), "the calibration images themselves (no --eval given; in-sample)"


def _check_classes(images, num_classes: int, flag: str):
    if images.labelled and images.class_names is not None and len(images.class_names) != num_classes:
        raise DataError(
            f"{flag} has {len(images.class_names)} class folders but the model has {num_classes} outputs; "
            "use one sub-folder per model class (sorted names give the label order)"
        )
    if images.labels is not None and len(images.labels) and int(images.labels.max()) >= num_classes:
        raise DataError(
            f"{flag} ({images.source}) has labels up to {int(images.labels.max())} but the model has "
            f"{num_classes} outputs (classes 0..{num_classes - 1}); an accuracy on these labels would mean "
            "nothing: pass the labels of this model's classes"
        )


def folder_classes(path) -> Optional[tuple[str, ...]]:
    """The class folder names of an image folder (a scan, no decoding), or None (no folder, no classes)."""
    if path is None or not Path(path).is_dir():
        return None
    from edgeresnet.device.image_files import list_images

    return list_images(path)[2]


def class_order(opts, loaded, notify) -> tuple[Optional[tuple[str, ...]], Optional[str]]:
    """(``--labels``' class names in output order, or None; the warning said when the class folders scored or
    trained on list them in another order). Folders with other names are refused here, before any long work."""
    if opts.labels is None:
        return None, None
    names = read_labels_file(opts.labels, loaded.num_classes)
    scored = ("--eval", opts.eval) if opts.eval is not None else ("--calib", opts.calib)  # without --eval: calib's
    folders = [(flag, folder_classes(path)) for flag, path in (scored, ("--train", opts.train))]
    warning = shipping.order_note(names, f"--labels {opts.labels}", [(f, c) for f, c in folders if c])
    if warning is not None:
        notify(f"warning: {warning}")
    return names, warning


def _match_classes(images, names, flag: str, opts):
    """``images`` labelled by the output index of each class's name in ``names`` (see shipping.match_classes)."""
    return shipping.match_classes(images, names, flag, f"--labels {opts.labels}")


def check_train(opts) -> None:
    """A --train folder before any work (a scan, then each file's header; no pixel decoded): at least 2 class
    folders, none without images, as many as --classes asks for, every file an image."""
    if opts.train is None or not Path(opts.train).is_dir():
        return
    from edgeresnet.device.images import check_image_files, training_folder

    files, names = training_folder(opts.train)
    if opts.classes is not None and len(names) != opts.classes:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise DataError(
            f"--classes {opts.classes} but --train {opts.train} has {len(names)} class folders ({shown}); the new "
            f"classifier learns one output per class folder: pass --classes {len(names)}, or one folder per class"
        )
    check_image_files(files)


def load_train(opts, loaded, preset, names=None) -> Optional[ImageStream]:
    """The --train images as a labelled stream of model inputs (decoded per batch), or None without --train;
    labelled by the output index of each class's name in ``names`` (--labels) when given."""
    if opts.train is None:
        return None
    images = stream_images(opts.train, loaded.input_shape, samples=None, seed=opts.seed, resize=opts.resize)
    if not images.labelled:
        raise DataError(f"{opts.train} has no class sub-folders; --train needs one sub-folder per class")
    _check_classes(images, loaded.num_classes, "--train")
    return _match_classes(images, names, "--train", opts).with_preset(preset)


def _load_calibration(ctx: RunContext, src: Source) -> ImageSet:
    """The calibration images: --calib, the reference model's digits, or random pixels for a timing-only run."""
    opts, loaded = ctx.opts, src.loaded
    if opts.calib is None and opts.timing_only:
        return random_pixels(loaded.input_shape, min(opts.calib_samples, TIMING_CALIB_SAMPLES), opts.seed)
    if opts.calib is None:
        from edgeresnet.host import demo

        full = demo.digits_images("calib", loaded.input_shape[-1])
        return full.sample(opts.calib_samples, opts.seed)  # as --calib folders: seeded, class-balanced
    return load_images(
        opts.calib, loaded.input_shape, samples=opts.calib_samples, seed=opts.seed,
        resize=opts.resize, progress=stage_progress(ctx.progress, "load calibration images", "images"),
    )


def load_data(ctx: RunContext, src: Source, needs_calib: bool) -> RunData:
    """Calibration and evaluation images, preprocessed, and the arrays the converter takes. Evaluation images
    are labelled by the output index of their class's name in ``src.names`` (``--labels``) when given; calibration
    keeps its folder labels, which only balance the classes (the same images in any label order)."""
    opts, loaded = ctx.opts, src.loaded
    data = RunData()
    if needs_calib or opts.calib is not None or opts.timing_only:  # timing only: one calibration image runs each model
        data.calib = _load_calibration(ctx, src)
        data.calib_record = calibration_record(data.calib, src.preset_name, opts.seed, opts.resize)
        for w in data.calib_record.warnings if not opts.timing_only else ():  # e.g. fewer than 100 images
            ctx.notify(f"warning: {w}")

    if not opts.timing_only:
        data.eval, data.eval_origin = _eval_set(opts, loaded, src.reference_meta, data.calib)
        flag = "--eval" if opts.eval else "the evaluation data"
        _check_classes(data.eval, loaded.num_classes, flag)
        data.eval = _match_classes(data.eval, src.names, flag, opts)
        data.eval_float = data.eval.with_preset(src.preset)  # what the float model takes

    if opts.fold_preprocessing:
        loaded.require_tf_keras("--fold-preprocessing")
        data.conv_eval = None if data.eval is None else data.eval.with_preset(None)  # raw 0..255 pixels as float32
    else:
        data.conv_eval = data.eval_float
    return data


def converter_calibration(opts, data: RunData, preset) -> None:
    """The calibration samples as the converter takes them (float32, preprocessed unless folded). Made after
    fine-tuning: a float copy of 300 224x224 images is 180 MB the training step does not need beside it."""
    if data.calib is None:
        return
    data.conv_calib = data.calib.images.astype(np.float32) if opts.fold_preprocessing else preset.apply(data.calib.images)
