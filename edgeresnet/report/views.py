"""More views of a ``report.json`` dict: a CSV table, an accuracy-vs-size plot, one HTML page.

Everything here reads the dict that :meth:`edgeresnet.report.RunReport.to_dict`
writes (``schema.json`` describes it) and nothing else, so the files can be
rebuilt later from a saved ``report.json``. Every file is written atomically
(temporary name in the same folder, then a rename).

Latency is optional in a variant record: ``latency``, a
:meth:`edgeresnet.device.bench.BenchResult.to_dict`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from edgeresnet.errors import ConfigError, MissingDependencyError, OutputExistsError
from edgeresnet._util.files import atomic_write_bytes, atomic_write_text
from edgeresnet.report.markdown import _fmt, _kib, _num, fine_tune_text, is_qat, safe_mode_text
from edgeresnet.report.records import Status

PathLike = Union[str, Path]

CSV_COLUMNS = (
    "name",
    "label",
    "target",
    "precision",
    "io_type",
    "status",
    "size_bytes",
    "compressed_bytes",
    "top1",
    "top5",
    "drop_pts",
    "agreement",
    "cosine",
    "sqnr_db",
    "eval_count",
    "latency_median_ms",
    "latency_p90_ms",
    "prune_sparsity",
    "fine_tune",
    "weight_sparsity",
    "float_layers",
    "convert_seconds",
    "interpreter",
    "checks",
    "path",
    "error",
)

#: Statuses of variants that are not plotted (no model, or a model that failed a check).
FAILED = tuple(s.value for s in Status if s.failed)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- reading the dict


def pareto_front(points: Sequence[tuple]) -> list[int]:
    """Indices of the points no other point beats, ordered by size (smallest first).

    Each point is ``(size, accuracy)``; smaller size and higher accuracy are
    better. A point is dominated when another is at least as good on both and
    strictly better on one. Points with a None or NaN coordinate are never on
    the front. Equal points are all kept.
    """
    valid = []
    for i, p in enumerate(points):
        size, acc = p
        if size is None or acc is None or size != size or acc != acc:
            continue
        valid.append((float(size), float(acc), i))
    front = []
    for s, a, i in valid:
        dominated = any(
            (s2 <= s and a2 >= a) and (s2 < s or a2 > a) for s2, a2, j in valid if j != i
        )
        if not dominated:
            front.append((s, -a, i))
    return [i for _, _, i in sorted(front)]


def latency_of(variant: dict) -> tuple[Optional[float], Optional[float]]:
    """(median ms, p90 ms) of a variant record, None where it holds no latency."""
    value = variant.get("latency") or {}
    return _num(value.get("median_ms")), _num(value.get("p90_ms"))


def accuracy_metric(report: dict) -> tuple[str, str]:
    """(variant key, axis label): top-1 when the evaluation set is labelled, else agreement with float."""
    labelled = bool((report.get("evaluation") or {}).get("labelled"))
    if labelled and any(v.get("top1") is not None for v in report.get("variants") or ()):
        return "top1", "top-1 accuracy (%)"
    return "agreement", "top-1 agreement with the float model (%)"


def _plottable(v: dict, key: str) -> bool:
    return v.get("status") not in FAILED and v.get("size_bytes") is not None and v.get(key) is not None


def _short(text, limit: int = 60) -> str:
    """Keep the end of a long path."""
    text = str(text)
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _clip(text, limit: int = 80) -> str:
    """Keep the start of a long message."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_parent(path: Path) -> Path:
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputExistsError(f"the folder {parent} for {path.name} does not exist; create it first")
    return path


# ---------------------------------------------------------------------- labels


#: The tag the pipeline puts in a pruned variant's file name: ``_pruned50_``.
_PRUNED_TAG = re.compile(r"_pruned(\d{1,3})(?=[_.]|$)")


def prune_sparsity(variant: dict) -> Optional[float]:
    """The sparsity (0..1) a variant was pruned to, None for a dense one.

    Read from the variant's ``prune`` record (its ``sparsity``, else
    ``config.sparsity``), else from a ``_prunedNN_`` tag in its name.
    """
    prune = variant.get("prune")
    if isinstance(prune, dict):
        for value in (prune.get("sparsity"), (prune.get("config") or {}).get("sparsity")):
            s = _num(value)
            if s is not None:
                return s
    match = _PRUNED_TAG.search(str(variant.get("name") or ""))
    return int(match.group(1)) / 100 if match else None


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 1):g}%"


def point_labels(variants: Sequence[dict]) -> list[str]:
    """Short marker labels: ``target/precision``, ``/io_type`` where that repeats, `` pruned 50%`` when pruned,
    `` QAT`` when quantization-aware trained."""
    sparsities = [prune_sparsity(v) for v in variants]
    keys = [(v.get("target"), v.get("precision"), s, is_qat(v)) for v, s in zip(variants, sparsities)]
    labels = []
    for v, k, s in zip(variants, keys, sparsities):
        text = f"{k[0]}/{k[1]}" + (f"/{v.get('io_type')}" if keys.count(k) > 1 else "")
        labels.append(text + (f" pruned {_percent(s)}" if s is not None else "") + (" QAT" if k[3] else ""))
    return labels


