"""THE training loop, and the device-resident data it trains on.

Data lives as one tensor on the device (uint8 NCHW for images, float32 N×D for
features); batches are gathered by index and augmented on the device (random
crop with padding + horizontal flip), so there is no DataLoader, no PIL and no
per-sample Python. Image batches are channels-last (faster on CPU and CUDA); on
CUDA, steps run under bf16 autocast.

:func:`train_steps` is the only place in the code base that calls
``optimizer.step()``. Variants (plain classification, CT's confusion batches,
ABL's flooding loss) pass a ``loss_fn(step) -> Tensor`` closure.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from detection.types import RunContext

LossFn = Callable[[int], Tensor]
StepCallback = Callable[[int], bool]
Schedule = Literal["constant", "cosine", "onecycle"]
OptimizerName = Literal["sgd", "adam"]


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA; nothing elsewhere (CPU bf16 is slower and less exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class TensorData:
    """A dataset resident on one device.

    ``x`` is uint8 NCHW (images) or float32 N×D (features); ``y`` int64 (N,).
    ``mean``/``std`` normalise a batch: per channel for images, per column for
    features.
    """

    x: Tensor
    y: Tensor
    mean: Tensor
    std: Tensor

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def batch(self, idx: Tensor, augment: bool = False) -> Tensor:
        """Gather rows ``idx``, optionally augment, and normalise to float."""
        xb = self.x[idx]
        if self.is_image:
            xb = xb.float().div_(255.0)
            if augment:
                xb = augment_images(xb)
        return normalise(xb, self.mean, self.std)

    def with_labels(self, y: Tensor) -> TensorData:
        """Same inputs, other labels (e.g. confusion or shifted labels)."""
        return TensorData(self.x, y.to(self.device), self.mean, self.std)

    def subset(self, idx: Tensor) -> TensorData:
        return TensorData(self.x[idx], self.y[idx], self.mean, self.std)


def normalise(xb: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    if xb.dim() == 4:
        out = (xb - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        return out.contiguous(memory_format=torch.channels_last)
    return (xb - mean) / std


def to_tensor_data(
    x: NDArray[np.generic],
    labels: NDArray[np.integer],
    device: torch.device,
    stats_from: NDArray[np.generic] | None = None,
) -> TensorData:
    """Move ``x`` (uint8 NHWC or float N×D) and ``labels`` to ``device``.

    Normalisation statistics come from ``stats_from`` (default ``x``), so a
    clean reserve can share the inspected set's statistics.
    """
    stats = _input_stats(x if stats_from is None else stats_from)
    if x.ndim == 4:
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    else:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    mean, std = (torch.from_numpy(s).to(device) for s in stats)
    return TensorData(xt.to(device), yt.to(device), mean, std)


def _input_stats(x: NDArray[np.generic]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    if x.ndim == 4:
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    else:
        flat = np.asarray(x, dtype=np.float64)
    mean = flat.mean(axis=0)
    std = np.maximum(flat.std(axis=0), 1e-3)
    return mean.astype(np.float32), std.astype(np.float32)


def augment_images(xb: Tensor, flip: bool = True) -> Tensor:
    """Random crop (zero padding of H/8) and horizontal flip, per sample, on device."""
    n, c, h, w = xb.shape
    pad = max(1, h // 8)
    padded = nn.functional.pad(xb, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=xb.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=xb.device)
    rows = (dy[:, None] + torch.arange(h, device=xb.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=xb.device))[:, None, None, :]
    batch = torch.arange(n, device=xb.device)[:, None, None, None]
    chans = torch.arange(c, device=xb.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    if flip:
        mirror = torch.rand(n, device=xb.device) < 0.5
        out = torch.where(mirror[:, None, None, None], out.flip(3), out)
    return out


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings for :func:`train_steps`.

    ``name`` "sgd" (the default, used for every classifier) or "adam" (for
    attack-side networks whose outputs are scaled far below 1, where SGD's
    step size does not adapt); Adam ignores ``momentum`` and ``nesterov``.
    """

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Schedule = "cosine"
    name: OptimizerName = "sgd"


def _optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        nesterov=optim.nesterov and optim.momentum > 0,
    )


def _lr_factor(schedule: Schedule, step: int, n_steps: int) -> float:
    if schedule == "constant":
        return 1.0
    t = step / max(1, n_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    warm = 0.15
    return t / warm if t < warm else max(0.0, (1.0 - t) / (1.0 - warm))


def train_steps(
    model: nn.Module,
    n_steps: int,
    loss_fn: LossFn,
    optim: OptimConfig,
    ctx: RunContext,
    stage: str = "train",
    check_every: int = 100,
    on_step: StepCallback | None = None,
) -> list[float]:
    """Run up to ``n_steps`` optimiser steps on ``loss_fn(step)``; the one training loop.

    Reports ``(stage, fraction)`` progress and polls cancellation every
    ``check_every`` steps. ``on_step(step)`` runs after every optimiser step
    (weight averaging, convergence monitors) and ends training early by
    returning True. Returns the loss every ``check_every`` steps.
    """
    device = next(model.parameters()).device
    opt = _optimizer(model, optim)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(optim.schedule, s, n_steps))
    model.train()
    history: list[float] = []
    for step in range(n_steps):
        with autocast_for(device):
            loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        stop = on_step is not None and on_step(step)
        ctx.check_cancel()  # every step: the caller's poller rate-limits its own checks
        if (step + 1) % check_every == 0 or step + 1 == n_steps or stop:
            history.append(float(loss.detach()))
            ctx.report(stage, (step + 1) / max(1, n_steps))
        if stop:
            break
    model.eval()
    return history


def index_batches(
    n: int, batch_size: int, device: torch.device, generator: torch.Generator
) -> Iterator[Tensor]:
    """Endless stream of index batches, a fresh permutation per epoch.

    The last partial batch of an epoch is dropped unless it is the only one.
    A single sample comes twice: batch norm cannot train on a batch of one.
    """
    if n <= 0:
        raise ValueError("cannot draw batches from an empty dataset")
    if n == 1:
        while True:
            yield torch.zeros(2, dtype=torch.int64, device=device)
    batch_size = min(batch_size, n)
    per_epoch = max(1, n // batch_size)
    while True:
        perm = torch.randperm(n, generator=generator).to(device)
        for b in range(per_epoch):
            yield perm[b * batch_size : (b + 1) * batch_size]


def steps_for_epochs(n: int, batch_size: int, epochs: float) -> int:
    return max(1, round(max(1, n // min(batch_size, n)) * epochs))


@dataclass(frozen=True)
class TrainConfig:
    """Plain supervised training: cross-entropy, SGD, optional augmentation."""

    epochs: float = 10.0
    batch_size: int = 128
    optim: OptimConfig = OptimConfig()
    augment: bool = True
    label_smoothing: float = 0.0


def train_classifier(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    ctx: RunContext,
    stage: str = "train",
    class_weights: Tensor | None = None,
) -> list[float]:
    """Train ``model`` on all of ``data`` with cross-entropy for ``cfg.epochs``."""
    gen = torch.Generator()
    gen.manual_seed(ctx.seed)
    batches = index_batches(data.n, cfg.batch_size, data.device, gen)
    criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
    augment = cfg.augment and data.is_image

    def loss_fn(step: int) -> Tensor:
        idx = next(batches)
        out: Tensor = criterion(model(data.batch(idx, augment)), data.y[idx])
        return out

    n_steps = steps_for_epochs(data.n, cfg.batch_size, cfg.epochs)
    return train_steps(model, n_steps, loss_fn, cfg.optim, ctx, stage)
