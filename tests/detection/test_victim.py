"""The victim model: attack success before and after cleansing (the paper's second table)."""

from __future__ import annotations

import numpy as np
import torch

from detection.attacks import plant
from detection.base_model import BaseModelParams
from detection.readers import LoadedDataset
from detection.types import RunContext
from detection.victim import train_and_attack


def test_victim_learns_the_backdoor_and_cleansing_removes_it(digits: LoadedDataset) -> None:
    torch.set_num_threads(1)
    order = np.random.default_rng(0).permutation(digits.n_samples)
    first = int(np.flatnonzero(digits.labels[order] >= 2)[0])
    order[[0, first]] = order[[first, 0]]  # the first training label is >= 2
    train, test = order[:1400], order[1400:]
    ps = plant("badnet", digits.x[train], digits.labels[train], 10, {"rate": 0.05}, seed=0)
    assert ps.labels[0] >= 2
    params = BaseModelParams(arch="convnet", epochs=15, batch_size=64, lr=0.05, augment=False)
    ctx = RunContext(device="cpu", seed=0)
    tx, ty = digits.x[test], digits.labels[test]
    poisoned = train_and_attack(ps, tx, ty, None, params, ctx)
    cleansed = train_and_attack(ps, tx, ty, ~ps.is_poison, params, ctx)
    assert poisoned.accuracy > 0.85 and poisoned.asr > 0.8, poisoned
    assert cleansed.accuracy > 0.85 and cleansed.asr < 0.2, cleansed
    assert cleansed.n_train == 1400 - int(ps.is_poison.sum())
