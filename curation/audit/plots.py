"""Inline SVG plots of ITM scores: stacked histograms and threshold sweeps.

Plain SVG elements with presentation attributes (no CSS, no script), so they render under
the report's Content-Security-Policy. Bars carry a ``<title>`` as tooltip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from curation.audit.markup import Markup, tag

WIDTH, HEIGHT = 520, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 16, 34
KEPT_COLOUR = "#2e7d32"
DROPPED_COLOUR = "#c62828"
THRESHOLD_COLOUR = "#1a237e"
LINE_COLOURS = {"web": "#1565c0", "synthetic": "#ef6c00"}
TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _x(value: float) -> float:
    return LEFT + value * (WIDTH - LEFT - RIGHT)


def _y(share: float) -> float:
    return HEIGHT - BOTTOM - share * (HEIGHT - TOP - BOTTOM)


def _axes(y_top_label: str, x_label: str) -> list[Markup]:
    base = HEIGHT - BOTTOM
    parts = [
        tag("line", x1=LEFT, y1=base, x2=WIDTH - RIGHT, y2=base, stroke="#555"),
        tag("line", x1=LEFT, y1=TOP, x2=LEFT, y2=base, stroke="#555"),
        tag("text", y_top_label, x=LEFT - 4, y=TOP + 4, font_size=10, text_anchor="end"),
        tag("text", "0", x=LEFT - 4, y=base, font_size=10, text_anchor="end"),
        tag("text", x_label, x=(LEFT + WIDTH - RIGHT) / 2, y=HEIGHT - 4, font_size=11,
            text_anchor="middle"),
    ]  # fmt: skip
    for tick in TICKS:
        parts.append(tag("line", x1=_x(tick), y1=base, x2=_x(tick), y2=base + 4, stroke="#555"))
        parts.append(
            tag("text", f"{tick:g}", x=_x(tick), y=base + 15, font_size=10, text_anchor="middle")
        )
    return parts


def _threshold_line(threshold: float | None) -> list[Markup]:
    if threshold is None:
        return []
    x = _x(min(max(threshold, 0.0), 1.0))
    return [
        tag("line", x1=x, y1=TOP, x2=x, y2=HEIGHT - BOTTOM, stroke=THRESHOLD_COLOUR,
            stroke_width=1.5, stroke_dasharray="4 3"),
        tag("text", f"threshold {threshold:g}", x=x + 3, y=TOP + 10, font_size=10,
            fill=THRESHOLD_COLOUR),
    ]  # fmt: skip


def _svg(title: str, parts: list[Markup], kind: str) -> Markup:
    """A plot: an SVG element of the plots' size with its title."""
    return tag(
        "svg",
        tag("title", title),
        parts,
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {WIDTH} {HEIGHT}",
        width=WIDTH,
        height=HEIGHT,
        role="img",
        class_=f"plot {kind}",
    )


def histogram(kept: np.ndarray, dropped: np.ndarray, threshold: float | None, label: str) -> Markup:
    """Stacked bars of kept and dropped texts per ITM bin on [0, 1], the threshold marked."""
    bars = len(kept)
    total = kept + dropped
    peak = int(total.max()) if len(total) else 0
    width = (WIDTH - LEFT - RIGHT) / max(bars, 1)
    parts = _axes(str(peak), "ITM match probability")
    for i in range(bars):
        if not total[i]:
            continue
        low, high = i / bars, (i + 1) / bars
        tip = tag("title", f"ITM {low:.3f}–{high:.3f}: {kept[i]} kept, {dropped[i]} dropped")
        y_kept = _y(kept[i] / peak)
        y_all = _y(total[i] / peak)
        x = _x(low) + 0.5
        parts.append(
            tag(
                "g",
                tip,
                tag("rect", x=x, y=y_kept, width=width - 1, height=HEIGHT - BOTTOM - y_kept,
                    fill=KEPT_COLOUR),
                tag("rect", x=x, y=y_all, width=width - 1, height=y_kept - y_all,
                    fill=DROPPED_COLOUR),
            )
        )  # fmt: skip
    parts += _threshold_line(threshold)
    return _svg(f"ITM histogram of {label}", parts, "histogram")


def sweep(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    markers: Mapping[str, tuple[float, float]],
) -> Markup:
    """Share of scored texts kept against the threshold, one line per origin.

    ``markers`` holds each origin's current (threshold, share kept), drawn as a dot.
    """
    parts = _axes("100%", "ITM threshold")
    for share in (0.25, 0.5, 0.75):
        parts.append(
            tag("line", x1=LEFT, y1=_y(share), x2=WIDTH - RIGHT, y2=_y(share), stroke="#ddd")
        )
    legend_y = TOP + 10
    for origin, points in curves.items():
        if not points:
            continue
        colour = LINE_COLOURS.get(origin, "#444")
        path = " ".join(f"{_x(t):.1f},{_y(share):.1f}" for t, share in points)
        parts.append(tag("polyline", points=path, fill="none", stroke=colour, stroke_width=2))
        if origin in markers:
            current, kept = markers[origin]
            parts.append(
                tag(
                    "circle",
                    tag("title", f"{origin}: {100 * kept:.1f}% kept at threshold {current:g}"),
                    cx=_x(current),
                    cy=_y(kept),
                    r=4,
                    fill=colour,
                )
            )
        parts.append(
            tag("text", f"{origin}", x=WIDTH - RIGHT - 4, y=legend_y, font_size=11, fill=colour,
                text_anchor="end")
        )  # fmt: skip
        legend_y += 14
    return _svg("Share of scored texts kept against the ITM threshold", parts, "sweep")
