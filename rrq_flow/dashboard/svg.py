"""A small inline SVG bar chart, drawn on the server (no chart library, no script): it holds only
numbers the server computed, so there is nothing in it to escape."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def bar_chart(values: Sequence[int], *, width: int, height: int, label: str) -> Markup:
    """One bar per value, oldest left; the tallest bar fills the height. Each bar has a
    ``<title>`` (its value) for a tooltip."""
    n = max(len(values), 1)
    top = max(values, default=0) or 1
    step = width / n
    bars = []
    for i, value in enumerate(values):
        h = 0 if value <= 0 else max(1.0, value / top * (height - 1))
        x = i * step
        bars.append(
            f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{max(step - 1, 1):.1f}" '
            f'height="{h:.1f}"><title>{int(value)}</title></rect>'
        )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(label)}" data-total="{sum(values)}" '
        f'data-bars="{len(values)}"><line x1="0" y1="{height - 0.5}" x2="{width}" '
        f'y2="{height - 0.5}" class="axis"/>{"".join(bars)}</svg>'
    )
