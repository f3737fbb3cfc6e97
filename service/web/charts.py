"""Inline SVG figures for the pages and the report: per-class score histograms and ROC curves.

Plain SVG keeps the job page light (a fixed number of bars whatever N is) and
the report self-contained; the numbers come from numpy, the markup from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from markupsafe import Markup, escape
from numpy.typing import NDArray

N_BINS = 40
ROC_POINTS = 201
W, H, PAD = 240, 96, 4


@dataclass(frozen=True)
class Panel:
    """One class's histogram: counts of the main and the highlighted series per bin."""

    title: str
    main: NDArray[np.int64]
    marked: NDArray[np.int64]


def class_histograms(
    scores: NDArray[np.float64],
    labels: NDArray[np.int64],
    marked: NDArray[np.bool_],
    titles: list[str],
) -> tuple[list[Panel], tuple[float, float]]:
    """Per class, counts of unmarked and marked samples in bins shared by every class."""
    lo, hi = float(scores.min()), float(scores.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, N_BINS + 1)
    bins = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, N_BINS - 1)
    panels = []
    for c, title in enumerate(titles):
        in_class = labels == c
        main = np.bincount(bins[in_class & ~marked], minlength=N_BINS)
        mark = np.bincount(bins[in_class & marked], minlength=N_BINS)
        panels.append(Panel(title, main.astype(np.int64), mark.astype(np.int64)))
    return panels, (lo, hi)


def histogram_svg(panel: Panel, score_range: tuple[float, float], marked_name: str) -> Markup:
    """Stacked bars (marked samples on top, in the accent colour); y scaled per panel."""
    total = panel.main + panel.marked
    top = max(int(total.max()), 1)
    bar_w = (W - 2 * PAD) / N_BINS
    plot_h = H - 2 * PAD - 12
    rects = []
    for i, (m, k) in enumerate(zip(panel.main.tolist(), panel.marked.tolist(), strict=True)):
        x = PAD + i * bar_w
        h_main, h_mark = plot_h * m / top, plot_h * k / top
        base = PAD + plot_h
        if m:
            rects.append(_rect("bar", x, base - h_main, bar_w, h_main))
        if k:
            rects.append(_rect("bar marked", x, base - h_main - h_mark, bar_w, h_mark))
    lo, hi = score_range
    label = f"{lo:.3g} … {hi:.3g} · max {top}/bin · {int(panel.marked.sum())} {marked_name}"
    return Markup(
        f'<svg class="hist" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">'
        f"<title>{escape(panel.title)}</title>{''.join(rects)}"
        f'<text x="{PAD}" y="{H - 2}" class="axis">{escape(label)}</text></svg>'
    )


def _rect(cls: str, x: float, y: float, w: float, h: float) -> str:
    return f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{w:.2f}" height="{h:.1f}"/>'


def roc_svg(fpr: NDArray[np.float64], tpr: NDArray[np.float64], auroc: float | None) -> Markup:
    """The ROC step curve, resampled at a fixed FPR grid, with the chance diagonal."""
    grid = np.linspace(0.0, 1.0, ROC_POINTS)
    at = tpr[np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, tpr.size - 1)]
    size, pad = 220, 24
    span = size - 2 * pad
    points = " ".join(
        f"{pad + span * f:.1f},{pad + span * (1 - t):.1f}"
        for f, t in zip(grid.tolist(), at.tolist(), strict=True)
    )
    title = "ROC" if auroc is None else f"ROC · AUROC {auroc:.3f}"
    return Markup(
        f'<svg class="roc" viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img">'
        f"<title>{escape(title)}</title>"
        f'<rect class="frame" x="{pad}" y="{pad}" width="{span}" height="{span}"/>'
        f'<line class="chance" x1="{pad}" y1="{pad + span}" x2="{pad + span}" y2="{pad}"/>'
        f'<polyline class="curve" points="{points}"/>'
        f'<text x="{pad}" y="{pad - 8}" class="axis">{escape(title)}</text>'
        f'<text x="{pad}" y="{size - 6}" class="axis">FPR →</text>'
        f'<text x="2" y="{pad + 10}" class="axis">TPR</text></svg>'
    )
