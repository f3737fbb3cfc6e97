"""Adaptive-Blend (Qi, Xie, Li, Wang, Mittal 2023, "Revisiting the Assumption of
Latent Separability for Backdoor Defenses", ICLR).

The blend key is cut into a grid of pieces (4x4 = 16); each poison and each
cover gets a random half of the pieces at a low opacity (0.15). Covers keep
their labels, which weakens the latent separation between poison and clean
samples that many detectors rely on. At test time the full key is blended at
0.2. The key is a seeded procedural texture (the paper uses a photo).
"""

from __future__ import annotations

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
from detection.attacks.triggers import FloatArray, blend, pattern_rng, piece_masks, texture


class AdaptiveBlendParams(AttackParams):
    rate: float = Field(0.003, gt=0.0, le=0.5)
    cover_rate: float = Field(0.003, ge=0.0, le=0.5)
    alpha: float = Field(0.15, gt=0.0, le=1.0, description="Train-time opacity of pieces.")
    test_alpha: float = Field(0.2, gt=0.0, le=1.0, description="Opacity of the full test key.")
    grid: int = Field(4, ge=1, description="The key is cut into grid x grid pieces.")
    pieces_per_sample: int = Field(8, ge=1, description="Pieces each poison/cover receives.")
    n_shapes: int = Field(4, ge=0)
    pattern_seed: int | None = Field(None, description="None: drawn from the attack seed.")

    @model_validator(mode="after")
    def _pieces_fit(self) -> AdaptiveBlendParams:
        if self.pieces_per_sample > self.grid**2:
            raise ValueError("pieces_per_sample exceeds grid**2")
        return self


def random_piece_masks(
    n: int, h: int, w: int, params: AdaptiveBlendParams, rng: np.random.Generator
) -> FloatArray:
    """``(n, h, w)`` masks, each covering ``pieces_per_sample`` random grid pieces."""
    ranks = rng.random((n, params.grid**2)).argsort(axis=1).argsort(axis=1)
    chosen = (ranks < params.pieces_per_sample).reshape(n, params.grid, params.grid)
    return piece_masks(h, w, params.grid, chosen)


@register_attack(
    "adaptive_blend", AdaptiveBlendParams, "Adaptive-Blend partial keys + covers (Qi et al. 2023)"
)
def adaptive_blend(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: AdaptiveBlendParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """Half-key blends: poisons -> target, covers keep labels; full key at test."""
    _, h, w, c = x.shape
    key = texture(h, w, c, pattern_rng(params.pattern_seed, rng), params.n_shapes)
    poison, covers = choose_with_covers(rng, not_target(labels, params), None, params)
    masks = random_piece_masks(poison.size + covers.size, h, w, params, rng) * params.alpha
    both = np.concatenate([poison, covers])
    blended = blend(x[both], key, masks)

    def trigger(batch: UInt8Array) -> UInt8Array:
        return blend(batch, key, params.test_alpha)

    return assemble(
        "adaptive_blend",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=blended[: poison.size],
        cover_indices=covers,
        cover_x=blended[poison.size :],
        trigger=trigger,
    )
