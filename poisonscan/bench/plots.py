"""PNG plots of a bench run: score histograms (clean vs poison) and ROC curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detection.metrics import roc_curve
from poisonscan.bench.grid import Scored


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
