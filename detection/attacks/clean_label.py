"""Label-consistent (clean-label) backdoor (Turner, Tsipras, Madry 2019,
"Label-Consistent Backdoor Attacks").

Target-class images are first made hard to classify with an untargeted PGD
attack (l_inf, eps 8/255) against a surrogate model trained on the clean data,
then stamped with 3x3 checker triggers in the four corners. Labels stay
correct, so the model must lean on the trigger to fit these hard images.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from detection.attacks.base import (
    AttackParams,
    Int64Array,
    PoisonedSet,
    UInt8Array,
    assemble,
    choose,
    count_for,
    register_attack,
)
from detection.attacks.learned import TrainedAttackParams, map_images, normalised, setup
from detection.attacks.triggers import Box, Corner, checker, corner_box, paste
from detection.models import Classifier, build_model
from detection.training import OptimConfig, TensorData, TrainConfig, train_classifier
from detection.types import RunContext

CORNERS: tuple[Corner, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")


class CleanLabelParams(TrainedAttackParams, AttackParams):
    rate: float = Field(0.003, gt=0.0, le=0.5)
    epochs: float = Field(3.0, gt=0.0, description="Surrogate training epochs.")
    eps: float = Field(8.0, ge=0.0, le=255.0, description="PGD l_inf radius (0..255 scale).")
    pgd_steps: int = Field(10, ge=0)
    step_size: float = Field(2.0, gt=0.0, description="PGD step (0..255 scale).")
    trigger_size: int | None = Field(None, ge=1, description="None: 3 (2 below 16 pixels).")
    corners: Literal["four", "one"] = "four"


def corner_boxes(shape: tuple[int, ...], params: CleanLabelParams) -> list[Box]:
    h, w = shape[:2]
    size = params.trigger_size or (3 if min(h, w) >= 16 else 2)
    names = CORNERS if params.corners == "four" else CORNERS[-1:]
    return [corner_box(h, w, size, name) for name in names]


def stamp_corners(x: UInt8Array, boxes: list[Box]) -> UInt8Array:
    pattern = checker(boxes[0][2], x.shape[-1])
    for top, left, _, _ in boxes:
        x = paste(x, pattern, top, left)
    return x


def train_surrogate(
    data: TensorData, n_classes: int, params: CleanLabelParams, ctx: RunContext
) -> Classifier:
    """A small CNN trained on the clean data, the model PGD attacks."""
    model = build_model("small_cnn", data.input_shape, n_classes, params.width).to(data.device)
    cfg = TrainConfig(params.epochs, params.batch_size, OptimConfig(lr=0.05), augment=False)
    train_classifier(model, data, cfg, ctx, stage="surrogate")
    return model


def pgd_away(
    model: Classifier, data: TensorData, x: UInt8Array, y: Int64Array, params: CleanLabelParams
) -> UInt8Array:
    """Untargeted l_inf PGD: push each image away from its true class."""
    norm = normalised(data)
    eps, step = params.eps / 255.0, params.step_size / 255.0
    yb = torch.from_numpy(y).to(data.device)
    model.eval()

    def attack(batch: Tensor) -> Tensor:
        delta = torch.zeros_like(batch)
        for _ in range(params.pgd_steps):
            with torch.enable_grad():
                delta.requires_grad_(True)
                loss = nn.functional.cross_entropy(model(norm(batch + delta)), yb)
                (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
            delta = (batch + delta).clamp(0, 1) - batch
        return batch + delta

    # one batch, so the labels line up with the images
    return map_images(attack, x, data.device, batch=max(1, x.shape[0]))


@register_attack(
    "clean_label", CleanLabelParams, "Label-consistent PGD + corner triggers (Turner et al. 2019)"
)
def clean_label(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: CleanLabelParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """Adversarially perturb target-class images, then stamp corner triggers; labels kept."""
    poison = choose(rng, labels == params.target_class, count_for(params.rate, labels.size))
    data, ctx = setup(x, labels, params.device, rng)
    model = train_surrogate(data, n_classes, params, ctx)
    adversarial = pgd_away(model, data, x[poison], labels[poison], params)
    boxes = corner_boxes(x.shape[1:], params)

    def trigger(batch: UInt8Array) -> UInt8Array:
        return stamp_corners(batch, boxes)

    return assemble(
        "clean_label",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=trigger(adversarial),
        trigger=trigger,
        extra={"clean_label": True, "regions": [list(b) for b in boxes]},
    )