# ---------------------------------------------------------------------- label layout (display pixels)


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in display pixels (y grows upwards, as in matplotlib)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def overlaps(self, other: "Box", gap: float = 0.0) -> bool:
        """True when the two boxes, each grown by ``gap``/2, share some area."""
        return (self.x0 < other.x1 + gap and other.x0 < self.x1 + gap
                and self.y0 < other.y1 + gap and other.y0 < self.y1 + gap)

    def contains(self, other: "Box") -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1

    def nearest(self, x: float, y: float) -> tuple[float, float]:
        """The point of the box closest to (x, y)."""
        return min(max(x, self.x0), self.x1), min(max(y, self.y0), self.y1)

    def distance(self, x: float, y: float) -> float:
        nx, ny = self.nearest(x, y)
        return math.hypot(nx - x, ny - y)

    def crosses(self, a: tuple[float, float], b: tuple[float, float]) -> bool:
        """True when the segment a-b runs through the box for a positive length (Liang-Barsky clipping)."""
        (ax, ay), (bx, by) = a, b
        dx, dy = bx - ax, by - ay
        t0, t1 = 0.0, 1.0
        for p, q in ((-dx, ax - self.x0), (dx, self.x1 - ax), (-dy, ay - self.y0), (dy, self.y1 - ay)):
            if p == 0:
                if q <= 0:
                    return False
                continue
            t = q / p
            if p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
            if t0 >= t1:
                return False
        return (t1 - t0) * math.hypot(dx, dy) > 0.5


Segment = tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class LabelSpot:
    """Where :func:`_layout_labels` put one label.

    ``leader`` is the line from the marker's edge to the label (None when the
    label sits right beside its marker); ``clean`` is False when no free spot
    was found and the label had to overlap something.
    """

    box: Box
    leader: Optional[Segment]
    clean: bool


def _segments_cross(s: Segment, t: Segment) -> bool:
    (p1, p2), (q1, q2) = s, t

    def side(a, b, c):
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    d1, d2, d3, d4 = side(q1, q2, p1), side(q1, q2, p2), side(p1, p2, q1), side(p1, p2, q2)
    return d1 * d2 < 0 and d3 * d4 < 0


def _candidates(x: float, y: float, w: float, h: float, near: float, bounds: Box,
                columns_only: bool = False) -> list[tuple[float, Box]]:
    """Spots for a w x h label of a marker at (x, y) as (score, box), best first.

    First the spots touching the marker: right (preferred), the diagonals,
    left; then a column of rows stepping up and down from the marker on either
    side, a little further out each time, which a leader line ties back to the
    marker. Nothing straight above or below, so that a crowd of markers is
    never walled in. ``columns_only`` keeps the beside-the-marker spots and the
    columns, no diagonals. Scored by distance plus a fixed preference, so the
    order is the same on every run.
    """
    out: list[tuple[float, int, Box]] = []

    def add(x0: float, y0: float, penalty: float) -> None:
        box = Box(x0, y0, x0 + w, y0 + h)
        out.append((box.distance(x, y) + penalty, len(out), box))

    d = near * 0.9
    add(x + near, y - h / 2, 0)
    add(x - near - w, y - h / 2, 4)
    if not columns_only:
        add(x + d, y + d, 2)
        add(x + d, y - d - h, 2)
        add(x - d - w, y + d, 6)
        add(x - d - w, y - d - h, 6)
    step = h + 2.0
    rows = min(int(bounds.height / step) + 1, 60)
    for k in range(1, rows + 1):
        for shift in (0.0, 3 * step, 6 * step, 10 * step):
            for sign in (1, -1):
                add(x + near + shift, y - h / 2 + sign * k * step, 6)
                add(x - near - shift - w, y - h / 2 + sign * k * step, 10)
    out.sort(key=lambda c: (c[0], c[1]))
    return [(score, box) for score, _, box in out]


def _leader(x: float, y: float, r: float, box: Box, near: float) -> Optional[Segment]:
    nx, ny = box.nearest(x, y)
    length = math.hypot(nx - x, ny - y)
    if length <= near + 1.5 or length - r < 3.0:
        return None
    return (x + (nx - x) * r / length, y + (ny - y) * r / length), (nx, ny)


def _clamp(box: Box, bounds: Box) -> Box:
    dx = max(bounds.x0 - box.x0, 0.0) - max(box.x1 - bounds.x1, 0.0)
    dy = max(bounds.y0 - box.y0, 0.0) - max(box.y1 - bounds.y1, 0.0)
    return Box(box.x0 + dx, box.y0 + dy, box.x1 + dx, box.y1 + dy)


def _layout_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    bounds: Box,
    radii: Union[float, Sequence[float]] = 6.0,
    gap: float = 3.0,
    lines: Sequence[Segment] = (),
) -> list[LabelSpot]:
    """Place one label per marker so that no two labels overlap, in display pixels.

    ``anchors`` are the markers' centres, ``sizes`` the labels' (width, height)
    as the renderer measured them, ``radii`` the markers' radii, ``bounds`` the
    area the labels must stay in (the axes), ``lines`` drawn lines a label
    should rather not cover (reference line, Pareto front).

    Markers are taken top to bottom, left to right. Each label takes, among the
    spots of :func:`_candidates`, one that covers no marker and no label placed
    before it, crosses no leader line, and whose own leader crosses no label
    or marker (markers touching its own excepted); of those, the one with the
    lowest distance plus :data:`LINE_PENALTY` per covered line,
    :data:`CROSSING_PENALTY` per leader its leader crosses and
    :data:`AMBIGUITY_PENALTY` when another marker is nearer than its own (much
    nearer, for a spot with a leader). When no spot is free it takes the one
    with the fewest clashes (``clean=False``), and the whole layout is tried
    again with spots beside the markers and in columns only (no diagonals);
    the better of the two is kept. Deterministic: the same input gives the
    same layout.
    """
    n = len(anchors)
    if len(sizes) != n:
        raise ValueError(f"{n} anchors but {len(sizes)} label sizes")
    rs = [float(radii)] * n if isinstance(radii, (int, float)) else [float(r) for r in radii]
    first = _layout_pass(anchors, sizes, bounds, rs, gap, lines, columns_only=False)
    if all(spot.clean for spot, _ in first):
        return [spot for spot, _ in first]
    # Some label found no free spot: labels beside their markers may have walled a crowd in. Try columns only.
    second = _layout_pass(anchors, sizes, bounds, rs, gap, lines, columns_only=True)

    def badness(result):
        return sum(not spot.clean for spot, _ in result), sum(cost for _, cost in result)

    return [spot for spot, _ in min(first, second, key=badness)]


