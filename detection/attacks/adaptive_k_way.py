"""Adaptive k-way pixel triggers (Qi, Xie, Li, Wang, Mittal 2023, "Revisiting the
Assumption of Latent Separability for Backdoor Defenses", ICLR; the k-way
variant of its reference code).

``k`` triggers, each a few fixed pixels at fixed (seeded) positions set to a
fixed bright colour. Each poison and each cover carries one of them; covers
keep their labels. At test time all ``k`` triggers are stamped together.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

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
from detection.attacks.triggers import pattern_rng


class KWayParams(AttackParams):
    rate: float = Field(0.003, gt=0.0, le=0.5)
    cover_rate: float = Field(0.003, ge=0.0, le=0.5)
    k: int = Field(4, ge=1, le=16, description="Number of distinct triggers.")
    pixels_per_trigger: int = Field(3, ge=1, le=16)
    pattern_seed: int | None = Field(None, description="None: drawn from the attack seed.")


def pixel_layout(
    shape: tuple[int, ...], params: KWayParams, rng: np.random.Generator
) -> tuple[Int64Array, Int64Array, UInt8Array]:
    """Rows, cols ``(k, p)`` of distinct pixels and their colours ``(k, p, C)``."""
    h, w, c = shape
    n = params.k * params.pixels_per_trigger
    flat = rng.choice(h * w, size=n, replace=False).reshape(params.k, -1)
    colours = np.where(rng.random((params.k, params.pixels_per_trigger, c)) < 0.5, 255, 96)
    colours[..., int(rng.integers(c))] = 255  # at least one saturated channel
    return flat // w, flat % w, colours.astype(np.uint8)


def stamp_pixels(
    x: UInt8Array,
    layout: tuple[Int64Array, Int64Array, UInt8Array],
    which: NDArray[np.integer] | None,
) -> UInt8Array:
    """Set trigger ``which[i]``'s pixels on image ``i``; None stamps all triggers."""
    rows, cols, colours = layout
    out = x.copy()
    if which is None:
        out[:, rows.ravel(), cols.ravel()] = colours.reshape(-1, colours.shape[-1])
        return out
    img = np.arange(x.shape[0])[:, None]
    out[img, rows[which], cols[which]] = colours[which]
    return out


@register_attack("adaptive_k_way", KWayParams, "Adaptive k-way pixel triggers (Qi et al. 2023)")
def adaptive_k_way(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: KWayParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """One of ``k`` pixel triggers per poison/cover; all ``k`` together at test."""
    layout = pixel_layout(x.shape[1:], params, pattern_rng(params.pattern_seed, rng))
    poison, covers = choose_with_covers(rng, not_target(labels, params), None, params)
    both = np.concatenate([poison, covers])
    stamped = stamp_pixels(x[both], layout, rng.integers(0, params.k, both.size))

    def trigger(batch: UInt8Array) -> UInt8Array:
        return stamp_pixels(batch, layout, None)

    regions = [
        [int(r), int(c), 1, 1] for r, c in zip(layout[0].ravel(), layout[1].ravel(), strict=True)
    ]
    return assemble(
        "adaptive_k_way",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=stamped[: poison.size],
        cover_indices=covers,
        cover_x=stamped[poison.size :],
        trigger=trigger,
        extra={"regions": regions},
    )
