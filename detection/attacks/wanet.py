"""WaNet: an imperceptible warping trigger (Nguyen & Tran 2021, "WaNet -
Imperceptible Warping-based Backdoor Attack", ICLR).

A random k x k flow field (normalised to mean magnitude 1) is upsampled
bicubically to H x W, scaled by ``s / H`` and added to the identity sampling
grid; poisons are resampled through it with ``grid_sample``. Noise-mode covers
use the same grid plus per-sample random jitter and keep their labels, which
forces the model to learn the exact warp rather than "any warp".
"""

from __future__ import annotations

import numpy as np
import torch
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
from detection.attacks.triggers import to_uint8


class WaNetParams(AttackParams):
    rate: float = Field(0.05, gt=0.0, le=0.5)
    cover_rate: float = Field(0.1, ge=0.0, le=0.5)
    k: int = Field(4, ge=2, description="Control-grid side of the random flow field.")
    strength: float = Field(0.5, gt=0.0, description="s: warp strength.")
    grid_rescale: float = Field(1.0, gt=0.0, description="Shrinks the grid to stay in bounds.")
    noise_scale: float = Field(1.0, ge=0.0, description="Cover jitter, in units of 1/H.")
    batch_size: int = Field(1024, ge=1, description="Images warped per grid_sample call.")


def warp_grid(h: int, w: int, params: WaNetParams, rng: np.random.Generator) -> torch.Tensor:
    """The fixed sampling grid ``(1, H, W, 2)`` in [-1, 1] (x, y order)."""
    flow = rng.uniform(-1.0, 1.0, (1, 2, params.k, params.k)).astype(np.float32)
    flow /= np.abs(flow).mean()
    noise = torch.nn.functional.interpolate(
        torch.from_numpy(flow), size=(h, w), mode="bicubic", align_corners=True
    ).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    identity = torch.stack((xs, ys), dim=2)[None]
    grid = (identity + params.strength * noise / h) * params.grid_rescale
    return torch.clamp(grid, -1.0, 1.0)


def warp(x: UInt8Array, grid: torch.Tensor, batch_size: int) -> UInt8Array:
    """Resample uint8 NHWC images through ``grid`` (1 or N, H, W, 2)."""
    if x.shape[0] == 0:
        return x.copy()
    out = []
    for start in range(0, x.shape[0], batch_size):
        chunk = torch.from_numpy(x[start : start + batch_size]).permute(0, 3, 1, 2).float()
        g = grid if grid.shape[0] == 1 else grid[start : start + batch_size]
        g = g.expand(chunk.shape[0], -1, -1, -1)
        warped = torch.nn.functional.grid_sample(chunk, g, align_corners=True)
        out.append(warped.permute(0, 2, 3, 1).numpy())
    return to_uint8(np.concatenate(out))


def noisy_grids(grid: torch.Tensor, n: int, scale: float, rng: np.random.Generator) -> torch.Tensor:
    """``n`` copies of ``grid`` with uniform jitter of ``scale / H``."""
    h = grid.shape[1]
    jitter = rng.uniform(-1.0, 1.0, (n, *grid.shape[1:])).astype(np.float32)
    return torch.clamp(grid + torch.from_numpy(jitter) * scale / h, -1.0, 1.0)


@register_attack(
    "wanet", WaNetParams, "WaNet warping trigger with noise covers (Nguyen & Tran 2021)"
)
def wanet(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: WaNetParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """Warp non-target poisons to the target; warp+noise covers keep their labels."""
    grid = warp_grid(x.shape[1], x.shape[2], params, rng)
    poison, covers = choose_with_covers(rng, not_target(labels, params), None, params)
    cover_grid = noisy_grids(grid, covers.size, params.noise_scale, rng)

    def trigger(batch: UInt8Array) -> UInt8Array:
        return warp(batch, grid, params.batch_size)

    return assemble(
        "wanet",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=trigger(x[poison]),
        cover_indices=covers,
        cover_x=warp(x[covers], cover_grid, params.batch_size),
        trigger=trigger,
    )