def _layout_pass(anchors, sizes, bounds: Box, rs: list[float], gap: float, lines, columns_only: bool):
    """One greedy pass of :func:`_layout_labels`: [(spot, cost)] in the order of ``anchors``."""
    n = len(anchors)
    markers = [Box(x - r, y - r, x + r, y + r) for (x, y), r in zip(anchors, rs)]
    placed: dict[int, LabelSpot] = {}
    costs: dict[int, float] = {}
    for i in sorted(range(n), key=lambda i: (-anchors[i][1], anchors[i][0], i)):
        (x, y), (w, h), r = anchors[i], sizes[i], rs[i]
        near = r + gap
        best: Optional[tuple[tuple[int, float, int], Box, Optional[Segment]]] = None
        for rank, (score, box) in enumerate(_candidates(x, y, w, h, near, bounds, columns_only)):
            if best is not None and best[0][0] == 0 and score >= best[0][1]:
                break  # sorted by score and penalties only add: nothing later can win
            if not bounds.contains(box):
                continue
            leader = _leader(x, y, r, box, near)
            hard, crossings = _clashes(box, leader, i, markers, placed)
            cost = score + LINE_PENALTY * sum(box.crosses(*s) for s in lines) + CROSSING_PENALTY * crossings
            # A label nearer another marker reads as that one's; a leader settles it unless the other is much nearer.
            own = box.distance(x, y)
            limit = own - 0.5 if leader is None else 0.6 * own
            if any(box.distance(*a) < limit for j, a in enumerate(anchors) if j != i):
                cost += AMBIGUITY_PENALTY
            key = (hard, cost, rank)
            if best is None or key < best[0]:
                best = (key, box, leader)
        if best is None:  # the label is larger than the axes: keep it as close as the bounds allow
            box = _clamp(Box(x + near, y - h / 2, x + near + w, y + h / 2), bounds)
            placed[i], costs[i] = LabelSpot(box, _leader(x, y, r, box, near), False), math.inf
        else:
            placed[i], costs[i] = LabelSpot(best[1], best[2], best[0][0] == 0), best[0][1]
    return [(placed[i], costs[i]) for i in range(n)]


#: What covering a drawn line costs a label spot, in pixels of distance from its marker.
LINE_PENALTY = 14.0
#: What a leader crossing another leader costs, in pixels.
CROSSING_PENALTY = 30.0
#: What a spot closer to another marker than to its own costs, in pixels.
AMBIGUITY_PENALTY = 40.0


def _clashes(box: Box, leader: Optional[Segment], i: int, markers: list[Box],
             placed: dict[int, LabelSpot]) -> tuple[int, int]:
    """(things a spot must not do, leader crossings): see :func:`_layout_labels`."""
    crossings = 0
    count = sum(box.overlaps(m) for m in markers)
    if leader is not None:  # markers touching this one form one blob with it: its leader may start over them
        count += sum(m.crosses(*leader) for j, m in enumerate(markers) if j != i and not m.overlaps(markers[i]))
    for spot in placed.values():
        count += box.overlaps(spot.box, gap=2.0)
        if spot.leader is not None:
            count += box.crosses(*spot.leader)
            if leader is not None:
                crossings += _segments_cross(leader, spot.leader)
        if leader is not None:
            count += spot.box.crosses(*leader)
    return count, crossings


# ---------------------------------------------------------------------- plot

#: Marker colours, given out in the target registry's order, so a target keeps its colour from one
#: report to the next (cpu blue, edgetpu orange, gpu green); targets not in the registry take the rest.
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:red", "tab:grey")
#: (variant key, x-axis label) of the plot's panels; the second is drawn when any variant has that size.
SIZE_PANELS = (("size_bytes", ".tflite size (KiB)"), ("compressed_bytes", "zlib-compressed size (KiB)"))
LABEL_FONT = 8.0
MARKER_AREA = 44.0  # points squared
FRONT_COLOUR = "0.6"
REF_COLOUR = "0.15"


@dataclass(frozen=True)
class PlacedLabel:
    """One label as drawn.

    ``lines`` are its text lines with whether each is bold (on the Pareto
    front): variants of equal size and accuracy share a line (``cpu/fp32 =
    gpu/fp32``), variants whose markers fall on the same pixels share the
    label, one line each. ``names`` are the variants it names, ``anchor`` its
    marker in data units, ``box`` its extent in display pixels.
    """

    lines: tuple[tuple[str, bool], ...]
    names: tuple[str, ...]
    anchor: tuple[float, float]
    box: Box
    leader: bool
    clean: bool

    @property
    def text(self) -> str:
        return "\n".join(t for t, _ in self.lines)


