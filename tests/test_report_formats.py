import base64
import copy
import csv
import io
import re

import numpy as np
import pytest
from PIL import Image

from edgeresnet import report_formats as rf
from edgeresnet.errors import ConfigError, OutputExistsError


def _variant(name, target, precision, io_type, status="ok", **kw):
    base = {
        "name": name, "target": target, "precision": precision, "io_type": io_type, "status": status,
        "error": None, "path": f"out/{name}", "size_bytes": None, "compressed_bytes": None, "top1": None,
        "top5": None, "drop_pts": None, "agreement": None, "cosine": None, "sqnr_db": None, "eval_count": None,
        "convert_seconds": None, "interpreter": None, "checks": {},
    }
    base.update(kw)
    return base


def _weights(ok, summary):
    return {"ok": ok, "blocking": True, "summary": summary}


@pytest.fixture
def report():
    """A report.json dict as the pipeline writes it: ResNet-8 on 500 labelled CIFAR-10 images."""
    return {
        "edgeresnet_version": "0.1.0",
        "created": "2025-01-01T12:00:00+00:00",
        "model": {"name": "pretrainedResnet", "source": "/data/pretrainedResnet.h5", "flavor": "tf_keras",
                  "input_shape": [32, 32, 3], "classes": 10, "params": 78666},
        "preprocessing": {"preset": "raw-0-255", "folded_into_model": False},
        "calibration": {"source": "cifar10/train", "count": 200, "requested": 200, "available": 50000, "seed": 0,
                        "preset": "raw-0-255", "resize": "center-crop", "resized": 0, "balanced": True,
                        "per_class": {"airplane": 20, "cat": 20}, "raw_is_pixels": True,
                        "warnings": ["only 200 images: use 300+ for stable ranges"]},
        "evaluation": {"source": "cifar10/test", "origin": "--eval", "count": 500, "labelled": True},
        "float": {"count": 500, "top1": 87.6, "top5": 99.4},
        "max_drop": 1.0,
        "passed": False,
        "seconds": 42.5,
        "variants": [
            _variant("pretrainedResnet_cpu_fp32.tflite", "cpu", "fp32", "float32", size_bytes=321_456,
                     compressed_bytes=296_002, top1=87.6, top5=99.4, drop_pts=0.0, agreement=100.0, cosine=1.0,
                     sqnr_db=200.0, eval_count=500, convert_seconds=1.8, interpreter="ai-edge-litert 2.3.0",
                     checks={"weights": _weights(True, "9 conv/fc filters, all float32")},
                     latency={"median_ms": 0.912, "p90_ms": 1.044, "mean_ms": 0.95}),
            _variant("pretrainedResnet_cpu_int8.tflite", "cpu", "int8", "int8", size_bytes=98_312,
                     compressed_bytes=80_551, top1=87.2, top5=99.2, drop_pts=0.4, agreement=98.6, cosine=0.9981,
                     sqnr_db=24.7, eval_count=500, convert_seconds=6.1, interpreter="ai-edge-litert 2.3.0",
                     checks={"weights": _weights(True, "9 conv/fc filters, all int8")},
                     latency_ms=0.287, latency_p90_ms=0.301, float_layers=["dense"]),
            _variant("pretrainedResnet_gpu_fp16.tflite", "gpu", "fp16", "float32", size_bytes=163_840,
                     compressed_bytes=150_020, top1=87.6, top5=99.4, drop_pts=0.0, agreement=99.8, cosine=0.99999,
                     sqnr_db=61.3, eval_count=500, convert_seconds=1.9, interpreter="ai-edge-litert 2.3.0",
                     checks={"weights": _weights(True, "9 conv/fc filters, all float16"),
                             "gpu": {"ok": None, "blocking": False, "summary": "could not tell: no GPU delegate"}}),
            _variant("pretrainedResnet_edgetpu_int8.tflite", "edgetpu", "int8", "uint8", status="convert_failed",
                     error="the TFLite converter failed for int8: Quantization not yet supported for op: 'ERF'",
                     path=None),
            _variant("pretrainedResnet_cpu_int16x8.tflite", "cpu", "int16x8", "float32", status="validation_failed",
                     error="failed checks: weights (<float tensor> & more)", size_bytes=120_000,
                     compressed_bytes=101_000, top1=87.5, top5=99.4, drop_pts=0.1, agreement=99.6, cosine=0.9998,
                     sqnr_db=40.2, eval_count=500,
                     checks={"weights": _weights(False, "float tensor conv2d/bias (<float32>)")}),
        ],
    }


def test_pareto_front_on_hand_made_points():
    points = [(100, 80), (50, 70), (200, 90), (150, 75), (50, 70), (300, 85), (None, 99), (120, 80), (60, float("nan"))]
    # (150, 75) loses to (100, 80); (300, 85) to (200, 90); (120, 80) to (100, 80); the equal (50, 70) pair stays.
    assert rf.pareto_front(points) == [1, 4, 0, 2]
    assert rf.pareto_front([]) == []
    assert rf.pareto_front([(10, 1.0)]) == [0]
    assert rf.pareto_front([(10, 50), (10, 60)]) == [1]  # same size, higher accuracy wins
    assert rf.pareto_front([(10, 50), (5, 50)]) == [1]  # same accuracy, smaller wins


