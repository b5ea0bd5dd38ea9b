import base64
import copy
import csv
import io
import math
import re

import numpy as np
import pytest
from PIL import Image

from edgeresnet.report import csv_table, layout, markdown, plot, reading
from edgeresnet.report import html as html_view
from edgeresnet.report.writers import write_formats
from edgeresnet.errors import ConfigError, OutputExistsError


def _variant(name, target, precision, io_type, status="ok", **kw):
    base = {
        "name": name, "target": target, "precision": precision, "io_type": io_type, "status": status,
        "error": None, "path": f"out/{name}", "sha256": None, "size_bytes": None, "compressed_bytes": None, "top1": None,
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
        "recovery": True,
        "seconds": 42.5,
        "variants": [
            _variant("pretrainedResnet_cpu_fp32.tflite", "cpu", "fp32", "float32", size_bytes=321_456,
                     compressed_bytes=296_002, top1=87.6, top5=99.4, drop_pts=0.0, agreement=100.0, cosine=1.0,
                     sqnr_db=200.0, eval_count=500, convert_seconds=1.8, interpreter="ai-edge-litert 2.3.0",
                     checks={"weights": _weights(True, "9 conv/fc filters, all float32")},
                     latency={"median_ms": 0.912, "p90_ms": 1.044, "mean_ms": 0.95}),
            _variant("pretrainedResnet_cpu_int8.tflite", "cpu", "int8", "int8", size_bytes=98_312,
                     compressed_bytes=80_551, top1=87.2, top5=99.2, drop_pts=0.4, drop_margin_pts=0.55, agreement=98.6,
                     cosine=0.9981,
                     sqnr_db=24.7, eval_count=500, convert_seconds=6.1, interpreter="ai-edge-litert 2.3.0",
                     checks={"weights": _weights(True, "9 conv/fc filters, all int8")},
                     latency={"median_ms": 0.287, "p90_ms": 0.301},
                     recovery={"precision": "int8+float", "method": "mse+bias", "io_type": "int8", "max_drop": 1.0,
                               "met": True, "stopped": "within budget", "float_layers": ["dense"],
                               "initial": {}, "final": {}}),
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



def test_drop_and_its_margin_in_every_format(report, tmp_path):
    """The int8 variant's drop of 0.4 points is within its 95 % margin of 0.55: the formats say both; a variant
    without a margin (an older report) shows its drop alone."""
    assert "| 0.40 ± 0.55 |" in markdown.variants_table(report)
    assert "| 0.10 |" in markdown.variants_table(report)  # the int16x8 variant: no margin recorded
    assert "0.40 ± 0.55" in html_view.write_html(report, tmp_path / "report.html").read_text()
    with open(csv_table.write_csv(report, tmp_path / "report.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["drop_margin_pts"] for r in rows] == ["", "0.55", "", "", ""]

def test_pareto_front_on_hand_made_points():
    points = [(100, 80), (50, 70), (200, 90), (150, 75), (50, 70), (300, 85), (None, 99), (120, 80), (60, float("nan"))]
    # (150, 75) loses to (100, 80); (300, 85) to (200, 90); (120, 80) to (100, 80); the equal (50, 70) pair stays.
    assert plot.pareto_front(points) == [1, 4, 0, 2]
    assert plot.pareto_front([]) == []
    assert plot.pareto_front([(10, 1.0)]) == [0]
    assert plot.pareto_front([(10, 50), (10, 60)]) == [1]  # same size, higher accuracy wins
    assert plot.pareto_front([(10, 50), (5, 50)]) == [1]  # same accuracy, smaller wins


def test_point_labels_are_target_and_precision(report):
    assert reading.point_labels(report["variants"][:3]) == ["cpu/fp32", "cpu/int8", "gpu/fp16"]
    twins = [dict(report["variants"][1]), dict(report["variants"][1], io_type="float32")]
    assert reading.point_labels(twins) == ["cpu/int8/int8", "cpu/int8/float32"]


def test_point_labels_name_pruned_variants():
    dense = _variant("m_cpu_int8.tflite", "cpu", "int8", "int8")
    from_record = _variant("m_x_cpu_int8.tflite", "cpu", "int8", "int8", prune={"sparsity": 0.5, "fine_tuned": False})
    from_config = _variant("m_y_cpu_int8.tflite", "cpu", "int8", "int8", prune={"config": {"sparsity": 0.625}})
    from_name = _variant("m_pruned75_cpu_int8.tflite", "cpu", "int8", "int8")
    # Pruning tells the variants apart, so no io suffix is needed.
    assert reading.point_labels([dense, from_record, from_config, from_name]) == [
        "cpu/int8", "cpu/int8 pruned 50%", "cpu/int8 pruned 62.5%", "cpu/int8 pruned 75%"]
    assert [reading.prune_sparsity(v) for v in (dense, from_record, from_name)] == [None, 0.5, 0.75]
    assert reading.prune_sparsity(_variant("m_unpruned500x.tflite", "cpu", "int8", "int8")) is None


def test_csv_parses_back_with_stable_columns(report, tmp_path):
    path = csv_table.write_csv(report, tmp_path / "report.csv")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        assert tuple(reader.fieldnames) == csv_table.CSV_COLUMNS
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
    assert [r["label"] for r in rows] == ["cpu/fp32", "cpu/int8", "gpu/fp16", "edgetpu/int8", "cpu/int16x8"]
    assert int8["prune_sparsity"] == "" and int8["weight_sparsity"] == ""


def test_csv_names_pruned_variants_and_their_zeros(crowded, tmp_path):
    rows = list(csv.DictReader(csv_table.write_csv(crowded, tmp_path / "r.csv").open(newline="")))
    pruned = [r for r in rows if "pruned50" in r["name"]]
    assert [r["label"] for r in pruned] == ["cpu/int8 pruned 50%", "edgetpu/int8 pruned 50%"]
    assert all(float(r["prune_sparsity"]) == 0.5 and float(r["weight_sparsity"]) == 0.4931 for r in pruned)
    assert {r["prune_sparsity"] for r in rows if "pruned" not in r["name"]} == {""}


def _png_from(data: bytes) -> Image.Image:
    assert data.startswith(html_view.PNG_SIGNATURE)
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_plot_is_a_real_png_with_content(report, tmp_path):
    path = plot.plot_accuracy_vs_size(report, tmp_path / "plot.png")
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
    assert reading.accuracy_metric(unlabelled)[0] == "agreement"
    assert reading.accuracy_metric(report)[0] == "top1"
    _png_from(plot.plot_accuracy_vs_size(unlabelled, tmp_path / "a.png").read_bytes())
    failed = copy.deepcopy(report)
    failed["variants"] = [v for v in failed["variants"] if v["status"] != "ok"]
    _png_from(plot.plot_accuracy_vs_size(failed, tmp_path / "b.png").read_bytes())


def test_html_is_self_contained_with_rows_plot_and_escaped_text(report, tmp_path):
    png = plot.plot_accuracy_vs_size(report, tmp_path / "plot.png")
    page = html_view.write_html(report, tmp_path / "report.html", png).read_text(encoding="utf-8")
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
    page = html_view.write_html(report, tmp_path / "r.html").read_text()
    assert "data:image/png" not in page and "<table" in page
    bad = tmp_path / "not.png"
    bad.write_bytes(b"GIF89a....")
    with pytest.raises(ConfigError, match="not a PNG"):
        html_view.write_html(report, tmp_path / "r2.html", bad)
    with pytest.raises(OutputExistsError, match="does not exist"):
        csv_table.write_csv(report, tmp_path / "missing" / "r.csv")


def test_write_all_writes_the_three_files(report, tmp_path):
    paths = write_formats(report, tmp_path, ("csv", "png", "html"))
    assert {p.name for p in paths.values()} == {"report.csv", "accuracy_vs_size.png", "report.html"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_vs_size.png", "report.csv", "report.html"]


# ---------------------------------------------------------------------- the crowded plot of a real run

# Measured: `edgeresnet report pretrainedResnet.h5 --calib cifar10/train --eval cifar10/test --sparsity 0.5`
# on the real MLPerf Tiny ResNet-8, 1000 test images (sizes in bytes, top-1 %, share of zero weights).
_MEASURED = [
    ("cpu_int8", "cpu", "int8", "int8", 94888, 78563, 74.9, 0.0105),
    ("cpu_fp32", "cpu", "fp32", "float32", 317636, 291792, 75.1, 0.0),
    ("cpu_dynamic", "cpu", "dynamic", "float32", 93968, 81421, 75.2, 0.0103),
    ("cpu_int16x8", "cpu", "int16x8", "float32", 99896, 81916, 75.4, 0.0105),
    ("edgetpu_int8", "edgetpu", "int8", "uint8", 95224, 78681, 74.9, 0.0105),
    ("gpu_fp16", "gpu", "fp16", "float32", 165668, 147457, 74.9, 0.0),
    ("gpu_fp32", "gpu", "fp32", "float32", 317636, 291792, 75.1, 0.0),
    ("pruned50_cpu_int8", "cpu", "int8", "int8", 94888, 58433, 57.1, 0.4931),
    ("pruned50_edgetpu_int8", "edgetpu", "int8", "uint8", 95224, 58551, 57.1, 0.4931),
]


@pytest.fixture
def crowded(report):
    """The report of the real run above: four variants within 6 KiB and 0.5 points, two equal, two pruned."""
    out = copy.deepcopy(report)
    out["float"] = {"count": 1000, "top1": 75.1, "top5": 98.6}
    out["evaluation"].update(count=1000)
    out["variants"] = []
    for i, (tag, target, precision, io_type, size, packed, top1, zeros) in enumerate(_MEASURED):
        v = _variant(f"pretrainedResnet_{tag}.tflite", target, precision, io_type, size_bytes=size,
                     compressed_bytes=packed, top1=top1, weight_sparsity=zeros,
                     latency={"median_ms": 0.1 + i / 100, "p90_ms": 0.2 + i / 100, "repeats": 30})
        if tag.startswith("pruned"):
            v["prune"] = {"sparsity": 0.5, "schedule": "one-shot", "fine_tuned": False, "epochs": 0,
                          "left_dense": [{"name": "dense", "reason": "classifier"}]}
        out["variants"].append(v)
    return out


def _label_texts(ax):
    return [t for t in ax.texts if t.get_gid() == "variant-label"]


def test_crowded_plot_has_two_readable_panels(crowded):
    fig, panels = plot._draw(crowded)
    assert [p.size_key for p in panels] == ["size_bytes", "compressed_bytes"]
    assert [a.get_xlabel() for a in fig.axes[:2]] == [".tflite size (KiB)", "zlib-compressed size (KiB)"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, panel in zip(fig.axes, panels):
        lines = [line for label in panel.labels for line, _ in label.lines]
        # Equal models share one line; pruned ones say so; every plotted variant is named exactly once.
        assert "cpu/fp32 = gpu/fp32" in lines and "cpu/fp32" not in lines
        assert {"cpu/int8 pruned 50%", "edgetpu/int8 pruned 50%"} <= set(lines)
        assert sorted(n for label in panel.labels for n in label.names) == sorted(v["name"] for v in crowded["variants"])
        assert all(label.clean for label in panel.labels)
        # What was drawn: every label line inside the axes, none overlapping another or a marker.
        texts = _label_texts(ax)
        assert sorted(t.get_text() for t in texts) == sorted(lines)
        boxes = [t.get_window_extent(renderer) for t in texts]
        frame = ax.get_window_extent(renderer)
        for i, b in enumerate(boxes):
            assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1, texts[i].get_text()
            for j in range(i):
                c = boxes[j]
                overlap_w = min(b.x1, c.x1) - max(b.x0, c.x0)
                overlap_h = min(b.y1, c.y1) - max(b.y0, c.y0)
                assert overlap_w <= 0.5 or overlap_h <= 0.5, (texts[i].get_text(), texts[j].get_text())
        size_key = panel.size_key
        for v in crowded["variants"]:
            mx, my = ax.transData.transform((v[size_key] / 1024, v["top1"]))
            for t, b in zip(texts, boxes):
                assert not (b.x0 + 1 < mx < b.x1 - 1 and b.y0 + 1 < my < b.y1 - 1), (v["name"], t.get_text())


def test_each_panel_has_its_own_pareto_front(crowded):
    _, (raw, packed) = plot._draw(crowded)
    # In the .tflite file pruning gains nothing, so the pruned model (same size, lower accuracy) is dominated;
    # compressed, it is the smallest model and starts the front.
    assert raw.front == ("pretrainedResnet_cpu_dynamic.tflite", "pretrainedResnet_cpu_int16x8.tflite")
    assert packed.front[0] == "pretrainedResnet_pruned50_cpu_int8.tflite"
    assert packed.front[1:] == ("pretrainedResnet_cpu_int8.tflite", "pretrainedResnet_cpu_dynamic.tflite",
                                "pretrainedResnet_cpu_int16x8.tflite")
    for panel in (raw, packed):
        bold = {text for label in panel.labels for text, b in label.lines if b}
        expected = {reading.point_labels(crowded["variants"])[i] for i, v in enumerate(crowded["variants"])
                    if v["name"] in panel.front}
        assert bold == expected


def test_crowded_png_shows_the_front_line(crowded, tmp_path):
    img = _png_from(plot.plot_accuracy_vs_size(crowded, tmp_path / "p.png").read_bytes())
    assert img.width >= 1200 and img.height >= 600
    rgb = np.asarray(img.convert("RGB")).astype(int)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50
    # The compressed panel's front climbs 18 points from the pruned model: a long grey step line.
    grey = int(round(float(plot.FRONT_COLOUR) * 255))
    right = rgb[:, img.width // 2:]
    assert int((np.abs(right - grey).max(axis=2) <= 2).sum()) > 600
    # The pruned model (57 %) is inside the picture, not clipped: orange of its marker near the bottom.
    fig, _ = plot._draw(crowded)
    ax = fig.axes[1]
    x, y = ax.transData.transform((58433 / 1024, 57.1))
    row, col = int(round(img.height - y)), int(round(x))
    patch = rgb[row - 6:row + 7, col - 6:col + 7].reshape(-1, 3)
    assert any(r > 200 and 100 < g < 160 and b < 60 for r, g, b in patch)  # tab:orange half of the split marker


def test_one_panel_when_no_compressed_size(crowded):
    for v in crowded["variants"]:
        v["compressed_bytes"] = None
    fig, panels = plot._draw(crowded)
    assert [p.size_key for p in panels] == ["size_bytes"] and len(fig.axes) == 1


def test_html_names_pruned_variants_with_latency_and_zeros(crowded, tmp_path):
    page = html_view.write_html(crowded, tmp_path / "r.html").read_text()
    head = re.search(r"<thead>(.*?)</thead>", page).group(1)
    assert all(h in head for h in ("pruned", "zero weights %", "median ms", "p90 ms"))
    row = re.search(r"<tr[^>]*><td><code>pretrainedResnet_pruned50_cpu_int8.tflite</code>(.*?)</tr>", page).group(1)
    assert 'class="label">cpu/int8 pruned 50%<' in row and "<td>50% one-shot</td>" in row
    assert '<td class="num">49.3</td>' in row  # share of zero weights, in %
    assert '<td class="num">0.170</td>' in row and '<td class="num">0.270</td>' in row  # latency median, p90
    dense = re.search(r"<tr[^>]*><td><code>pretrainedResnet_cpu_int8.tflite</code>(.*?)</tr>", page).group(1)
    assert "<td>no</td>" in dense and '<td class="num">1.1</td>' in dense
    # The pruning record both pruned variants carry is shown once, naming them.
    section = page[page.index("<h2>Pruning</h2>"):]
    assert section.count("one-shot</td>") == 1 and "pretrainedResnet_pruned50_edgetpu_int8.tflite" in section
    assert '{&quot;name&quot;: &quot;dense&quot;' in section


# ---------------------------------------------------------------------- the layout on its own


def _assert_spread(spots, anchors, radius, bounds):
    for i, s in enumerate(spots):
        assert bounds.contains(s.box)
        for x, y in anchors:
            assert not s.box.overlaps(layout.Box(x - radius, y - radius, x + radius, y + radius))
        for j in range(i):
            assert not s.box.overlaps(spots[j].box)
            for a, b in ((s, spots[j]), (spots[j], s)):
                if a.leader is not None:
                    assert not b.box.crosses(*a.leader)


def test_layout_spreads_a_tight_cluster_without_overlap():
    # Eight markers within 12 x 8 pixels, labels 90 x 12: most labels need a leader line.
    anchors = [(300 + 1.5 * i, 200 + (i % 3) * 3.0) for i in range(8)]
    sizes = [(90.0, 12.0)] * 8
    bounds = layout.Box(0, 0, 640, 400)
    spots = layout.layout_labels(anchors, sizes, bounds, radii=5.0)
    assert all(s.clean for s in spots)
    _assert_spread(spots, anchors, 5.0, bounds)
    assert sum(s.leader is not None for s in spots) >= 4
    for s, (x, y) in zip(spots, anchors):
        assert s.box.distance(x, y) < 120  # still near its marker
        if s.leader is not None:
            (sx, sy), end = s.leader
            assert abs(math.hypot(sx - x, sy - y) - 5.0) < 1e-6 and s.box.distance(*end) < 1e-6
    assert layout.layout_labels(anchors, sizes, bounds, radii=5.0) == spots  # deterministic


def test_layout_keeps_labels_in_bounds_and_prefers_the_right_side():
    bounds = layout.Box(0, 0, 400, 300)
    # A lone marker: its label sits right beside it, no leader.
    (spot,) = layout.layout_labels([(100, 150)], [(60, 10)], bounds, radii=4.0, gap=3.0)
    assert spot.leader is None and spot.box.x0 == pytest.approx(107) and spot.box.y0 == pytest.approx(145)
    # At the right edge it goes to the left.
    (spot,) = layout.layout_labels([(395, 150)], [(60, 10)], bounds, radii=4.0, gap=3.0)
    assert spot.box.x1 == pytest.approx(388) and spot.leader is None
    # A drawn line through the marker pushes the label off it when a free spot is close.
    line = ((0.0, 150.0), (400.0, 150.0))
    (spot,) = layout.layout_labels([(100, 150)], [(60, 10)], bounds, radii=4.0, lines=[line])
    assert not spot.box.crosses(*line)


def test_layout_reports_labels_it_could_not_place():
    bounds = layout.Box(0, 0, 100, 30)  # room for two labels, not five
    spots = layout.layout_labels([(50, 15)] * 5, [(40, 12)] * 5, bounds, radii=3.0)
    assert all(bounds.contains(s.box) for s in spots)
    assert not all(s.clean for s in spots)
    with pytest.raises(ValueError, match="2 anchors but 1"):
        layout.layout_labels([(0, 0), (1, 1)], [(1, 1)], bounds)


def test_box_geometry():
    box = layout.Box(0, 0, 10, 10)
    assert box.crosses((-5, 5), (15, 5)) and box.crosses((5, 5), (20, 20))
    assert not box.crosses((-5, 11), (15, 11)) and not box.crosses((-5, -5), (-1, 20))
    assert not box.crosses((10, -5), (10, 15))  # runs along an edge only
    assert box.overlaps(layout.Box(9, 9, 20, 20)) and not box.overlaps(layout.Box(10, 0, 20, 10))
    assert box.overlaps(layout.Box(11, 0, 20, 10), gap=2) and box.distance(13, 14) == 5.0


def test_the_example_report_is_what_the_schema_allows(report):
    """The fixture above has only keys the pipeline writes: the shipped schema says so."""
    from edgeresnet.report.schema import validate_report

    validate_report(report)
    bad = copy.deepcopy(report)
    bad["variants"][0]["latency_ms"] = 0.3  # a key the pipeline never writes
    with pytest.raises(ConfigError, match="variants/0.*latency_ms"):
        validate_report(bad)
    bad = copy.deepcopy(report)
    bad["variants"][1]["status"] = "fine"
    with pytest.raises(ConfigError, match="variants/1/status"):
        validate_report(bad)


def test_a_clustered_run_is_shown_where_pruning_is_and_its_record_is_checked(report, tmp_path):
    """--cluster N: the run's record (with each layer's distinct weights) and each variant's, in every view."""
    from edgeresnet.report.markdown import to_markdown
    from edgeresnet.report.schema import validate_report

    clustered = copy.deepcopy(report)
    record = {"clusters": 16, "clustered_layers": 2, "max_values": 16, "stem_left": True, "fine_tuned": True,
              "epochs": 3, "learning_rate": 3e-4, "batch_size": 64}
    clustered["cluster"] = record | {"layers": {"conv2d_1": 16, "dense": 15}}
    for v in clustered["variants"][:3]:
        v["cluster"] = dict(record)
        v["fine_tune"] = {"method": "cluster", "epochs": 3, "learning_rate": 3e-4, "batch_size": 64, "data": "train"}
    clustered["variants"][2]["fine_tune"]["after_pruning"] = {"method": "prune", "epochs": 2, "learning_rate": 1e-3}
    validate_report(clustered)
    assert [markdown.fine_tune_text(v) for v in clustered["variants"][1:4]] == [
        "cluster 3 ep @0.0003", "prune 2 ep @0.001 + cluster 3 ep @0.0003", "–"]
    assert [reading.cluster_count(v) for v in clustered["variants"]] == [16, 16, 16, None, None]
    assert reading.point_labels(clustered["variants"][:2]) == ["cpu/fp32 16 clusters", "cpu/int8 16 clusters"]
    md = to_markdown(clustered)
    assert "- clustering: 16 clusters per kernel in 2 layers (every Conv2D/Dense layer but the stem; fine-tuned 3" in md
    assert "## Per-layer clusters" in md and "| dense | 15 |" in md
    page = html_view.write_html(clustered, tmp_path / "r.html").read_text()
    assert "<h2>Clustering</h2>" in page and "<th>clusters</th>" in page and "<th>dense</th><td>15</td>" in page
    rows = list(csv.DictReader(csv_table.write_csv(clustered, tmp_path / "r.csv").open(newline="")))
    assert [r["clusters"] for r in rows] == ["16", "16", "16", "", ""]
    assert "clustering" not in to_markdown(report) and "Clustering" not in html_view.write_html(
        report, tmp_path / "plain.html").read_text()
    for bad in ({"clusters": 1}, {"layers": None}, {"fine_tuned": "yes"}):
        broken = copy.deepcopy(clustered)
        broken["cluster"].update(bad)
        with pytest.raises(ConfigError, match="cluster"):
            validate_report(broken)
    broken = copy.deepcopy(clustered)
    del broken["variants"][0]["cluster"]["clusters"]
    with pytest.raises(ConfigError, match="variants/0/cluster"):
        validate_report(broken)
