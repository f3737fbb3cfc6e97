"""Blend: alpha-blend a full-image key pattern (Chen, Liu, Li, Lu, Song 2017,
"Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning").

The paper blends a Hello Kitty photo; here the key is a seeded procedural
low-frequency colour texture with hard edges (:func:`triggers.texture`).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from detection.attacks.base import (
    AttackParams,
    Int64Array,
    PoisonedSet,
    UInt8Array,
    assemble,
    choose,
    count_for,
    not_target,
    register_attack,
)
from detection.attacks.triggers import blend as blend_images
from detection.attacks.triggers import pattern_rng, texture


class BlendParams(AttackParams):
    rate: float = Field(0.003, gt=0.0, le=0.5)
    alpha: float = Field(0.2, gt=0.0, le=1.0, description="Opacity of the key at train time.")
    test_alpha: float | None = Field(None, gt=0.0, le=1.0, description="None: same as alpha.")
    n_shapes: int = Field(4, ge=0, description="Hard-edged shapes in the texture.")
    pattern_seed: int | None = Field(
        None, description="Seed of the texture; None: drawn from the attack seed."
    )


@register_attack("blend", BlendParams, "Blend a full-image texture at alpha 0.2 (Chen et al. 2017)")
def blend(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: BlendParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """All-to-one blend attack: ``(1 - alpha) x + alpha key`` on non-target poisons."""
    _, h, w, c = x.shape
    key = texture(h, w, c, pattern_rng(params.pattern_seed, rng), params.n_shapes)
    poison = choose(rng, not_target(labels, params), count_for(params.rate, labels.size))
    test_alpha = params.test_alpha or params.alpha

    def trigger(batch: UInt8Array) -> UInt8Array:
        return blend_images(batch, key, test_alpha)

    return assemble(
        "blend",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=blend_images(x[poison], key, params.alpha),
        trigger=trigger,
    )
