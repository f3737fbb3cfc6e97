"""Adaptive-Patch (Qi, Xie, Li, Wang, Mittal 2023, "Revisiting the Assumption of
Latent Separability for Backdoor Defenses", ICLR).

Several weak patch triggers (four, at opacities 0.5/0.2/0.5/0.3); each poison
and each cover carries exactly one of them. Covers keep their labels. At test
time two patches are stamped together at full opacity. The paper's sticker
images are replaced by seeded bright blobs of 5x5 and 13x13 pixels (at 32
pixels; scaled with the image), one per image corner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from detection.attacks.base import (
    AttackParams,
    Int64Array,
    PoisonedSet,
    UInt8Array,
    assemble,
    choose_with_covers,
    not_target,
    register_attack,
)
from detection.attacks.triggers import (
    Box,
    Corner,
    bright_blob,
    corner_box,
    paste,
    pattern_rng,
    scaled,
)

CORNERS: tuple[Corner, ...] = ("top_left", "bottom_right", "top_right", "bottom_left")


class AdaptivePatchParams(AttackParams):
    rate: float = Field(0.003, gt=0.0, le=0.5)
    cover_rate: float = Field(0.006, ge=0.0, le=0.5)
    patch_sizes: tuple[float, ...] = Field(
        (5.0, 13.0, 5.0, 13.0), min_length=1, max_length=4, description="Sides at 32 pixels."
    )
    alphas: tuple[float, ...] = Field((0.5, 0.2, 0.5, 0.3), min_length=1, max_length=4)
    test_patches: tuple[int, ...] = Field((0, 2), min_length=1, description="Patches at test.")
    test_alpha: float = Field(1.0, gt=0.0, le=1.0)
    margin: float = Field(1.0, ge=0.0, description="Distance from the corner at 32 pixels.")
    pattern_seed: int | None = Field(None, description="None: drawn from the attack seed.")

    @model_validator(mode="after")
    def _consistent(self) -> AdaptivePatchParams:
        if len(self.alphas) != len(self.patch_sizes):
            raise ValueError("alphas and patch_sizes must have the same length")
        if max(self.test_patches) >= len(self.patch_sizes):
            raise ValueError("test_patches index a patch that does not exist")
        return self


@dataclass(frozen=True)
class Patch:
    pattern: UInt8Array
    box: Box

    def stamp(self, batch: UInt8Array, alpha: float) -> UInt8Array:
        return paste(batch, self.pattern, self.box[0], self.box[1], alpha)


def make_patches(
    shape: tuple[int, ...], params: AdaptivePatchParams, rng: np.random.Generator
) -> list[Patch]:
    """One blob per configured size, each in its own corner."""
    h, w, c = shape
    margin = scaled(params.margin, min(h, w), minimum=0)
    patches = []
    for size32, corner in zip(params.patch_sizes, CORNERS, strict=False):
        size = min(scaled(size32, min(h, w), minimum=2), min(h, w) // 2)
        box = corner_box(h, w, size, corner, min(margin, min(h, w) // 2 - size))
        patches.append(Patch(bright_blob(size, c, rng), box))
    return patches


def stamp_one_each(
    x: UInt8Array, patches: list[Patch], alphas: tuple[float, ...], choice: Int64Array
) -> UInt8Array:
    """Stamp patch ``choice[i]`` on image ``i`` at its alpha."""
    out = x.copy()
    for k, patch in enumerate(patches):
        rows = choice == k
        out[rows] = patch.stamp(x[rows], alphas[k])
    return out


@register_attack(
    "adaptive_patch", AdaptivePatchParams, "Adaptive-Patch weak patches + covers (Qi et al. 2023)"
)
def adaptive_patch(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: AdaptivePatchParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """One weak patch per poison/cover; covers keep labels; two full patches at test."""
    patches = make_patches(x.shape[1:], params, pattern_rng(params.pattern_seed, rng))
    poison, covers = choose_with_covers(rng, not_target(labels, params), None, params)
    both = np.concatenate([poison, covers])
    choice = rng.integers(0, len(patches), both.size)
    stamped = stamp_one_each(x[both], patches, params.alphas, choice)
    test = [patches[k] for k in params.test_patches]

    def trigger(batch: UInt8Array) -> UInt8Array:
        for patch in test:
            batch = patch.stamp(batch, params.test_alpha)
        return batch

    return assemble(
        "adaptive_patch",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=stamped[: poison.size],
        cover_indices=covers,
        cover_x=stamped[poison.size :],
        trigger=trigger,
        extra={"regions": [list(p.box) for p in patches]},
    )
