"""The paper's second table: retrain a victim on what a detector kept.

For each poisoned set the grid trains a victim (:func:`detection.victim.train_and_attack`)
on the samples a detector did *not* flag and reports clean test accuracy (ACC)
and attack success rate (ASR); the ``none`` row is the victim on the whole
poisoned set (no defense). Victims are cached by a hash of the kept index, so
two detectors that keep the same samples (or a detector that flags nothing and
``none``) share one training run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from detection.attacks import PoisonedSet
from detection.base_model import BaseModelParams
from detection.cache import array_digest
from detection.datasets import load_source, split_reserve, stratified_subset
from detection.readers import LoadedDataset
from detection.types import RunContext
from detection.victim import VictimReport, train_and_attack, victim_params

NO_DEFENSE = "none"


def keep_digest(keep: NDArray[np.bool_]) -> str:
    """SHA-256 of the kept row indices (the cache key of one victim)."""
    idx = np.flatnonzero(keep).astype(np.int64)
    return hashlib.sha256(f"{keep.size};".encode() + idx.tobytes()).hexdigest()


@dataclass
class Retrainer:
    """Trains victims on kept subsets of poisoned sets and caches their reports.

    ``test_x`` / ``test_labels`` are a clean held-out test split; ``params``
    the victim's training recipe; ``device`` where it trains. When the victim
    on the whole poisoned set (no defense) has an ASR below ``min_asr`` the
    attack did not implant, there is nothing for a defense to remove, and
    :meth:`report` trains no further victims on that set (returns None).
    """

    test_x: NDArray[np.uint8]
    test_labels: NDArray[np.int64]
    params: BaseModelParams = field(default_factory=victim_params)
    device: str = "auto"
    min_asr: float = 0.0
    trained: int = 0
    no_defense_asr: dict[str, float] = field(default_factory=dict)
    _cache: dict[tuple[str, str], VictimReport] = field(default_factory=dict, repr=False)

    def report(
        self, poisoned: PoisonedSet, keep: NDArray[np.bool_], seed: int
    ) -> VictimReport | None:
        """ACC/ASR of a victim trained on ``poisoned`` rows ``keep`` (cached)."""
        digest = poisoned_digest(poisoned)
        key = (digest, keep_digest(keep))
        if not keep.all() and self.no_defense_asr.get(digest, 1.0) < self.min_asr:
            return None
        if key not in self._cache:
            ctx = RunContext(device=self.device, seed=seed)
            self._cache[key] = train_and_attack(
                poisoned, self.test_x, self.test_labels, keep, self.params, ctx
            )
            self.trained += 1
        if keep.all():
            self.no_defense_asr[digest] = self._cache[key].asr
        return self._cache[key]


def poisoned_digest(poisoned: PoisonedSet) -> str:
    """Identity of a poisoned set: a hash of its images, labels and poison indices."""
    return array_digest(poisoned.x, poisoned.labels, poisoned.poison_indices)


def held_out_test(
    dataset: str, data: LoadedDataset, n_test: int, seed: int = 0
) -> tuple[LoadedDataset, NDArray[np.uint8], NDArray[np.int64]]:
    """``(training pool, test_x, test_labels)``: a stratified ``n_test`` of the test split.

    A source with only a train split (``digits``) gives up ``n_test`` of its
    own samples (at most a fifth), class-stratified, which leave the training pool.
    """
    try:
        test = load_source(dataset, split="test")
    except ValueError:
        pool_idx, test_idx = split_reserve(data.labels, min(n_test, data.n_samples // 5), seed)
        return data.take(pool_idx), data.x[test_idx], data.labels[test_idx]
    if n_test < test.n_samples:
        test = test.take(stratified_subset(test.labels, n_test, seed))
    return data, test.x, test.labels


def victim_dict(report: VictimReport) -> dict[str, float | int]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in report.to_dict().items()}
