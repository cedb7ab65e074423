"""Bar charts as inline SVG, drawn here: no script, no CDN, so the explorer works offline and in any browser.

A chart is a list of ``(label, value)`` bars; labels are escaped (they may carry model names one day), values are
numbers. Each bar carries a ``<title>``, the browser's tooltip, with its exact value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

WIDTH, HEIGHT = 720, 180
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 56, 22, 10


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    title: str,
    unit: str = "",
    show: Callable[[float], str] = lambda v: f"{v:g}",
    every: int = 10,
) -> str:
    """An SVG bar chart of ``bars`` titled ``title``; every ``every``-th label is written under the axis."""
    inner_w, inner_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    top = max((v for _, v in bars), default=0.0) or 1.0
    step = inner_w / max(1, len(bars))
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + inner_h}" x2="{WIDTH - 8}" y2="{PAD_TOP + inner_h}" class="axis"/>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 8}" text-anchor="end" class="tick">{escape(show(top))}</text>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + inner_h}" text-anchor="end" class="tick">0</text>',
    ]
    for i, (label, value) in enumerate(bars):
        h = inner_h * max(0.0, value) / top
        x = PAD_LEFT + i * step
        tip = f"{label}: {show(value)}{' ' + unit if unit else ''}"
        parts.append(
            f'<rect class="bar" x="{x + step * 0.1:.1f}" y="{PAD_TOP + inner_h - h:.1f}" '
            f'width="{max(1.0, step * 0.8):.1f}" height="{h:.1f}"><title>{escape(tip)}</title></rect>'
        )
        if i % every == 0 or (i == len(bars) - 1 and i % every > every // 2):  # the last, unless crowded
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle" class="tick">'
                f"{escape(label)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)
