"""ISSBA, invisible sample-specific backdoor (Li, Li, Wu, Li, He, Lyu 2021,
"Invisible Backdoor Attack with Sample-Specific Triggers", ICCV).

The paper hides a fixed string in each image with a StegaStamp encoder: the
secret goes through a dense layer to a spatial map, which is concatenated with
the image and turned into an invisible, image-dependent residual; a decoder
CNN reads the string back. Here the same pieces are tiny: a linear "spread" of
the bits onto a map at image resolution, a three-conv encoder that sees the
image and the map (plus a skip from the map) and emits an l_inf-bounded
residual ``eps tanh(E(x, map))``, and a two-conv decoder with a dense head.
Encoder and decoder are trained jointly with Adam through the shared loop on
random bit-strings: binary cross-entropy on the bits plus a penalty on the
residual's mean |r| above a budget, uint8 rounding simulated (straight
through) and the residual amplified during a warm-up. Poison =
``clip(x + residual(x, code))`` for the attack's fixed seeded code, relabelled
to the target. ``info`` records the decoder's bit accuracy on images held out
of stego training and the poisons' mean |r| (0..255).
"""

from __future__ import annotations

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
    not_target,
    register_attack,
)
from detection.attacks.learned import (
    TrainedAttackParams,
    map_images,
    quantised,
    setup,
    tiny_conv_net,
    to_unit,
)
from detection.training import LossFn, OptimConfig, TensorData, index_batches, train_steps
from detection.types import RunContext

MAP_CHANNELS = 4
DECODER_GRID = 4


class IssbaParams(TrainedAttackParams, AttackParams):
    rate: float = Field(0.02, gt=0.0, le=0.5)
    steps: int = Field(300, ge=1, description="Encoder/decoder training steps.")
    lr: float = Field(5e-3, gt=0.0, description="Adam learning rate.")
    n_bits: int = Field(8, ge=1, le=64, description="Length of the hidden code.")
    eps: float = Field(10.0, gt=0.0, le=255.0, description="l_inf bound of the residual.")
    mean_abs: float = Field(
        5.0, gt=0.0, le=255.0, description="Budget for the residual's mean |r| (0..255)."
    )
    lambda_residual: float = Field(
        1.0, ge=0.0, description="Weight of the mean |r| in excess of the budget, over eps."
    )
    grid: int | None = Field(
        None, ge=1, description="Side of the map the code spreads to; None: image size."
    )
    warmup_gain: float = Field(8.0, ge=1.0, description="Residual gain at step 0.")
    warmup: float = Field(
        0.4, ge=0.0, le=1.0, description="Share of steps over which the gain falls to 1."
    )
    holdout: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of images kept out of stego training."
    )


class ResidualEncoder(nn.Module):
    """(image, bit-string) -> residual bounded by ``eps`` (images on [0, 1]).

    Trained on random bit-strings so that the decoder must read the residual
    (a fixed string alone could be "decoded" by a constant); poisons then use
    the attack's fixed ``code``.
    """

    code: Tensor

    def __init__(
        self, channels: int, code: Tensor, eps: float, width: int, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        self.register_buffer("code", code)
        self.eps = eps
        self.grid = grid
        # the dense spread gives each bit its own spatial signature, which a
        # constant code map cannot (3x3 convs see the same value everywhere);
        # at full resolution it can also use fine patterns the image lacks
        self.spread = nn.Linear(code.numel(), MAP_CHANNELS * grid[0] * grid[1])
        self.net = tiny_conv_net(channels + MAP_CHANNELS, channels, width)
        # a direct path from the code map (StegaStamp's U-Net has skips too):
        # through the conv stack alone the initial code signal is ~1 grey level,
        # too faint for some initialisations to ever pick up
        self.skip = nn.Conv2d(MAP_CHANNELS, channels, 1)

    def forward(self, x: Tensor, bits: Tensor | None = None) -> Tensor:
        n, _, h, w = x.shape
        b = self.code.expand(n, -1) if bits is None else bits
        coarse = self.spread(2.0 * b - 1.0).view(n, MAP_CHANNELS, *self.grid)
        code_map = nn.functional.interpolate(coarse, size=(h, w), mode="nearest")
        pre = self.net(torch.cat([x, code_map], dim=1)) + self.skip(code_map)
        out: Tensor = self.eps * torch.tanh(pre)
        return out

    def embed(self, x: Tensor) -> Tensor:
        """``clip(x + residual(x, code))``: the poisoned image."""
        out: Tensor = (x + self(x)).clamp(0, 1)
        return out


def bit_decoder(channels: int, n_bits: int, width: int) -> nn.Sequential:
    """Image on [0, 1] minus 0.5 -> ``n_bits`` logits.

    Pooling to a small grid (not to 1x1) keeps where each bit lives.
    """
    grid = DECODER_GRID
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(True),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.ReLU(True),
        nn.AdaptiveAvgPool2d(grid),
        nn.Flatten(),
        nn.Linear(2 * width * grid * grid, n_bits),
    )


