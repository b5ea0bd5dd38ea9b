"""Train the built-in reference model: ResNet-8 on scikit-learn's digits.

Writes ``edgeresnet/assets/reference_digits_resnet8.h5`` (a full tf_keras model,
no optimizer state) and ``reference_digits_resnet8.json`` beside it, which
records the split, the seed, the schedule and the held-out accuracy measured
here. Deterministic: the same seed on the same TensorFlow build gives the same
weights. Takes a few minutes on two CPU cores.

    python scripts/train_reference.py            # overwrite the committed files
    python scripts/train_reference.py --out-dir /tmp/ref --epochs 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeresnet._util import tf as _tf  # noqa: E402
from edgeresnet.host import demo  # noqa: E402
from edgeresnet.host.models import build_model  # noqa: E402

MAX_SHIFT = 2  # pixels, up/down/left/right; the digits are centred in their 32x32 frame


def shifted(images: np.ndarray, rng: np.random.RandomState, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Each image moved by its own random whole-pixel offset, zero-filled (the digits' background)."""
    out = np.zeros_like(images)
    n, h, w = images.shape[:3]
    dy = rng.randint(-max_shift, max_shift + 1, size=n)
    dx = rng.randint(-max_shift, max_shift + 1, size=n)
    for i in range(n):
        ys, yd = (slice(0, h - dy[i]), slice(dy[i], h)) if dy[i] >= 0 else (slice(-dy[i], h), slice(0, h + dy[i]))
        xs, xd = (slice(0, w - dx[i]), slice(dx[i], w)) if dx[i] >= 0 else (slice(-dx[i], w), slice(0, w + dx[i]))
        out[i, yd, xd] = images[i, ys, xs]
    return out


def unit(images: np.ndarray) -> np.ndarray:
    """The ``unit`` preset: pixels / 255 as float32."""
    return images.astype(np.float32) / 255.0


def train(seed: int, epochs: int, batch_size: int, learning_rate: float, log=print) -> tuple[object, dict]:
    tf = _tf.tf()
    keras = _tf.tf_keras()
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)  # python, numpy and tf in one call
    tf.config.experimental.enable_op_determinism()

    calib = demo.digits_images("calib")
    held_out = demo.digits_images("eval")
    x_eval = unit(held_out.images)

    model = build_model(demo.ARCHITECTURE, input_shape=demo.INPUT_SHAPE, classes=len(demo.CLASS_NAMES))
    steps = epochs * int(np.ceil(len(calib) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    aug_rng = np.random.RandomState(seed)
    started = time.perf_counter()
    for epoch in range(epochs):
        x = unit(shifted(calib.images, aug_rng))
        hist = model.fit(
            x, calib.labels, batch_size=batch_size, epochs=epoch + 1, initial_epoch=epoch,
            shuffle=True, verbose=0,
        )
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            acc = _accuracy(model, x_eval, held_out.labels)
            log(
                f"epoch {epoch + 1:3d}/{epochs}  loss {hist.history['loss'][-1]:.4f}  "
                f"train acc {hist.history['accuracy'][-1]:.4f}  held-out acc {acc:.4f}  "
                f"({time.perf_counter() - started:.0f} s)"
            )
    seconds = time.perf_counter() - started

    record = {
        "script": "scripts/train_reference.py",
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": f"Adam, cosine decay from {learning_rate:g} to {learning_rate * 0.01:g}",
        "loss": "sparse categorical cross-entropy",
        "augmentation": f"random whole-pixel shifts up to {MAX_SHIFT} px, zero fill",
        "split": {
            "dataset": "scikit-learn digits (1,797 images, 8x8, 0..16; scaled to 0..255, bilinear upsampling to 32x32 with PIL)",
            "method": "stratified, numpy RandomState",
            "seed": demo.SPLIT_SEED,
            "train": len(calib),
            "test": len(held_out),
            "train_split": "calib",
            "test_split": "eval",
            "eval_sha256": demo.split_fingerprint(),
        },
        "train_accuracy": round(_accuracy(model, unit(calib.images), calib.labels), 4),
        "test_accuracy": round(_accuracy(model, x_eval, held_out.labels), 4),
        "train_seconds": round(seconds, 1),
        "versions": {"tensorflow": tf.__version__, "tf_keras": keras.__version__, "numpy": np.__version__},
    }
    return model, record


def _accuracy(model, x: np.ndarray, labels: np.ndarray) -> float:
    pred = model.predict(x, batch_size=256, verbose=0).argmax(axis=1)
    return float((pred == labels).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "edgeresnet" / "assets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    args = parser.parse_args(argv)

    model, record = train(args.seed, args.epochs, args.batch_size, args.learning_rate)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    h5 = args.out_dir / demo.MODEL_FILE
    tmp = h5.with_name(h5.name + ".partial")
    model.save(tmp, save_format="h5", include_optimizer=False)
    tmp.replace(h5)
    meta = {
        "name": demo.REFERENCE_NAME,
        "architecture": demo.ARCHITECTURE,
        "input_shape": list(demo.INPUT_SHAPE),
        "preset": demo.PRESET,
        "preprocessing": "float32 pixels / 255 (0..1), one grey channel",
        "class_names": list(demo.CLASS_NAMES),
        "params": int(model.count_params()),
        "weights_file": h5.name,
        "weights_sha256": hashlib.sha256(h5.read_bytes()).hexdigest(),
        "training": record,
    }
    meta_path = args.out_dir / demo.METADATA_FILE
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(
        f"wrote {h5} ({h5.stat().st_size / 1024:.0f} KB) and {meta_path.name}: "
        f"held-out top-1 {record['test_accuracy']:.4f}, {record['train_seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
