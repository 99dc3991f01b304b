"""Small inline-SVG charts for self-contained HTML reports (no JavaScript, no CDN).

line_chart: several series over a shared x axis; bar_chart: labelled horizontal bars.
Both return an <svg> string with a <title> per series point group for hover text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22", "#393b79", "#ad494a", "#637939", "#843c39", "#7b4173", "#3182bd"]
FONT = 'font-family="system-ui, sans-serif" font-size="11"'
CHAR_WIDTH = 6.5  # average glyph width at that size, for fitting labels


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str | None = None
    dashed: bool = False


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.3g}"


def _empty(title: str, width: int, height: int, note: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT}>'
        f'<text x="8" y="16" font-weight="600">{escape(title)}</text>'
        f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">{escape(note)}</text></svg>'
    )


def line_chart(series: list[Series], *, title: str, y_label: str, x_label: str = "seconds into the run",
               width: int = 640, height: int = 260, y_min: float | None = 0) -> str:
    series = [s for s in series if s.points]
    if not series:
        return _empty(title, width, height, "no data")
    legend_rows = math.ceil(len(series) / 3)
    left, right, top, bottom = 56, 12, 26, 46 + 16 * legend_rows
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x_ticks = nice_ticks(min(xs), max(xs), 6)
    y_ticks = nice_ticks(min(ys) if y_min is None else min(y_min, min(ys)), max(ys), 5)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT}>',
           f'<text x="8" y="16" font-weight="600">{escape(title)}</text>']
    for t in y_ticks:
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end" fill="#555">{_label(t)}</text>')
    for t in x_ticks:
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" stroke="#999"/>')
        out.append(f'<text x="{px(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#555">{_label(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 30}" text-anchor="middle" fill="#555">{escape(x_label)}</text>')
    out.append(f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" fill="#555" '
               f'transform="rotate(-90 12 {top + plot_h / 2})">{escape(y_label)}</text>')
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{path}">'
                   f'<title>{escape(s.name)}</title></polyline>')
        if len(s.points) == 1:
            x, y = s.points[0]
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>')
        lx = 8 + (i % 3) * (width - 16) / 3
        ly = height - 16 * legend_rows + 16 * (i // 3) - 4
        out.append(f'<line x1="{lx:.1f}" x2="{lx + 16:.1f}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 20:.1f}" y="{ly}">{escape(s.name[:40])}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(items: list[tuple[str, float]], *, title: str, unit: str = "", width: int = 640, color: str = "#d62728") -> str:
    """Horizontal bars, largest first; labels on the left."""
    if not items:
        return _empty(title, width, 60, "none")
    items = sorted(items, key=lambda kv: kv[1], reverse=True)
    row, top = 20, 26
    label_w = min(width * 0.6, max(len(label) for label, _ in items) * CHAR_WIDTH + 12)
    fits = int((label_w - 12) / CHAR_WIDTH)
    height = top + row * len(items) + 8
    biggest = max(value for _, value in items) or 1
    bar_space = width - label_w - 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT}>',
           f'<text x="8" y="16" font-weight="600">{escape(title)}</text>']
    for i, (label, value) in enumerate(items):
        y = top + i * row
        w = max(1.0, value / biggest * bar_space)
        shown = label if len(label) <= fits else label[: fits - 3] + "..."
        out.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end"><title>{escape(label)}</title>{escape(shown)}</text>')
        out.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{color}"/>')
        out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{_label(value)}{escape(unit)}</text>')
    out.append("</svg>")
    return "".join(out)
