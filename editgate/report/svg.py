"""Small inline-SVG charts for the HTML report: no JavaScript, no fonts or libraries to fetch.

Three chart kinds cover the report: :func:`line_chart` (ability score vs number of edits),
:func:`heatmap` (editor × ability Δ) and :func:`scatter` (edit success vs ability retention).
Every mark carries a ``<title>``, so hovering shows its exact numbers in any browser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F7F", "#000000")
FAIL = "#C62828"
FONT = 'font-family="system-ui, -apple-system, Segoe UI, DejaVu Sans, sans-serif"'


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt_tick(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


@dataclass
class Point:
    x: float
    y: float
    tooltip: str = ""
    failed: bool = False
    y_low: float | None = None  # error bar
    y_high: float | None = None
    label: str = ""


@dataclass
class Series:
    name: str
    color: str
    points: list[Point] = field(default_factory=list)
    line: bool = True
    dashed: bool = False
    marker: str = "circle"  # circle | square | diamond


@dataclass
class Guide:
    """A horizontal reference line (baseline, tolerance)."""

    y: float
    label: str
    stroke: str = "#9E9E9E"
    dashed: bool = True


class _Frame:
    """Maps data coordinates to pixels inside a plot area with margins."""

    def __init__(self, width: int, height: int, x_range: tuple[float, float],
                 y_range: tuple[float, float], *, left: int = 56, right: int = 16, top: int = 30,
                 bottom: int = 44, x_transform: Callable[[float], float] = lambda x: x) -> None:
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.tx = x_transform
        self.x0, self.x1 = (x_transform(x_range[0]), x_transform(x_range[1]))
        self.y0, self.y1 = y_range
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y1 = self.y0 + 1

    def x(self, value: float) -> float:
        span = self.width - self.left - self.right
        return self.left + (self.tx(value) - self.x0) / (self.x1 - self.x0) * span

    def y(self, value: float) -> float:
        span = self.height - self.top - self.bottom
        return self.top + (1 - (value - self.y0) / (self.y1 - self.y0)) * span


def _axes(frame: _Frame, x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str,
          y_label: str, title: str) -> list[str]:
    parts = [f'<text x="{frame.left}" y="16" font-size="13" font-weight="600" {FONT}>'
             f'{escape(title)}</text>']
    bottom = frame.height - frame.bottom
    right = frame.width - frame.right
    for t in y_ticks:
        y = frame.y(t)
        parts.append(f'<line x1="{frame.left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#ECECEC"/>')
        parts.append(f'<text x="{frame.left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#555" {FONT}>{_fmt_tick(t)}</text>')
    for t in x_ticks:
        x = frame.x(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" '
                     'stroke="#888"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle" '
                     f'fill="#555" {FONT}>{_fmt_tick(t)}</text>')
    parts.append(f'<line x1="{frame.left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#888"/>')
    parts.append(f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{bottom}" '
                 'stroke="#888"/>')
    parts.append(f'<text x="{(frame.left + right) / 2:.1f}" y="{bottom + 32}" font-size="11" '
                 f'text-anchor="middle" fill="#333" {FONT}>{escape(x_label)}</text>')
    cy = (frame.top + bottom) / 2
    parts.append(f'<text x="14" y="{cy:.1f}" font-size="11" text-anchor="middle" fill="#333" '
                 f'transform="rotate(-90 14 {cy:.1f})" {FONT}>{escape(y_label)}</text>')
    return parts


def _marker(kind: str, x: float, y: float, fill: str, size: float = 4.5, stroke: str = "white"
            ) -> str:
    if kind == "square":
        return (f'<rect x="{x - size:.1f}" y="{y - size:.1f}" width="{2 * size:.1f}" '
                f'height="{2 * size:.1f}" fill="{fill}" stroke="{stroke}" stroke-width="1"/>')
    if kind == "diamond":
        s = size * 1.3
        return (f'<polygon points="{x:.1f},{y - s:.1f} {x + s:.1f},{y:.1f} {x:.1f},{y + s:.1f} '
                f'{x - s:.1f},{y:.1f}" fill="{fill}" stroke="{stroke}" stroke-width="1"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size}" fill="{fill}" stroke="{stroke}" stroke-width="1"/>'


def _svg(width: int, height: int, body: list[str], label: str, css_class: str) -> str:
    return (f'<svg class="{css_class}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(label)}">' + "".join(body) + "</svg>")


def _draw_series(frame: _Frame, series: Sequence[Series]) -> list[str]:
    parts: list[str] = []
    for s in series:
        pts = sorted(s.points, key=lambda p: p.x)
        if s.line and len(pts) > 1:
            path = " ".join(f"{frame.x(p.x):.1f},{frame.y(p.y):.1f}" for p in pts
                            if math.isfinite(p.y))
            dash = ' stroke-dasharray="5 3"' if s.dashed else ""
            parts.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" '
                         f'stroke-width="2"{dash}/>')
        for p in pts:
            if not math.isfinite(p.y):
                continue
            x, y = frame.x(p.x), frame.y(p.y)
            group = [f"<title>{escape(p.tooltip or f'{s.name}: {p.y:.4f}')}</title>"]
            if p.y_low is not None and p.y_high is not None and math.isfinite(p.y_low) \
                    and math.isfinite(p.y_high):
                group.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.y(p.y_low):.1f}" '
                             f'y2="{frame.y(p.y_high):.1f}" stroke="{s.color}" stroke-width="1.2" '
                             'opacity="0.6"/>')
            if p.failed:
                group.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8" fill="none" '
                             f'stroke="{FAIL}" stroke-width="2"/>')
            group.append(_marker(s.marker, x, y, s.color))
            if p.label:
                group.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" font-size="10" fill="#444" '
                             f'{FONT}>{escape(p.label)}</text>')
            parts.append(f'<g class="mark">{"".join(group)}</g>')
    return parts


def _legend(series: Sequence[Series], x: float, y: float, width: int) -> list[str]:
    parts, cx, cy = [], x, y
    for s in series:
        text_width = 7 * len(s.name) + 28
        if cx + text_width > width and cx > x:
            cx, cy = x, cy + 16
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        if s.line:
            parts.append(f'<line x1="{cx:.1f}" x2="{cx + 18:.1f}" y1="{cy:.1f}" y2="{cy:.1f}" '
                         f'stroke="{s.color}" stroke-width="2"{dash}/>')
        parts.append(_marker(s.marker, cx + 9, cy, s.color, size=3.5))
        parts.append(f'<text x="{cx + 23:.1f}" y="{cy + 4:.1f}" font-size="11" fill="#333" '
                     f'{FONT}>{escape(s.name)}</text>')
        cx += text_width
    return parts


def legend_height(series: Sequence[Series], width: int, left: int = 56) -> int:
    rows, cx = 1, left
    for s in series:
        text_width = 7 * len(s.name) + 28
        if cx + text_width > width and cx > left:
            rows, cx = rows + 1, left
        cx += text_width
    return 16 * rows + 6


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               guides: Sequence[Guide] = (), width: int = 390, height: int = 270,
               legend: bool = True) -> str:
    """Lines with markers, optional error bars and red rings on failed points."""
    points = [p for s in series for p in s.points if math.isfinite(p.y)]
    xs = [p.x for p in points] or [0.0, 1.0]
    ys = [p.y for p in points] + [g.y for g in guides if math.isfinite(g.y)]
    ys += [v for p in points for v in (p.y_low, p.y_high) if v is not None and math.isfinite(v)]
    ys = ys or [0.0, 1.0]
    y_low, y_high = min(ys), max(ys)
    pad = (y_high - y_low) * 0.08 or max(abs(y_high) * 0.05, 0.05)
    x_max = max(xs)
    log_x = x_max > 50
    transform = (lambda v: math.log10(1 + v)) if log_x else (lambda v: v)
    if log_x:
        x_ticks = [t for t in (0, 1, 10, 100, 1000, 10000) if t <= x_max * 1.01]
        if x_max not in x_ticks:
            x_ticks.append(x_max)
    else:
        x_ticks = [t for t in nice_ticks(0, x_max, 5) if t == int(t)]
    extra = legend_height(series, width) if legend else 0
    frame = _Frame(width, height + extra, (min(0.0, min(xs)), x_max), (y_low - pad, y_high + pad),
                   bottom=44 + extra, x_transform=transform)
    y_ticks = nice_ticks(y_low - pad, y_high + pad, 4)
    parts = _axes(frame, x_ticks, y_ticks, x_label + (" (log scale)" if log_x else ""), y_label, title)
    right = width - frame.right
    for index, g in enumerate(guides):
        if not math.isfinite(g.y):
            continue
        y = frame.y(g.y)
        dash = ' stroke-dasharray="4 4"' if g.dashed else ""
        parts.append(f'<line x1="{frame.left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{g.stroke}" stroke-width="1.3"{dash}><title>{escape(g.label)}</title>'
                     '</line>')
        # The first guide's label sits above its line at the right, the others below theirs at the
        # left: guides close together (a baseline and its tolerance) never overwrite each other.
        x, text_y, anchor = ((right - 2, y - 4, "end") if index == 0
                             else (frame.left + 4, y + 12, "start"))
        parts.append(f'<text x="{x}" y="{text_y:.1f}" font-size="10" text-anchor="{anchor}" '
                     f'fill="{g.stroke}" stroke="white" stroke-width="3" paint-order="stroke" '
                     f'{FONT}>{escape(g.label)}</text>')
    parts.extend(_draw_series(frame, series))
    if legend:
        parts.extend(_legend(series, frame.left, height + 4, width))
    return _svg(width, height + extra, parts, title, "chart line-chart")


def legend(series: Sequence[Series], width: int = 900) -> str:
    """A standalone legend (one for a whole grid of charts that share their series)."""
    height = legend_height(series, width, left=8)
    return _svg(width, height, _legend(series, 8, 10, width), "legend", "legend")


@dataclass
class Cell:
    value: float | None  # in [-1, 1] after scaling; None: no data
    text: str
    tooltip: str
    failed: bool = False
    fill: str | None = None  # overrides the colour scale (e.g. a failed edit: no score at all)


def _diverging(value: float) -> str:
    """−1 → red, 0 → white, +1 → blue."""
    v = max(-1.0, min(1.0, value))
    if v < 0:
        r, g, b = 255 - (255 - 198) * -v, 255 - (255 - 40) * -v, 255 - (255 - 40) * -v
    else:
        r, g, b = 255 - (255 - 33) * v, 255 - (255 - 102) * v, 255 - (255 - 172) * v
    return f"rgb({r:.0f},{g:.0f},{b:.0f})"


def heatmap(rows: Sequence[str], columns: Sequence[str], cells: dict[tuple[str, str], Cell], *,
            title: str, legend: tuple[str, str, str], cell_width: int = 92, cell_height: int = 26,
            row_groups: dict[str, str] | None = None) -> str:
    """A grid of cells coloured on a diverging scale; failed cells get a ✗ and a dark border.

    ``legend`` gives the texts at −1, 0 and +1 of the colour scale.
    """
    label_width = max([7 * len(r) + 16 for r in rows] + [90])
    # column labels are rotated by 35°: their horizontal and vertical extents
    longest = max([6.2 * len(c) for c in columns] + [40])
    header_height = int(longest * 0.58) + 16
    title_height = 24 if title else 0
    width = int(max(label_width + cell_width * (len(columns) - 0.5) + longest * 0.82 + 16,
                    label_width + 380))  # room for the colour legend
    height = title_height + header_height + cell_height * len(rows) + 56
    top = title_height + header_height
    parts = [f'<text x="4" y="16" font-size="13" font-weight="600" {FONT}>{escape(title)}</text>'
             ] if title else []
    for j, column in enumerate(columns):
        x = label_width + cell_width * j + cell_width / 2
        parts.append(f'<text x="{x:.1f}" y="{top - 8}" font-size="11" fill="#333" '
                     f'transform="rotate(-35 {x:.1f} {top - 8})" {FONT}>{escape(column)}</text>')
    previous_group = None
    for i, row in enumerate(rows):
        y = top + cell_height * i
        group = (row_groups or {}).get(row)
        if group is not None and group != previous_group and i:
            parts.append(f'<line x1="4" x2="{label_width + cell_width * len(columns)}" '
                         f'y1="{y:.1f}" y2="{y:.1f}" stroke="#555" stroke-width="1"/>')
        previous_group = group
        parts.append(f'<text x="{label_width - 8}" y="{y + cell_height / 2 + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#222" {FONT}>{escape(row)}</text>')
        for j, column in enumerate(columns):
            cell = cells.get((row, column))
            x = label_width + cell_width * j
            if cell is None or (cell.value is None and cell.fill is None):
                parts.append(f'<rect x="{x + 1}" y="{y + 1}" width="{cell_width - 2}" '
                             f'height="{cell_height - 2}" fill="#F5F5F5"/>')
                continue
            fill = cell.fill or _diverging(cell.value or 0.0)
            stroke = ' stroke="#111" stroke-width="2"' if cell.failed else ""
            ink = "white" if cell.fill or abs(cell.value or 0.0) > 0.6 else "#111"
            mark = " ✗" if cell.failed else ""
            parts.append(
                f'<g class="cell"><title>{escape(cell.tooltip)}</title>'
                f'<rect x="{x + 1}" y="{y + 1}" width="{cell_width - 2}" height="{cell_height - 2}" '
                f'fill="{fill}"{stroke}/>'
                f'<text x="{x + cell_width / 2:.1f}" y="{y + cell_height / 2 + 4:.1f}" font-size="11" '
                f'text-anchor="middle" fill="{ink}" font-weight="{600 if cell.failed else 400}" '
                f'{FONT}>{escape(cell.text + mark)}</text></g>')
    # colour legend
    ly = top + cell_height * len(rows) + 18
    lx, lw = label_width, 360
    steps = 40
    for k in range(steps):
        value = -1 + 2 * k / (steps - 1)
        parts.append(f'<rect x="{lx + lw * k / steps:.1f}" y="{ly}" width="{lw / steps + 0.6:.1f}" '
                     f'height="10" fill="{_diverging(value)}"/>')
    for frac, text, anchor in ((0, legend[0], "start"), (0.5, legend[1], "middle"),
                               (1, legend[2], "end")):
        parts.append(f'<text x="{lx + lw * frac:.1f}" y="{ly + 24}" font-size="10" fill="#444" '
                     f'text-anchor="{anchor}" {FONT}>{escape(text)}</text>')
    return _svg(width, height, parts, title, "chart heatmap")


def scatter(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
            x_range: tuple[float, float] = (0.0, 1.0), y_range: tuple[float, float] | None = None,
            ideal: tuple[float, float] | None = None, chains: Sequence[tuple[str, list[Point]]] = (),
            width: int = 640, height: int = 420) -> str:
    """Points per series; ``chains`` (colour, points) are drawn as thin paths in the given order
    (e.g. the checkpoints of a sequential regime), behind the points."""
    ys = [p.y for s in series for p in s.points if math.isfinite(p.y)] or [0.0, 1.0]
    if y_range is None:
        y_range = (min(0.0, min(ys)), max(1.05, max(ys) * 1.05))
    extra = legend_height(series, width)
    frame = _Frame(width, height + extra, x_range, y_range, bottom=44 + extra, right=40)
    parts = _axes(frame, nice_ticks(*x_range, 5), nice_ticks(*y_range, 5), x_label, y_label, title)
    if ideal is not None:
        x, y = frame.x(ideal[0]), frame.y(ideal[1])
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="#2E7D32" '
                     'stroke-dasharray="3 2"/>')
        parts.append(f'<text x="{x:.1f}" y="{y - 14:.1f}" font-size="10" text-anchor="middle" '
                     f'fill="#2E7D32" {FONT}>ideal</text>')
    for stroke, points in chains:
        path = " ".join(f"{frame.x(p.x):.1f},{frame.y(p.y):.1f}" for p in points
                        if math.isfinite(p.y) and math.isfinite(p.x))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{stroke}" '
                     'stroke-width="1.4" opacity="0.55"/>')
    flat = [Series(s.name, s.color, s.points, line=False, marker=s.marker) for s in series]
    parts.extend(_draw_series(frame, flat))
    parts.extend(_legend(series, frame.left, height + 4, width))
    return _svg(width, height + extra, parts, title, "chart scatter")