def stego_loss(
    encoder: ResidualEncoder,
    decoder: nn.Module,
    data: TensorData,
    params: IssbaParams,
    ctx: RunContext,
) -> LossFn:
    """Decode random bit-strings from ``x + residual``; penalise mean |r| over budget."""
    gen = torch.Generator()
    gen.manual_seed(ctx.seed)
    batches = index_batches(data.n, params.batch_size, data.device, gen)

    def loss_fn(step: int) -> Tensor:
        xb = data.x[next(batches)].float() / 255.0
        bits = torch.randint(0, 2, (xb.shape[0], params.n_bits), generator=gen).float()
        bits = bits.to(xb.device)
        gain = warmup_gain(step, params)
        residual = encoder(xb, bits)
        logits = decoder(quantised((xb + gain * residual).clamp(0, 1)) - 0.5)
        decode = nn.functional.binary_cross_entropy_with_logits(logits, bits)
        excess = torch.relu(255.0 * residual.abs().mean() - params.mean_abs) / params.eps
        out: Tensor = decode + params.lambda_residual * excess
        return out

    return loss_fn


def warmup_gain(step: int, params: IssbaParams) -> float:
    """Residual amplification, ``warmup_gain`` at step 0 falling linearly to 1.

    A residual of a few grey levels is buried under the image at first, so
    the decoder cannot start reading it; a loud residual early on lets both
    nets agree on where each bit lives, then the bound tightens to ``eps``.
    """
    t = min(1.0, step / max(1.0, params.warmup * params.steps))
    return params.warmup_gain + (1.0 - params.warmup_gain) * t


@torch.no_grad()
def bit_accuracy(decoder: nn.Module, code: Tensor, x: UInt8Array, device: torch.device) -> float:
    """Fraction of the code's bits ``decoder`` recovers from encoded uint8 images ``x``."""
    if x.shape[0] == 0:
        return float("nan")
    decoded = decoder(to_unit(x, device) - 0.5) > 0
    return float((decoded == (code.to(device) > 0.5)).float().mean())


def train_stego(
    x: UInt8Array, labels: Int64Array, params: IssbaParams, rng: np.random.Generator
) -> tuple[ResidualEncoder, nn.Module, torch.device]:
    """Seeded code + jointly trained encoder and decoder."""
    code = torch.from_numpy(rng.integers(0, 2, params.n_bits).astype(np.float32))
    data, ctx = setup(x, labels, params.device, rng)
    c = data.input_shape[0]
    h, w = data.input_shape[1:]
    grid = (h, w) if params.grid is None else (min(params.grid, h), min(params.grid, w))
    encoder = ResidualEncoder(c, code, params.eps / 255.0, params.width, grid)
    decoder = bit_decoder(c, params.n_bits, params.width)
    nets = nn.ModuleDict({"enc": encoder, "dec": decoder}).to(data.device)
    optim = OptimConfig(lr=params.lr, weight_decay=0.0, name="adam")
    loss_fn = stego_loss(encoder, decoder, data, params, ctx)
    train_steps(nets, params.steps, loss_fn, optim, ctx, "issba")
    return encoder, decoder, data.device


def split_holdout(
    n: int, params: IssbaParams, rng: np.random.Generator
) -> tuple[Int64Array, Int64Array]:
    """Indices for stego training and for the held-out bit-accuracy check."""
    n_out = min(int(params.holdout * n), n - 1)
    perm = rng.permutation(n).astype(np.int64)
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


@register_attack("issba", IssbaParams, "ISSBA sample-specific invisible residual (Li et al. 2021)")
def issba(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: IssbaParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """Add the encoder's residual to non-target poisons and relabel them to the target."""
    poison = choose(rng, not_target(labels, params), count_for(params.rate, labels.size))
    fit, held = split_holdout(labels.size, params, rng)
    encoder, decoder, device = train_stego(x[fit], labels[fit], params, rng)

    def trigger(batch: UInt8Array) -> UInt8Array:
        return map_images(encoder.embed, batch, device)

    poison_x = trigger(x[poison])
    residual = poison_x.astype(np.float32) - x[poison].astype(np.float32)
    return assemble(
        "issba",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=poison_x,
        trigger=trigger,
        extra={
            "code": [int(b) for b in encoder.code.tolist()],
            "bit_accuracy": bit_accuracy(decoder, encoder.code, trigger(x[held]), device),
            "n_holdout": int(held.size),
            "residual_mean_abs": float(np.abs(residual).mean()),
        },
    )
