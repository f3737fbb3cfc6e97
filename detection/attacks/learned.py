"""Shared plumbing for attacks that train something (clean-label, dynamic, ISSBA).

All training goes through :func:`detection.training.train_steps`; this module
only converts images, builds tiny conv nets and applies trained networks in
batches without gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from detection.attacks.base import UInt8Array
from detection.attacks.triggers import to_uint8
from detection.registry import Params
from detection.training import TensorData, resolve_device, seed_everything, to_tensor_data
from detection.types import RunContext

ImageMap = Callable[[Tensor], Tensor]


class TrainedAttackParams(Params):
    """Mixin fields for attacks that train a model (kept tiny by default)."""

    device: str | None = Field("cpu", description="torch device for attack-side training.")
    width: int = Field(16, ge=4, description="Width of the attack-side networks.")
    batch_size: int = Field(64, ge=8)


def setup(
    x: UInt8Array, labels: np.ndarray, device: str | None, rng: np.random.Generator
) -> tuple[TensorData, RunContext]:
    """Seed torch from ``rng`` and move the data to ``device``."""
    seed = int(rng.integers(2**31))
    seed_everything(seed)
    dev = resolve_device(device)
    return to_tensor_data(x, labels, dev), RunContext(device=str(dev), seed=seed)


def to_unit(x: UInt8Array, device: torch.device) -> Tensor:
    """uint8 NHWC -> float NCHW on [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2).float() / 255


def from_unit(t: Tensor) -> UInt8Array:
    """float NCHW on [0, 1] -> uint8 NHWC."""
    return to_uint8(t.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0)


@torch.no_grad()
def map_images(fn: ImageMap, x: UInt8Array, device: torch.device, batch: int = 512) -> UInt8Array:
    """Apply a [0, 1]-image transform to uint8 NHWC images, in batches."""
    if x.shape[0] == 0:
        return x.copy()
    parts = [from_unit(fn(to_unit(x[s : s + batch], device))) for s in range(0, x.shape[0], batch)]
    return np.concatenate(parts)


def tiny_conv_net(c_in: int, c_out: int, width: int) -> nn.Sequential:
    """Three same-size 3x3 convs: an image-to-image map for generators/encoders."""
    return nn.Sequential(
        nn.Conv2d(c_in, width, 3, padding=1),
        nn.ReLU(True),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(True),
        nn.Conv2d(width, c_out, 3, padding=1),
    )


def normalised(data: TensorData) -> Callable[[Tensor], Tensor]:
    """Map [0, 1] NCHW images to the classifier's normalised inputs."""
    mean = data.mean.view(1, -1, 1, 1)
    std = data.std.view(1, -1, 1, 1)
    return lambda t: (t - mean) / std


def quantised(t: Tensor) -> Tensor:
    """Round [0, 1] images to the uint8 grid with a straight-through gradient.

    Attack outputs are stored as uint8, so a learned signal must survive the
    rounding; the gradient passes through as if nothing had been rounded.
    """
    out: Tensor = t + (torch.round(t * 255.0) / 255.0 - t).detach()
    return out