@dataclass(frozen=True)
class PanelLayout:
    """One panel of the plot: its size key, its Pareto front (variant names, smallest first), its labels."""

    size_key: str
    xlabel: str
    front: tuple[str, ...]
    labels: tuple[PlacedLabel, ...]


def _colours(targets: Sequence) -> dict:
    from edgeresnet.targets import target_names

    known = target_names()
    out, extra = {}, len(known)
    for t in targets:
        if str(t) in known:
            out[t] = COLOURS[known.index(str(t)) % len(COLOURS)]
        else:
            out[t] = COLOURS[extra % len(COLOURS)]
            extra += 1
    return out


def _x_scale(xs: Sequence[float]) -> tuple[str, tuple[float, float]]:
    lo, hi = min(xs), max(xs)
    if lo > 0 and hi > 10 * lo:
        return "log", (lo / 1.4, hi * 1.4)
    span = hi - lo if hi > lo else max(abs(hi) * 0.2, 1.0)
    return "linear", (lo - 0.12 * span, hi + 0.12 * span)


def _y_limits(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    span = max(hi - lo, 1.0)
    return lo - 0.08 * span, hi + 0.10 * span


def _clusters(points_px: Sequence[tuple[float, float]], within: float) -> list[list[int]]:
    """Indices of markers closer than ``within`` pixels (transitively), each group top to bottom, left to right."""
    parent = list(range(len(points_px)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (xi, yi) in enumerate(points_px):
        for j in range(i):
            xj, yj = points_px[j]
            if math.hypot(xi - xj, yi - yj) < within:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(points_px)):
        groups.setdefault(root(i), []).append(i)
    return [sorted(g, key=lambda i: (-points_px[i][1], points_px[i][0], i)) for g in groups.values()]


def _label_lines(members: Sequence[int], xs, ys, texts, on_front) -> tuple[list[tuple[str, bool]], list[list[int]]]:
    """One line per distinct (x, y) among ``members``: equal points share it, joined by `` = ``."""
    same: dict[tuple[float, float], list[int]] = {}
    for i in members:
        same.setdefault((xs[i], ys[i]), []).append(i)
    lines = [(" = ".join(dict.fromkeys(texts[i] for i in g)), any(i in on_front for i in g)) for g in same.values()]
    return lines, list(same.values())


def _draw(report: dict):
    """The plot as an Agg-backed ``Figure`` plus the layout of every panel (a list of :class:`PanelLayout`)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as exc:
        raise MissingDependencyError(f"the plot needs matplotlib ({exc}); pip install matplotlib") from None
    reason = (report.get("evaluation") or {}).get("not_measured")
    if reason:  # a timing-only report: there is no accuracy to plot, and the figure says why
        fig = Figure(figsize=(7.2, 2.4), dpi=100)
        FigureCanvasAgg(fig)
        name = (report.get("model") or {}).get("name", "model")
        fig.text(0.5, 0.5, f"{name}: accuracy not measured\n{_clip(reason, 90)}\nsizes and latency: report.md, report.html",
                 ha="center", va="center", fontsize=10.5, color="0.25")
        return fig, []
    key, ylabel = accuracy_metric(report)
    variants = list(report.get("variants") or ())
    shown = [v for v in variants if _plottable(v, key)]
    left_out = [v for v in variants if not _plottable(v, key)]
    label_of = dict(zip((id(v) for v in shown), point_labels(shown)))
    panels = [p for p in SIZE_PANELS if p[0] == "size_bytes" or any(_num(v.get(p[0])) is not None for v in shown)]
    ref = _num((report.get("float") or {}).get("top1")) if key == "top1" else 100.0

    note_lines = _not_plotted(left_out, key, len(panels))

    # Fixed margins in inches (no tight_layout), so the label layout sees the axes exactly as they are saved.
    width, top_in, axes_in = 1.0 + 6.2 * len(panels), 0.75, 5.4
    bottom_in = 0.95 + 0.15 * len(note_lines)
    height = top_in + axes_in + bottom_in
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # its own Agg canvas: no pyplot, the caller's matplotlib backend is left alone
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, top=1 - top_in / height,
                        bottom=bottom_in / height, wspace=0.05)
    targets = list(dict.fromkeys(v.get("target") for v in shown))
    colour = _colours(targets)
    all_y = [float(v[key]) for v in shown] + ([ref] if ref is not None else [])
    if all_y:
        axes[0].set_ylim(*_y_limits(all_y))
    layouts = [_draw_panel(ax, shown, size_key, xlabel, key, ref, label_of, colour)
               for ax, (size_key, xlabel) in zip(axes, panels)]
    axes[0].set_ylabel(ylabel)

    handles = _legend_handles(Line2D, shown, targets, colour, key, ref)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8.5, frameon=False,
               bbox_to_anchor=(0.5, (0.06 + 0.15 * len(note_lines)) / height))
    model = report.get("model") or {}
    ev = report.get("evaluation") or {}
    count = ev.get("count")
    fig.suptitle(
        f"{model.get('name', 'model')}: accuracy vs size\n"
        f"evaluated on {_short(ev.get('source', 'unknown'))}" + (f" ({count} images)" if count is not None else ""),
        fontsize=10.5,
    )
    if note_lines:
        fig.text(0.01, 0.05 / height, "\n".join(note_lines), fontsize=7, va="bottom", ha="left", color="0.25")
    return fig, layouts


def _not_plotted(left_out: list, key: str, panels: int) -> list:
    """The wrapped note naming the variants left out of the plot, and why."""
    if not left_out:
        return []
    parts = []
    for v in left_out:
        why = str(v.get("status")).replace("_", " ") if v.get("status") in FAILED else f"no size or {key}"
        err = f": {_clip(v['error'], 90)}" if v.get("error") else ""
        parts.append(f"{v.get('name')} ({why}{err})")
    return textwrap.wrap("Not plotted: " + "; ".join(parts), width=95 * panels)


def _legend_handles(Line2D, shown, targets, colour, key, ref) -> list:  # noqa: N803 - matplotlib's class
    """One legend entry per target colour, marker kind in use, the front and the float reference."""
    handles = [Line2D([], [], marker="o", ls="", color=colour[t], label=str(t)) for t in targets]
    if any(prune_sparsity(v) is not None for v in shown):
        handles.append(Line2D([], [], marker="D", ls="", color="0.45", label="pruned"))
    if any(is_qat(v) for v in shown):
        handles.append(Line2D([], [], marker="s", ls="", color="0.45", label="QAT (plus: pruned + QAT)"))
    if any(v.get("status") == Status.OVER_BUDGET for v in shown):
        handles.append(Line2D([], [], marker="o", ls="", color="0.45", markerfacecolor="none", label="over budget"))
    if shown:
        handles.append(Line2D([], [], color=FRONT_COLOUR, lw=2.6, label="Pareto front (labels in bold)"))
    if ref is not None:
        what = f"float model {ref:.2f} %" if key == "top1" else "float model (100 % agreement)"
        handles.append(Line2D([], [], color=REF_COLOUR, ls="--", lw=1.0, label=what))
    return handles


def _marker(variant: dict) -> str:
    """Dot; diamond when pruned; square (QAT) or filled plus (pruned + QAT) when quantization-aware trained."""
    pruned = prune_sparsity(variant) is not None
    if is_qat(variant):
        return "P" if pruned else "s"
    return "D" if pruned else "o"


def _draw_markers(ax, variants: Sequence[dict], points_px: Sequence[tuple[float, float]], colour: dict) -> float:
    """The markers of variants that fall on the same pixels; return the radius they cover, in pixels.

    One variant: a dot (see :func:`_marker`; hollow when over budget). Two
    of the same shape and fill: one marker split in their two colours. More:
    rings around one another, the first outermost.
    """
    px_per_pt = ax.figure.dpi / 72.0
    shapes = [_marker(v) for v in variants]
    hollow = [v.get("status") == Status.OVER_BUDGET for v in variants]
    colours = [colour[v.get("target")] for v in variants]
    if len(variants) == 2 and len(set(shapes)) == 1 and len(set(hollow)) == 1 and not hollow[0]:
        x, y = ax.transData.inverted().transform(
            ((points_px[0][0] + points_px[1][0]) / 2, (points_px[0][1] + points_px[1][1]) / 2))
        size = math.sqrt(MARKER_AREA) + 1.4  # as wide as a scatter dot with its 1.4 pt edge
        ax.plot([x], [y], ls="", marker=shapes[0], markersize=size, fillstyle="left", markerfacecolor=colours[0],
                markerfacecoloralt=colours[1], markeredgecolor="none", zorder=3)
        return size / 2 * px_per_pt
    to_data = ax.transData.inverted()
    n = len(variants)
    for rank, (p, shape, h, c) in enumerate(zip(points_px, shapes, hollow, colours)):
        area = MARKER_AREA * (1.0 + 1.2 * (n - 1 - rank))
        x, y = to_data.transform(p)
        ax.scatter([x], [y], s=area, marker=shape, facecolors="none" if h else [c], edgecolors=[c],
                   linewidths=1.4, zorder=3 + 0.01 * rank)
    return math.sqrt(MARKER_AREA * (1.0 + 1.2 * (n - 1))) / 2 * px_per_pt + 0.7


def _draw_panel(ax, shown, size_key, xlabel, key, ref, label_of, colour) -> PanelLayout:
    """Markers, front, reference line and labels of one panel; limits are set before labels are placed."""
    pts = [v for v in shown if _num(v.get(size_key)) is not None]
    xs = [float(v[size_key]) / 1024 for v in pts]
    ys = [float(v[key]) for v in pts]
    front = pareto_front(list(zip(xs, ys)))
    on_front = set(front)
    ax.set_xlabel(xlabel)
    ax.grid(True, which="major", alpha=0.25)
    if ref is not None:
        ax.axhline(ref, color=REF_COLOUR, ls="--", lw=1.0, zorder=1)
    if not xs:
        ax.set_xticks([])
        ax.text(0.5, 0.5, "no variant produced a model that could be scored", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
        return PanelLayout(size_key, xlabel, (), ())
    lims = _set_x_axis(ax, xs)  # limits are final from here on: pixel positions below stay true in the saved PNG
    if len(front) >= 2:
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color=FRONT_COLOUR, lw=2.6,
                zorder=1.5, solid_joinstyle="miter", solid_capstyle="butt")

    base_r = math.sqrt(MARKER_AREA) / 2 * ax.figure.dpi / 72.0
    to_px = ax.transData.transform
    points_px = [tuple(to_px((x, y))) for x, y in zip(xs, ys)]
    clusters = _clusters(points_px, within=1.25 * base_r)  # markers that mostly cover each other
    texts = [label_of[id(v)] for v in pts]
    anchors, sizes, radii, labels = _markers_and_label_sizes(ax, clusters, pts, points_px, xs, ys, texts, on_front, colour)

    bb = ax.bbox
    bounds = Box(bb.x0 + 2, bb.y0 + 2, bb.x1 - 2, bb.y1 - 2)
    drawn = []
    if ref is not None:
        y_ref = to_px((lims[0], ref))[1]
        drawn.append(((bounds.x0, y_ref), (bounds.x1, y_ref)))
    corners = [to_px((xs[front[0]], ys[front[0]]))] if front else []
    for a, b in zip(front, front[1:]):
        corners += [to_px((xs[b], ys[a])), to_px((xs[b], ys[b]))]
    drawn += [(tuple(p), tuple(q)) for p, q in zip(corners, corners[1:])]
    spots = _layout_labels(anchors, sizes, bounds, radii, lines=drawn)

    placed = _place_labels(ax, labels, anchors, spots, pts, xs, ys)
    return PanelLayout(size_key, xlabel, tuple(str(pts[i].get("name")) for i in front), tuple(placed))


def _set_x_axis(ax, xs) -> tuple:
    """Linear or log size axis (log: KiB as plain numbers on 1-2-5 steps); returns the final limits."""
    scale, lims = _x_scale(xs)
    ax.set_xscale(scale)
    if scale == "log":
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # matplotlib is known present here

        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(*lims)
    return lims


def _markers_and_label_sizes(ax, clusters, pts, points_px, xs, ys, texts, on_front, colour) -> tuple:
    """Draw each cluster's markers; return per cluster its anchor, label box size, marker radius and lines."""
    renderer = ax.figure.canvas.get_renderer()
    anchors, sizes, radii, labels = [], [], [], []
    for members in clusters:
        r_px = _draw_markers(ax, [pts[i] for i in members], [points_px[i] for i in members], colour)
        radii.append(r_px + 1.0)
        lines, groups = _label_lines(members, xs, ys, texts, on_front)
        extents = []
        for text, bold in lines:
            probe = ax.text(0, 0, text, fontsize=LABEL_FONT, fontweight="bold" if bold else "normal")
            extents.append(probe.get_window_extent(renderer))
            probe.remove()
        sizes.append((max(e.width for e in extents) + 4.0, sum(e.height for e in extents) + 2.0))
        anchors.append((sum(points_px[i][0] for i in members) / len(members),
                        sum(points_px[i][1] for i in members) / len(members)))
        labels.append((lines, [i for g in groups for i in g], [e.height for e in extents]))
    return anchors, sizes, radii, labels


def _place_labels(ax, labels, anchors, spots, pts, xs, ys) -> list:
    """Write each label at its spot (one Text per line, so front lines can be bold), with a leader when moved."""
    to_data = ax.transData.inverted()
    placed = []
    for (lines, members, heights), (ax_px, ay_px), spot in zip(labels, anchors, spots):
        top = spot.box.y1 - 1.0
        for (text, bold), h in zip(lines, heights):
            ax.annotate(text, (xs[members[0]], ys[members[0]]), xytext=(spot.box.x0 + 2.0 - ax_px, top - h / 2 - ay_px),
                        textcoords="offset pixels", ha="left", va="center", fontsize=LABEL_FONT,
                        fontweight="bold" if bold else "normal", zorder=5, annotation_clip=False,
                        gid="variant-label", bbox=dict(boxstyle="square,pad=0.12", fc="white", ec="none", alpha=0.85))
            top -= h
        if spot.leader is not None:
            (x0, y0), (x1, y1) = to_data.transform(spot.leader)
            ax.plot([x0, x1], [y0, y1], color="0.35", lw=0.7, zorder=2.5)
        placed.append(PlacedLabel(tuple(lines), tuple(str(pts[i].get("name")) for i in members),
                                  tuple(to_data.transform((ax_px, ay_px))), spot.box, spot.leader is not None,
                                  spot.clean))
    return placed


def plot_accuracy_vs_size(report: dict, path: PathLike) -> Path:
    """Draw accuracy against size for every variant that produced a usable model; return ``path``.

    Two panels share the y axis (top-1 % with a labelled evaluation set, else
    agreement with the float model %): x is the .tflite size in KiB on the
    left and the zlib-compressed size on the right, where pruning shows (the
    right panel is left out when no variant has a compressed size). Each panel
    has its own Pareto front, a grey step line under the markers, whose labels
    are bold. Markers are coloured by target, diamonds are pruned variants,
    hollow markers are over budget; the float model is a dashed line. Labels
    (``cpu/int8 pruned 50%``; ``cpu/fp32 = gpu/fp32`` for equal points) are
    placed by :func:`_layout_labels`, clear of one another and of the markers,
    with a leader line when they sit away from their marker. Variants that
    failed are listed under the plot. Uses a bare Agg ``Figure`` (no pyplot).
    """
    path = _check_parent(Path(path))
    fig, _ = _draw(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------- CSV


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ";".join(str(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _checks_cell(checks: Optional[dict]) -> str:
    out = []
    for name, chk in (checks or {}).items():
        ok = chk.get("ok") if isinstance(chk, dict) else None
        out.append(f"{name}:{'ok' if ok else 'failed' if ok is False else 'unknown'}")
    return ";".join(out)


def csv_row(variant: dict, label: Optional[str] = None) -> dict:
    """One variant record as the CSV's columns (strings; empty where unknown).

    ``label`` is the plot's name for it (see :func:`point_labels`, which needs
    all the variants to tell apart repeated target/precision pairs); by
    default the variant is labelled on its own.
    """
    median, p90 = latency_of(variant)
    float_layers = (variant.get("recovery") or {}).get("float_layers")
    if isinstance(float_layers, (list, tuple)):
        float_layers = len(float_layers)
    row = {col: _cell(variant.get(col)) for col in CSV_COLUMNS}
    row.update(
        latency_median_ms=_cell(median),
        latency_p90_ms=_cell(p90),
        float_layers=_cell(float_layers),
        checks=_checks_cell(variant.get("checks")),
        label=label if label is not None else point_labels([variant])[0],
        prune_sparsity=_cell(prune_sparsity(variant)),
        fine_tune=fine_tune_text(variant) if variant.get("fine_tune") else "",
    )
    return row


def write_csv(report: dict, path: PathLike) -> Path:
    """One row per variant with the columns of :data:`CSV_COLUMNS`, in that order."""
    path = _check_parent(Path(path))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    variants = list(report.get("variants") or ())
    for v, label in zip(variants, point_labels(variants)):
        writer.writerow(csv_row(v, label))
    return atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:600;border-radius:3px;padding:.1em .4em;white-space:nowrap}
.s-ok{background:#dff3e3;color:#17622b}.s-over_budget{background:#fff1cc;color:#7a5200}
.s-convert_failed,.s-validation_failed{background:#fbe0e0;color:#8a1c1c}
tr.row-convert_failed,tr.row-validation_failed{background:#fff7f7}
.pass{color:#17622b;font-weight:600}.fail{color:#8a1c1c;font-weight:600}.unknown{color:#777}
img.plot{max-width:100%;border:1px solid #eee}code{background:#f6f6f6;padding:0 .2em}
.muted{color:#777;font-size:.85em}.label{color:#555;font-size:.85em}ul.errors li{margin:.2em 0}
"""


def _e(v) -> str:
    return html.escape("–" if v is None else str(v), quote=True)


def _value_html(v) -> str:
    if isinstance(v, dict):
        if not v:
            return "–"
        return "<br>".join(f"{_e(k)}: {_e(json.dumps(x) if isinstance(x, (dict, list)) else x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "<br>".join(_e(json.dumps(x) if isinstance(x, (dict, list)) else x) for x in v) if v else "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return _e(v)


def _record_table(record: Optional[dict], skip: tuple = ()) -> str:
    if not record:
        return '<p class="muted">none</p>'
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value_html(v)}</td></tr>" for k, v in record.items() if k not in skip)
    return f"<table>{rows}</table>"


def _status(status) -> str:
    s = str(status)
    return f'<span class="status s-{_e(s)}">{_e(s.replace("_", " "))}</span>'


def _variants_table(report: dict) -> str:
    variants = list(report.get("variants") or ())
    labelled = accuracy_metric(report)[0] == "top1"
    has_latency = any(latency_of(v)[0] is not None for v in variants)
    has_pruned = any(prune_sparsity(v) is not None for v in variants)
    has_tuned = any(v.get("fine_tune") for v in variants)
    has_zeros = any(_num(v.get("weight_sparsity")) is not None for v in variants)
    head = ["variant", "target", "precision", "io"] + (["pruned"] if has_pruned else [])
    head += (["fine-tuned"] if has_tuned else []) + ["size KiB", "zlib KiB"]
    head += ["top-1 %", "top-5 %", "drop pts"] if labelled else []
    measured = not (report.get("evaluation") or {}).get("not_measured")  # timing only (random weights): no accuracy
    head += ["agree %", "cosine", "SQNR dB"] if measured else ["accuracy"]
    head += ["zero weights %"] if has_zeros else []
    head += ["median ms", "p90 ms"] if has_latency else []
    head += ["status"]
    rows = []
    for v, label in zip(variants, point_labels(variants)):
        cells = [f'<td><code>{_e(v.get("name"))}</code><br><span class="label">{_e(label)}</span></td>',
                 f"<td>{_e(v.get('target'))}</td>", f"<td>{_e(v.get('precision'))}</td>",
                 f"<td>{_e(v.get('io_type'))}</td>"]
        cells += [f"<td>{_e(_pruning_text(v))}</td>"] if has_pruned else []
        cells += [f"<td>{_e(fine_tune_text(v))}</td>"] if has_tuned else []
        cells += [f'<td class="num">{_kib(v.get(k))}</td>' for k in ("size_bytes", "compressed_bytes")]
        nums = [_fmt(v.get("top1")), _fmt(v.get("top5")), _fmt(v.get("drop_pts"))] if labelled else []
        nums += ([_fmt(v.get("agreement")), _fmt(v.get("cosine"), ".4f"), _fmt(v.get("sqnr_db"), ".1f")]
                 if measured else ["not measured"])
        if has_zeros:
            zeros = _num(v.get("weight_sparsity"))
            nums.append(_fmt(None if zeros is None else 100 * zeros, ".1f"))
        if has_latency:
            med, p90 = latency_of(v)
            nums += [_fmt(med, ".3f"), _fmt(p90, ".3f")]
        cells += [f'<td class="num">{n}</td>' for n in nums]
        cells.append(f"<td>{_status(v.get('status'))}</td>")
        rows.append(f'<tr class="row-{_e(v.get("status"))}">' + "".join(cells) + "</tr>")
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<table class="variants"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _pruning_text(variant: dict) -> str:
    """``50% one-shot``, ``50% fine-tuned, 3 epochs``, ``50%`` or ``no``."""
    s = prune_sparsity(variant)
    if s is None:
        return "no"
    prune = variant.get("prune") if isinstance(variant.get("prune"), dict) else {}
    if prune.get("fine_tuned") is True:
        epochs = prune.get("epochs")
        return f"{_percent(s)} fine-tuned" + (f", {epochs} epochs" if epochs else "")
    if prune.get("fine_tuned") is False:
        return f"{_percent(s)} one-shot"
    return _percent(s)


def _pruning_section(report: dict) -> str:
    """The run's pruning record, else each distinct record the pruned variants carry, once."""
    if report.get("prune"):
        return _record_table(report["prune"], skip=("layers",))
    seen, parts = [], []
    for v in report.get("variants") or ():
        prune = v.get("prune")
        if isinstance(prune, dict) and prune and prune not in seen:
            seen.append(prune)
            names = [x.get("name") for x in report.get("variants") or () if x.get("prune") == prune]
            parts.append(f"<p>{_e(_pruning_text(v))}: " + ", ".join(f"<code>{_e(n)}</code>" for n in names) + "</p>"
                         + _record_table(prune, skip=("layers",)))
    return "".join(parts)


def _checks_table(report: dict) -> str:
    rows = []
    for v in report.get("variants") or ():
        for name, chk in (v.get("checks") or {}).items():
            chk = chk if isinstance(chk, dict) else {}
            ok = chk.get("ok")
            verdict = ('<span class="pass">ok</span>' if ok else '<span class="fail">failed</span>' if ok is False
                       else '<span class="unknown">unknown</span>')
            blocking = "yes" if chk.get("blocking", True) else "no"
            rows.append(f"<tr><td><code>{_e(v.get('name'))}</code></td><td>{_e(name)}</td><td>{verdict}</td>"
                        f"<td>{blocking}</td><td>{_e(chk.get('summary', ''))}</td></tr>")
    if not rows:
        return '<p class="muted">no checks were run</p>'
    head = "".join(f"<th>{h}</th>" for h in ("variant", "check", "result", "blocking", "summary"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _summary(report: dict) -> str:
    m = report.get("model") or {}
    pre = report.get("preprocessing") or {}
    f = report.get("float") or {}
    items = [
        f"model <code>{_e(m.get('source'))}</code> ({_e(m.get('flavor'))}, input {_e(tuple(m.get('input_shape') or ()))}, "
        f"{_e(m.get('classes'))} classes" + (f", {int(m['params']):,} parameters" if m.get("params") is not None else "") + ")",
        f"loaded in safe mode: {_e(safe_mode_text(m.get('safe_mode')))}",
        f"preprocessing preset <code>{_e(pre.get('preset'))}</code>"
        + (" folded into the model (it takes raw pixels)" if pre.get("folded_into_model") else ""),
    ]
    reason = (report.get("evaluation") or {}).get("not_measured")
    if reason:
        items.append(f"accuracy not measured: {_e(reason)}; sizes and latency only")
    elif f.get("top1") is not None:
        items.append(f"float model: top-1 {_fmt(f.get('top1'))} %, top-5 {_fmt(f.get('top5'))} % on {_e(f.get('count'))} images")
        if f.get("at_chance"):
            items.append(f'<span class="fail">at chance</span> (up to {_fmt(f["at_chance"]["threshold"])} % for '
                         f'{_e(f["at_chance"]["classes"])} classes): drift figures not meaningful')
    else:
        items.append(f"float model scored on {_e(f.get('count'))} unlabelled images (variants compared by agreement)")
    if report.get("max_drop") is not None:
        verdict = '<span class="pass">met</span>' if report.get("passed") else '<span class="fail">NOT met</span>'
        items.append(f"budget --max-drop {_e(report['max_drop'])} pts: {verdict}")
    else:
        verdict = '<span class="pass">all variants ok</span>' if report.get("passed") else '<span class="fail">some variants failed</span>'
        items.append(f"result: {verdict}")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def write_html(report: dict, path: PathLike, plot_png: Optional[PathLike] = None) -> Path:
    """One self-contained HTML page (inline CSS, the plot embedded as a data: URI); return ``path``."""
    path = _check_parent(Path(path))
    img = ""
    if plot_png is not None:
        p = Path(plot_png)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the plot {p} ({exc.strerror}); pass the PNG plot_accuracy_vs_size wrote") from None
        if not data.startswith(PNG_SIGNATURE):
            raise ConfigError(f"{p} is not a PNG file; pass the PNG plot_accuracy_vs_size wrote")
        b64 = base64.b64encode(data).decode("ascii")
        img = f'<h2>Accuracy vs size</h2><img class="plot" alt="accuracy vs size" src="data:image/png;base64,{b64}">'
    m = report.get("model") or {}
    errors = [f"<li><code>{_e(v.get('name'))}</code> {_status(v.get('status'))} {_e(v.get('error'))}</li>"
              for v in report.get("variants") or () if v.get("error")]
    prune = _pruning_section(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgeresnet report: {_e(m.get('name', 'model'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>edgeresnet report: {_e(m.get('name', 'model'))}</h1>",
        _summary(report),
        img,
        "<h2>Variants</h2>",
        _variants_table(report),
        ('<ul class="errors">' + "".join(errors) + "</ul>") if errors else "",
        "<h2>Checks</h2>",
        _checks_table(report),
        "<h2>Calibration</h2>",
        _record_table(report.get("calibration")),
        "<h2>Evaluation</h2>",
        _record_table(report.get("evaluation")),
    ]
    if prune:
        parts += ["<h2>Pruning</h2>", prune]
    parts.append(
        f'<p class="muted">Written by edgeresnet {_e(report.get("edgeresnet_version"))} on {_e(report.get("created"))} '
        f"in {_e(report.get('seconds'))} s.</p></body></html>\n"
    )
    return atomic_write_text(path, "\n".join(p for p in parts if p))
