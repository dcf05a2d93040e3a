"""Charts drawn on the server as SVG: readable without JavaScript, in dark mode (colours
come from the page's CSS: `currentColor` and the `.chart .bar` rule in console_base.html),
and by a screen reader (a <title>, and every bar's value in its own <title>).

Every label is data: it is escaped here, never written into the markup as it came.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 200
LEFT, BOTTOM, TOP = 44, 28, 12


def bar_chart(title: str, bars: Sequence[tuple[str, int | float]], *, unit: str = "",
              label_every: int = 1) -> Markup:
    """One bar per (label, value), left to right; the y axis starts at 0 and its top is
    the largest value rounded up to a readable number. `label_every` shows every n-th label
    under the axis (all of them in the bars' titles)."""
    values = [max(0, v) for _, v in bars]
    # Counts get an even top, so the middle line is a whole number too; nothing at all
    # still gets a scale (0, 1, 2), not three lines all labelled 0.
    top = _nice(max(values, default=0), whole=all(float(v).is_integer() for v in values)) or 2
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, len(bars))
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(top * fraction)}</text>')
    for index, ((label, value), shown) in enumerate(zip(bars, values, strict=True)):
        h = plot_h * shown / top if top else 0
        x = LEFT + index * step
        parts.append(f'<rect class="bar" x="{x + step * 0.15:.1f}" y="{TOP + plot_h - h:.1f}" '
                     f'width="{max(1.0, step * 0.7):.1f}" height="{h:.1f}"><title>{escape(str(label))}: '
                     f'{_number(value)}{escape(unit)}</title></rect>')
        if index % max(1, label_every) == 0:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                         f'{escape(str(label))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _nice(value: float, *, whole: bool = False) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten at or above `value` (0 stays 0);
    `whole`: an even whole number from 2, 4, 6, 8 or 10 times a power of ten, so that
    half of it is whole too."""
    if value <= 0:
        return 0
    power = 1
    while power * 10 <= value:
        power *= 10
    while power > value * 10:
        power /= 10
    if whole:
        power = max(power, 1)
        factors: tuple[float, ...] = (2, 4, 6, 8, 10)
    else:
        factors = (1, 2, 2.5, 5, 10)
    for factor in factors:
        if factor * power >= value:
            return factor * power
    return 10 * power


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 10 else f"{value:,.1f}"
