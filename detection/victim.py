"""A victim model: what an attack does to a model trained on (part of) a poisoned set.

Benchmarks use it twice: before detection, to tell an attack that did not
implant (attack success near chance) from a detector's miss; and after
detection, to retrain on the samples a detector did not flag and report clean
accuracy (ACC) and attack success rate (ASR), the paper's second table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from detection.attacks.base import PoisonedSet
from detection.base_model import BaseModelParams, pick_arch
from detection.features import predict
from detection.models import build_model, prepare_model
from detection.training import (
    TensorData,
    resolve_device,
    seed_everything,
    to_tensor_data,
    train_classifier,
)
from detection.types import DetectionInput, RunContext


@dataclass(frozen=True)
class VictimReport:
    """Clean test accuracy and attack success of one victim.

    ``asr`` is the fraction of triggered test samples (of the attack's victim
    classes) predicted as the attack's target label.
    """

    accuracy: float
    asr: float
    n_train: int

    def to_dict(self) -> dict[str, float | int]:
        return {"accuracy": self.accuracy, "asr": self.asr, "n_train": self.n_train}


def victim_params(epochs: float = 10.0) -> BaseModelParams:
    """A standard victim: the grid CNN, SGD with cosine decay, crop + flip."""
    return BaseModelParams(arch="convnet", epochs=epochs, batch_size=128, lr=0.05)


def train_and_attack(
    poisoned: PoisonedSet,
    test_x: NDArray[np.uint8],
    test_labels: NDArray[np.int64],
    keep: NDArray[np.bool_] | None = None,
    params: BaseModelParams | None = None,
    ctx: RunContext | None = None,
) -> VictimReport:
    """Train a victim on ``poisoned`` (rows ``keep`` only) and measure ACC and ASR.

    Parameters
    ----------
    poisoned : PoisonedSet
        The poisoned training set and its test-time trigger.
    test_x, test_labels : ndarray
        A clean held-out test set (uint8 NHWC, int labels).
    keep : ndarray of bool, shape (N,), optional
        Train on these rows only (e.g. the samples a detector did not flag).
    """
    ctx = ctx or RunContext()
    params = params or victim_params()
    mask = np.ones(poisoned.n_samples, dtype=bool) if keep is None else keep
    device = resolve_device(ctx.device)
    seed_everything(ctx.seed)
    train = to_tensor_data(poisoned.x[mask], poisoned.labels[mask], device)
    probe = DetectionInput(poisoned.x[:1], poisoned.labels[:1], poisoned.n_classes)
    arch = pick_arch(params.arch, probe)
    model = build_model(arch, train.input_shape, poisoned.n_classes, params.width)
    model = prepare_model(model, device, image=True)
    train_classifier(model, train, params.train_config(), ctx, stage="victim")
    accuracy = _accuracy(model, train, test_x, test_labels)
    victims = poisoned.victim_mask(test_labels)
    triggered = poisoned.trigger(test_x[victims])
    asr = _accuracy(model, train, triggered, poisoned.target_labels(test_labels[victims]))
    return VictimReport(accuracy, asr, int(mask.sum()))


def _accuracy(
    model: torch.nn.Module, ref: TensorData, x: NDArray[np.uint8], labels: NDArray[np.int64]
) -> float:
    if labels.size == 0:
        return 0.0
    data = to_tensor_data(x, labels, ref.device)
    data = TensorData(data.x, data.y, ref.mean, ref.std)
    preds = predict(model, data).predictions  # type: ignore[arg-type]
    return float((preds == labels).mean())
