"""How long each Confusion Training stage runs: sizes and stopping rules.

The paper (Qi et al., USENIX Security 2023) runs fixed counts: 100 pretraining
epochs fit the backdoor for sure, 6,000 confusion iterations over a
2,000-sample reserve scramble the benign features for sure. A short schedule
cannot count on length, so it measures instead:

- :class:`FitMonitor` ends pretraining once an epoch's running accuracy on the
  given labels reaches a target, or stops improving (a plateau);
- :class:`ScrambleMonitor` lets confusion run its sized count and then on
  until the reserve's running accuracy under its *true* labels is at chance,
  i.e. the benign features no longer tell the classes apart;
- :func:`reserve_size` and :func:`confusion_steps` size the reserve and the
  confusion caps to the data (the paper's 2,000 samples and 96 reserve passes
  per round for CIFAR-10 are the reference points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

PLATEAU_GAIN = 1e-3  # an epoch must add 0.1% accuracy to count as progress
EMA_WINDOW = 50  # confusion steps the scramble monitor averages over


def reserve_size(n_samples: int, n_classes: int, max_fraction: float) -> int:
    """A drawn reserve's size: 100 per class or 4% of the data, whichever is larger,
    at most ``max_fraction`` of the data.

    CIFAR-10 (50,000 samples, 10 classes) gives the paper's 2,000; 12,000
    Fashion-MNIST images give 1,000 (the paper saw CT fail with 250).
    """
    want = max(100 * n_classes, math.ceil(0.04 * n_samples))
    return max(2 * n_classes, min(want, int(max_fraction * n_samples)))


def calibration_size(reserve: int, requested: int | None) -> int:
    """Canaries taken out of a reserve of ``reserve`` samples (30%, 20..300)."""
    if requested is not None:
        return min(requested, reserve // 2)
    return max(min(20, reserve // 2), min(300, int(0.3 * reserve)))


def confusion_steps(passes: float | None, iters: int, n_reserve: int, batch_size: int) -> int:
    """Confusion iterations of a round: ``passes`` over the reserve, else ``iters``."""
    if passes is None:
        return iters
    return max(1, math.ceil(passes * n_reserve / min(batch_size, n_reserve)))


@dataclass
class FitMonitor:
    """Stop pretraining once the training set is fitted (or fitting stalls).

    Feed it every batch's logits and labels; :meth:`step` returns True when
    training should stop: after ``min_epochs``, once an epoch's running
    accuracy reaches ``target`` or ``patience`` epochs passed without a
    :data:`PLATEAU_GAIN` improvement on the best epoch so far.
    """

    steps_per_epoch: int
    target: float
    min_epochs: float = 1.0
    patience: int = 0
    history: list[float] = field(default_factory=list)
    _correct: int = 0
    _seen: int = 0

    def observe(self, logits: Tensor, labels: Tensor) -> None:
        with torch.no_grad():
            self._correct += int((logits.argmax(1) == labels).sum())
        self._seen += int(labels.numel())

    def step(self, step: int) -> bool:
        if (step + 1) % self.steps_per_epoch != 0:
            return False
        self.history.append(self._correct / max(1, self._seen))
        self._correct = self._seen = 0
        if len(self.history) < self.min_epochs:
            return False
        return self.history[-1] >= self.target or self._stalled()

    def _stalled(self) -> bool:
        if self.patience <= 0 or len(self.history) <= self.patience:
            return False
        before = max(self.history[: -self.patience])
        return max(self.history[-self.patience :]) < before + PLATEAU_GAIN

    @property
    def epochs(self) -> int:
        return len(self.history)


@dataclass
class ScrambleMonitor:
    """Decide when a round's confusion has done its work.

    Confusion first scrambles everything the pretrained model knew (the
    reserve's accuracy under its true labels drops to chance), then, through
    the inspected batches, re-fits what confusion cannot scramble: the
    backdoor. So the sized count ``min_steps`` always runs; past it, training
    goes on (up to the caller's cap) until an exponential moving average of
    the reserve batches' true-label accuracy is at most
    ``(1 + margin) / n_classes``. With ``enabled`` False it stops at
    ``min_steps``.
    """

    n_classes: int
    min_steps: int
    margin: float
    enabled: bool = True
    accuracy: float = 1.0
    steps: int = 0

    def observe(self, logits: Tensor, true_labels: Tensor) -> None:
        with torch.no_grad():
            acc = float((logits.argmax(1) == true_labels).float().mean())
        alpha = 1.0 / min(EMA_WINDOW, self.steps + 1)
        self.accuracy += alpha * (acc - self.accuracy)

    def step(self, step: int) -> bool:
        self.steps = step + 1
        if self.steps < self.min_steps:
            return False
        return not self.enabled or self.scrambled

    @property
    def scrambled(self) -> bool:
        return self.accuracy <= (1.0 + self.margin) / self.n_classes
