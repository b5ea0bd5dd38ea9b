"""Where the plot's labels go: one label per marker, clear of one another, in display pixels.

:func:`layout_labels` is the engine; :class:`Box` is a rectangle in display
pixels (y grows upwards, as in matplotlib). Nothing here draws: the plot
(``plot.py``) measures the labels, asks for their spots and draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union


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
    """Where :func:`layout_labels` put one label.

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


def layout_labels(
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
    """One greedy pass of :func:`layout_labels`: [(spot, cost)] in the order of ``anchors``."""
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
    """(things a spot must not do, leader crossings): see :func:`layout_labels`."""
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

