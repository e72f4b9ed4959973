"""Inline SVG charts for self-contained HTML reports (no scripts, fonts or external assets).

A charting library would bring JavaScript or a plotting stack into a scanner for two bar
charts; a horizontal bar chart in SVG is a few lines and renders in any browser, offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Final

SEVERITY_COLOURS: Final = {
    "critical": "#7b1fa2",
    "high": "#d32f2f",
    "medium": "#f57c00",
    "low": "#0288d1",
    "info": "#757575",
}
_ROW: Final = 26
_LABEL_WIDTH: Final = 260
_BAR_WIDTH: Final = 360


def bar_chart(
    title: str, bars: Sequence[tuple[str, int, str]], *, chart_id: str, unit: str = ""
) -> str:
    """A horizontal bar chart: one (label, value, colour) per bar, scaled to the largest."""
    top = max((value for _, value, _ in bars), default=0)
    height = 34 + _ROW * max(len(bars), 1)
    width = _LABEL_WIDTH + _BAR_WIDTH + 80
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<text x="0" y="18" class="chart-title">{escape(title)}</text>',
    ]
    if not bars:
        parts.append(f'<text x="0" y="{18 + _ROW}" class="chart-empty">none</text>')
    for n, (label, value, colour) in enumerate(bars):
        y = 30 + n * _ROW
        length = 0 if top == 0 else max(2, round(_BAR_WIDTH * value / top))
        parts.append(
            f'<text x="{_LABEL_WIDTH - 8}" y="{y + 16}" text-anchor="end" class="chart-label">'
            f"{escape(label)}</text>"
            f'<rect class="bar" x="{_LABEL_WIDTH}" y="{y + 3}" width="{length}" height="18" '
            f'fill="{escape(colour)}"><title>{escape(label)}: {value}{escape(unit)}</title></rect>'
            f'<text x="{_LABEL_WIDTH + length + 6}" y="{y + 16}" class="chart-value">'
            f"{value}{escape(unit)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def paired_bar_chart(
    title: str,
    groups: Sequence[tuple[str, int, int]],
    *,
    chart_id: str,
    legend: tuple[str, str] = ("before", "after"),
    colours: tuple[str, str] = ("#90a4ae", "#d32f2f"),
) -> str:
    """Two bars per label (e.g. one run and the next), scaled to the largest value."""
    top = max((max(a, b) for _, a, b in groups), default=0)
    row = 2 * 20 + 8
    height = 52 + row * max(len(groups), 1)
    width = _LABEL_WIDTH + _BAR_WIDTH + 120
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<text x="0" y="18" class="chart-title">{escape(title)}</text>',
    ]
    for n, (name, colour) in enumerate(zip(legend, colours, strict=True)):
        x = _LABEL_WIDTH + n * 160
        parts.append(
            f'<rect x="{x}" y="26" width="12" height="12" fill="{escape(colour)}"></rect>'
            f'<text x="{x + 18}" y="37" class="chart-label">{escape(name)}</text>'
        )
    if not groups:
        parts.append(f'<text x="0" y="{52 + 18}" class="chart-empty">none</text>')
    for n, (label, *values) in enumerate(groups):
        y = 48 + n * row
        parts.append(
            f'<text x="{_LABEL_WIDTH - 8}" y="{y + 24}" text-anchor="end" class="chart-label">'
            f"{escape(label)}</text>"
        )
        for k, (value, name, colour) in enumerate(zip(values, legend, colours, strict=True)):
            length = 0 if top == 0 else max(2, round(_BAR_WIDTH * value / top))
            by = y + k * 20
            parts.append(
                f'<rect class="bar" x="{_LABEL_WIDTH}" y="{by + 2}" width="{length}" height="16" '
                f'fill="{escape(colour)}"><title>{escape(label)} ({escape(name)}): {value}'
                f'</title></rect><text x="{_LABEL_WIDTH + length + 6}" y="{by + 15}" '
                f'class="chart-value">{value}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
