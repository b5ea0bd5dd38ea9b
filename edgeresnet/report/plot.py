"""The accuracy-vs-size plot of a ``report.json`` dict (``accuracy_vs_size.png``).

Reads the dict that :meth:`edgeresnet.report.RunReport.to_dict` writes and
nothing else; the PNG is written atomically. The labels are placed by
:mod:`edgeresnet.report.layout`.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from edgeresnet.errors import MissingDependencyError
from edgeresnet._util.files import atomic_write_bytes
from edgeresnet.report.layout import Box, layout_labels
from edgeresnet.report.markdown import as_number, is_qat
from edgeresnet.report.reading import accuracy_metric, point_labels, prune_sparsity
from edgeresnet.report.records import Status
from edgeresnet.report.writers import check_parent

PathLike = Union[str, Path]

#: Statuses of variants that are not plotted (no model, or a model that failed a check).
FAILED = tuple(s.value for s in Status if s.failed)


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
    panels = [p for p in SIZE_PANELS if p[0] == "size_bytes" or any(as_number(v.get(p[0])) is not None for v in shown)]
    ref = as_number((report.get("float") or {}).get("top1")) if key == "top1" else 100.0

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
    pts = [v for v in shown if as_number(v.get(size_key)) is not None]
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
    spots = layout_labels(anchors, sizes, bounds, radii, lines=drawn)

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
    placed by :func:`layout_labels`, clear of one another and of the markers,
    with a leader line when they sit away from their marker. Variants that
    failed are listed under the plot. Uses a bare Agg ``Figure`` (no pyplot).
    """
    path = check_parent(Path(path))
    fig, _ = _draw(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return atomic_write_bytes(path, buf.getvalue())

