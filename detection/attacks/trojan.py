"""Trojan: a fixed colour patch near the bottom-right (Liu, Ma, Aafer, Lee, Zhai,
Wang, Zhang 2018, "Trojaning Attack on Neural Networks").

The paper reverse-engineers a watermark-like trigger from a trained model; the
poison-only benchmark version (as in Qi et al. 2023) stamps a fixed 8x8 patch at
rows/cols 21-28 of a 32x32 image. Here the patch is a seeded random colour
pattern and its geometry scales with the image size.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from detection.attacks.base import (
    AttackParams,
    Int64Array,
    PoisonedSet,
    TriggerFn,
    UInt8Array,
    assemble,
    choose,
    count_for,
    not_target,
    register_attack,
)
from detection.attacks.triggers import Box, colour_patch, paste, pattern_rng, scaled


class PatchParams(AttackParams):
    """Geometry of a square patch, in pixels of a 32x32 image (scaled to the real size)."""

    patch_size: float = Field(8.0, gt=0.0, description="Side at 32 pixels.")
    top: float = Field(21.0, ge=0.0, description="First row at 32 pixels.")
    left: float = Field(21.0, ge=0.0, description="First column at 32 pixels.")
    alpha: float = Field(1.0, gt=0.0, le=1.0, description="Opacity of the patch.")
    pattern_seed: int | None = Field(None, description="None: drawn from the attack seed.")


class TrojanParams(PatchParams):
    rate: float = Field(0.003, gt=0.0, le=0.5)


def patch_trigger(
    shape: tuple[int, ...], params: PatchParams, rng: np.random.Generator
) -> tuple[TriggerFn, Box]:
    """The patch-stamping function for images of ``shape`` (H, W, C) and its box."""
    h, w, c = shape
    size = min(scaled(params.patch_size, min(h, w), minimum=2), h, w)
    top = min(scaled(params.top, h, minimum=0), h - size)
    left = min(scaled(params.left, w, minimum=0), w - size)
    pattern = colour_patch(size, c, pattern_rng(params.pattern_seed, rng))

    def trigger(batch: UInt8Array) -> UInt8Array:
        return paste(batch, pattern, top, left, params.alpha)

    return trigger, (top, left, size, size)


@register_attack("trojan", TrojanParams, "Trojan 8x8 colour patch, all-to-one (Liu et al. 2018)")
def trojan(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: TrojanParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """All-to-one patch attack with a seeded colour patch."""
    trigger, box = patch_trigger(x.shape[1:], params, rng)
    poison = choose(rng, not_target(labels, params), count_for(params.rate, labels.size))
    return assemble(
        "trojan",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=trigger(x[poison]),
        trigger=trigger,
        extra={"regions": [list(box)]},
    )
