"""Batched inference: logits, penultimate features and per-sample losses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from detection.models import Classifier
from detection.training import TensorData, autocast_for


@dataclass(frozen=True)
class Outputs:
    """Model outputs for every sample of a dataset, as float32 NumPy arrays."""

    logits: NDArray[np.float32]
    features: NDArray[np.float32] | None = None

    @property
    def predictions(self) -> NDArray[np.int64]:
        preds: NDArray[np.int64] = self.logits.argmax(axis=1).astype(np.int64)
        return preds

    def probabilities(self) -> NDArray[np.float32]:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        out: NDArray[np.float32] = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
        return out


@torch.no_grad()
def predict(
    model: Classifier, data: TensorData, batch_size: int = 1024, with_features: bool = False
) -> Outputs:
    """Run ``model`` over ``data`` in eval mode (no augmentation)."""
    model.eval()
    logits, feats = [], []
    for start in range(0, data.n, batch_size):
        idx = torch.arange(start, min(start + batch_size, data.n), device=data.device)
        with autocast_for(data.device):
            f = model.features(data.batch(idx))
            z = model.head(f)
        logits.append(z.float().cpu())
        if with_features:
            feats.append(f.float().cpu())
    return Outputs(
        logits=torch.cat(logits).numpy(),
        features=torch.cat(feats).numpy() if with_features else None,
    )


def per_sample_loss(
    logits: NDArray[np.float32], labels: NDArray[np.integer]
) -> NDArray[np.float64]:
    """Cross-entropy of each sample's given label, shape (N,)."""
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    out: NDArray[np.float64] = nn.functional.cross_entropy(z, y, reduction="none").double().numpy()
    return out
