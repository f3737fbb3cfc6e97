"""PNG plots of a bench run: score histograms, ROC curves, an attack × detector heat map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detection.metrics import roc_curve
from poisonscan.bench.grid import BenchRecord, Scored
from poisonscan.bench.retrain import NO_DEFENSE


def plot_results(results: Sequence[Scored], out_dir: Path) -> list[Path]:
    """Per attack: score histograms (clean vs poison) per detector, and ROC curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_attack: dict[str, list[Scored]] = {}
    for s in results:
        if s.record.seed == results[0].record.seed:
            by_attack.setdefault(s.record.attack, []).append(s)
    paths = []
    for attack, items in by_attack.items():
        fig, axes = plt.subplots(1, len(items) + 1, figsize=(4 * (len(items) + 1), 3.2))
        for ax, s in zip(axes[:-1], items, strict=True):
            ax.hist(s.scores[~s.poison_mask], bins=40, alpha=0.6, label="clean", density=True)
            ax.hist(s.scores[s.poison_mask], bins=40, alpha=0.6, label="poison", density=True)
            ax.set_title(f"{s.record.detector}: scores")
            ax.legend()
        for s in items:
            fpr, tpr = roc_curve(s.scores, s.poison_mask)
            axes[-1].plot(fpr, tpr, label=f"{s.record.detector} ({s.record.metrics['auroc']:.3f})")
        axes[-1].plot([0, 1], [0, 1], "k:", lw=0.8)
        axes[-1].set(title=f"ROC: {attack}", xlabel="FPR", ylabel="TPR")
        axes[-1].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{attack}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def metric_matrix(
    records: Sequence[BenchRecord], metric: str = "auroc"
) -> tuple[list[str], list[str], np.ndarray]:
    """``(attacks, detectors, values)``: the median of ``metric`` over seeds, NaN where unrun.

    Rows and columns keep the order of first appearance; ``none`` is left out.
    """
    attacks: list[str] = []
    detectors: list[str] = []
    cells: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r.detector == NO_DEFENSE or metric not in r.metrics:
            continue
        attacks += [] if r.attack in attacks else [r.attack]
        detectors += [] if r.detector in detectors else [r.detector]
        cells.setdefault((r.attack, r.detector), []).append(float(r.metrics[metric]))
    values = np.full((len(attacks), len(detectors)), np.nan)
    for (attack, detector), vs in cells.items():
        values[attacks.index(attack), detectors.index(detector)] = np.median(vs)
    return attacks, detectors, values


def plot_heatmap(records: Sequence[BenchRecord], path: Path, metric: str = "auroc") -> Path:
    """An attack × detector heat map of ``metric`` (median over seeds), values written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks, detectors, values = metric_matrix(records, metric)
    if not attacks:
        raise ValueError(f"no records with {metric!r} to plot")
    fig, ax = plt.subplots(figsize=(1.0 * len(detectors) + 2.5, 0.45 * len(attacks) + 1.6))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(detectors)), detectors, rotation=45, ha="right")
    ax.set_yticks(range(len(attacks)), attacks)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"{metric.upper()} (attack × detector)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