def test_point_labels_are_target_and_precision(report):
    assert rf.point_labels(report["variants"][:3]) == ["cpu/fp32", "cpu/int8", "gpu/fp16"]
    twins = [dict(report["variants"][1]), dict(report["variants"][1], io_type="float32")]
    assert rf.point_labels(twins) == ["cpu/int8/int8", "cpu/int8/float32"]


def test_csv_parses_back_with_stable_columns(report, tmp_path):
    path = rf.write_csv(report, tmp_path / "report.csv")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        assert tuple(reader.fieldnames) == rf.CSV_COLUMNS
    assert [r["name"] for r in rows] == [v["name"] for v in report["variants"]]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "convert_failed", "validation_failed"]
    fp32, int8, fp16, failed, invalid = rows
    assert int(int8["size_bytes"]) == 98_312 and float(int8["top1"]) == 87.2 and float(int8["drop_pts"]) == 0.4
    assert float(fp32["latency_median_ms"]) == 0.912 and float(fp32["latency_p90_ms"]) == 1.044
    assert float(int8["latency_median_ms"]) == 0.287 and float(int8["latency_p90_ms"]) == 0.301
    assert fp16["latency_median_ms"] == "" and int8["float_layers"] == "1"
    assert fp16["checks"] == "weights:ok;gpu:unknown" and invalid["checks"] == "weights:failed"
    assert failed["size_bytes"] == "" and failed["top1"] == "" and "ERF" in failed["error"]
    assert float(fp16["sqnr_db"]) == 61.3 and int(fp16["eval_count"]) == 500


def _png_from(data: bytes) -> Image.Image:
    assert data.startswith(rf.PNG_SIGNATURE)
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_plot_is_a_real_png_with_content(report, tmp_path):
    path = rf.plot_accuracy_vs_size(report, tmp_path / "plot.png")
    img = _png_from(path.read_bytes())
    assert img.width > 300 and img.height > 200
    pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20  # markers, colours and text, not a blank canvas
    # Written atomically: no temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_plot_handles_unlabelled_and_all_failed_reports(report, tmp_path):
    unlabelled = copy.deepcopy(report)
    unlabelled["evaluation"]["labelled"] = False
    unlabelled["float"].update(top1=None, top5=None)
    for v in unlabelled["variants"]:
        v.update(top1=None, top5=None, drop_pts=None)
    assert rf.accuracy_metric(unlabelled)[0] == "agreement"
    assert rf.accuracy_metric(report)[0] == "top1"
    _png_from(rf.plot_accuracy_vs_size(unlabelled, tmp_path / "a.png").read_bytes())
    failed = copy.deepcopy(report)
    failed["variants"] = [v for v in failed["variants"] if v["status"] != "ok"]
    _png_from(rf.plot_accuracy_vs_size(failed, tmp_path / "b.png").read_bytes())


def test_html_is_self_contained_with_rows_plot_and_escaped_text(report, tmp_path):
    png = rf.plot_accuracy_vs_size(report, tmp_path / "plot.png")
    page = rf.write_html(report, tmp_path / "report.html", png).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert re.findall(r'<tr class="row-(\w+)">', page) == ["ok", "ok", "ok", "convert_failed", "validation_failed"]
    for v in report["variants"]:
        assert f"<code>{v['name']}</code>" in page
    assert 'class="status s-validation_failed"' in page and 'class="status s-convert_failed"' in page
    # The plot travels inside the page and is the same PNG.
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match is not None
    data = base64.b64decode(match.group(1))
    assert data == png.read_bytes()
    assert _png_from(data).width > 0
    # Records and checks are there; user-controlled text is escaped.
    assert "center-crop" in page and "only 200 images" in page and "cifar10/test" in page
    assert "could not tell: no GPU delegate" in page and "9 conv/fc filters, all int8" in page
    assert "<float tensor>" not in page and "&lt;float tensor&gt; &amp; more" in page
    assert "0.912" in page and "0.287" in page  # latency columns appear when any variant has them
    assert "src=\"http" not in page and "<link" not in page  # nothing fetched from elsewhere


def test_html_without_plot_and_with_a_bad_plot(report, tmp_path):
    page = rf.write_html(report, tmp_path / "r.html").read_text()
    assert "data:image/png" not in page and "<table" in page
    bad = tmp_path / "not.png"
    bad.write_bytes(b"GIF89a....")
    with pytest.raises(ConfigError, match="not a PNG"):
        rf.write_html(report, tmp_path / "r2.html", bad)
    with pytest.raises(OutputExistsError, match="does not exist"):
        rf.write_csv(report, tmp_path / "missing" / "r.csv")


def test_write_all_writes_the_three_files(report, tmp_path):
    paths = rf.write_all(report, tmp_path)
    assert {p.name for p in paths.values()} == {"report.csv", "accuracy_vs_size.png", "report.html"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_vs_size.png", "report.csv", "report.html"]
