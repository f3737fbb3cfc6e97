"""Frequency-domain trigger detection: the ``frequency`` detector.

Zeng, Park, Mozaffari, Jia, "Rethinking the Backdoor Attacks' Triggers: A
Frequency Perspective", ICCV 2021.

Most triggers (patches, blends, noise, sparse pixels, periodic signals) leave
high-frequency artefacts that natural images lack. A small CNN looks at the
per-channel 2-D DCT of an image and is trained to tell clean images from the
same images carrying a *random synthetic* trigger; it never sees the attack
under inspection. Score = its probability of "triggered".

Ours trains that CNN here, on the clean reserve (or, without one, on the
inspected set itself, where poisons are a small minority), with fresh random
triggers in every batch, made on the device: a random patch, a blend with
random (smooth or pixel) noise, Gaussian noise, a few random pixels, or a
sinusoid. A quarter of the reserve is held out to set the clean-FPR cut.
No weights are shipped. Training runs through the shared loop.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from pydantic import Field
from scipy.fft import dct
from torch import Tensor, nn

from detection.defenses.common import FloatArray, require_reserve, thresholded_result
from detection.models import build_model, prepare_model
from detection.registry import register_detector
from detection.thresholds import ThresholdParams
from detection.training import (
    OptimConfig,
    autocast_for,
    index_batches,
    resolve_device,
    seed_everything,
    train_steps,
)
from detection.types import (
    DetectionError,
    DetectionInput,
    DetectionResult,
    RunContext,
)

N_TRIGGER_KINDS = 5


class FrequencyParams(ThresholdParams):
    """Params of the ``frequency`` detector."""

    steps: int = Field(1000, ge=1, le=100_000, description="Training steps of the DCT CNN.")
    batch_size: int = Field(128, ge=8, le=4096)
    lr: float = Field(0.05, gt=0.0, le=1.0)
    width: int = Field(16, ge=4, le=128, description="Width of the small CNN.")
    holdout: float = Field(
        0.25, gt=0.0, lt=0.9, description="Share of the reserve held out for the clean-FPR cut."
    )


def dct_matrix(n: int) -> Tensor:
    """Orthonormal DCT-II matrix ``D`` (n, n): ``D @ v`` is the DCT of ``v``."""
    return torch.from_numpy(dct(np.eye(n), norm="ortho", axis=0).astype(np.float32))


class DCT2(nn.Module):
    """Per-channel 2-D DCT of (B, C, H, W) images in [0, 1]."""

    dh: Tensor
    dw: Tensor

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.register_buffer("dh", dct_matrix(h))
        self.register_buffer("dw", dct_matrix(w))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.dh @ x @ self.dw.T
        return out


def add_triggers(x: Tensor, kinds: Tensor, gen: torch.Generator) -> Tensor:
    """``x`` (B, C, H, W) in [0, 1] with one random synthetic trigger of kind ``kinds[b]`` each."""
    b, c, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=gen).to(dev)

    size = (rand(b) * (h // 4 - 1) + 2).long().clamp(max=h)
    top = (rand(b) * (h - size + 1).float()).long()
    left = (rand(b) * (w - size + 1).float()).long()
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    box = (
        (rows >= top[:, None, None])
        & (rows < (top + size)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + size)[:, None, None])
    )
    patch = torch.where(box[:, None], rand(b, c, h, w).round(), x)
    smooth = nn.functional.interpolate(rand(b, c, 4, 4), size=(h, w), mode="bilinear")
    texture = torch.where(rand(b, 1, 1, 1) < 0.5, smooth, rand(b, c, h, w))
    alpha = 0.05 + 0.2 * rand(b, 1, 1, 1)
    blend = (1 - alpha) * x + alpha * texture
    noise = x + (0.02 + 0.08 * rand(b, 1, 1, 1)) * torch.randn((b, c, h, w), generator=gen).to(dev)
    r = rand(b, 1, h, w)
    spots = (r < 0.01) | (r == r.amax(dim=(2, 3), keepdim=True))  # at least one pixel
    pixels = torch.where(spots, rand(b, c, h, w).round(), x)
    freq = 2 + 8 * rand(b, 1, 1, 1)
    wave = x + (0.08 + 0.08 * rand(b, 1, 1, 1)) * torch.sin(2 * np.pi * cols[:, None] * freq / w)
    options = torch.stack([patch, blend, noise, pixels, wave], dim=0)
    picked = options[kinds, torch.arange(b, device=dev)]
    return picked.clamp(0.0, 1.0)


class FrequencyNet(nn.Module):
    """DCT, per-coefficient standardisation, then the small CNN with two classes."""

    mean: Tensor
    std: Tensor

    def __init__(self, shape: tuple[int, int, int], width: int, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.dct = DCT2(shape[1], shape[2])
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.cnn = build_model("small_cnn", shape, 2, width)

    def forward(self, x: Tensor) -> Tensor:
        z = (self.dct(x) - self.mean) / self.std
        out: Tensor = self.cnn(z.contiguous(memory_format=torch.channels_last))
        return out


def train_frequency_net(pool: Tensor, params: FrequencyParams, ctx: RunContext) -> FrequencyNet:
    """Train on ``pool`` (uint8 NCHW, clean) against its own randomly triggered copies."""
    dev = pool.device
    shape = (int(pool.shape[1]), int(pool.shape[2]), int(pool.shape[3]))
    coeffs = DCT2(shape[1], shape[2]).to(dev)(pool[:512].float() / 255.0)
    mean, std = coeffs.mean(dim=0), coeffs.std(dim=0).clamp_min(1e-3)
    model = prepare_model_freq(FrequencyNet(shape, params.width, mean, std), dev)
    gen = torch.Generator()
    gen.manual_seed(ctx.seed)
    batches = index_batches(pool.shape[0], params.batch_size, dev, gen)
    criterion = nn.CrossEntropyLoss()

    def loss_fn(step: int) -> Tensor:
        x = pool[next(batches)].float() / 255.0
        kinds = (torch.rand(x.shape[0], generator=gen) * N_TRIGGER_KINDS).long().to(dev)
        xb = torch.cat([x, add_triggers(x, kinds, gen)])
        yb = torch.cat([torch.zeros(x.shape[0]), torch.ones(x.shape[0])]).long().to(dev)
        out: Tensor = criterion(model(xb), yb)
        return out

    optim = OptimConfig(lr=params.lr, momentum=0.9, weight_decay=5e-4)
    train_steps(model, params.steps, loss_fn, optim, ctx, stage="frequency")
    return model


def prepare_model_freq(model: FrequencyNet, dev: torch.device) -> FrequencyNet:
    model.cnn = prepare_model(model.cnn, dev, image=True)
    return model.to(dev)


@torch.no_grad()
def triggered_probability(model: FrequencyNet, x: Tensor, batch_size: int = 1024) -> FloatArray:
    """P("triggered") of every image of ``x`` (uint8 NCHW), shape (N,)."""
    model.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        with autocast_for(x.device):
            logits = model(x[start : start + batch_size].float() / 255.0).float()
        out.append(torch.softmax(logits, dim=1)[:, 1].cpu())
    result: FloatArray = torch.cat(out).double().numpy()
    return result


def _to_device(x: np.ndarray, dev: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dev)


@register_detector("frequency", FrequencyParams, "Frequency-domain detector (Zeng et al. 2021)")
def detect(inp: DetectionInput, params: FrequencyParams, ctx: RunContext) -> DetectionResult:
    """Score every image by a DCT-domain CNN's probability that it carries a trigger.

    Returns
    -------
    DetectionResult
        ``scores`` (N,): P(triggered) in [0, 1], higher = more suspicious;
        flags by the held-out reserve's quantile at ``target_fpr`` (or the
        budget); per-class statistic = mean score; no target classes.
    """
    if not inp.is_image:
        raise DetectionError(
            "frequency: a DCT of images needs images (N x H x W x C), not features"
        )
    if params.threshold == "clean_fpr":
        require_reserve(inp, "frequency")
    dev = resolve_device(params.device or ctx.device)
    seed_everything(ctx.seed)
    start = time.perf_counter()
    pool, held = _pools(inp, params, ctx.seed)
    model = train_frequency_net(_to_device(pool, dev), params, ctx.sub(0.0, 0.9))
    ctx.report("score", 0.9)
    scores = triggered_probability(model, _to_device(inp.x, dev))
    reserve = None if held is None else triggered_probability(model, _to_device(held, dev))
    info = {
        "trained_on": "clean_reserve" if held is not None else "inspected_set",
        "seconds": {"frequency": time.perf_counter() - start},
    }
    return thresholded_result(inp, scores, params, reserve, info)


def _pools(
    inp: DetectionInput, params: FrequencyParams, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Training pool and held-out calibration images (None without a reserve)."""
    if inp.clean_x is None:
        return inp.x, None
    order = np.random.default_rng(seed).permutation(inp.clean_x.shape[0])
    n_held = max(1, round(params.holdout * order.size))
    if order.size - n_held < 2:
        raise DetectionError("frequency: the clean reserve is too small to train on")
    return inp.clean_x[order[n_held:]], inp.clean_x[order[:n_held]]
