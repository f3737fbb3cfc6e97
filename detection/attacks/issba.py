"""ISSBA, invisible sample-specific backdoor (Li, Li, Wu, Li, He, Lyu 2021,
"Invisible Backdoor Attack with Sample-Specific Triggers", ICCV).

The paper uses a StegaStamp encoder to hide a fixed string in each image as an
invisible, image-dependent residual. Here a tiny conv encoder learns an
l_inf-bounded residual ``eps tanh(E(x, code))`` that a small CNN decoder reads
back as a fixed seeded bit-string; the encoder/decoder pair is trained briefly
through the shared loop. Poison = ``clip(x + residual(x))``, relabelled to the
target.
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
    normalised,
    setup,
    tiny_conv_net,
    to_unit,
)
from detection.models import Classifier, build_model
from detection.training import LossFn, OptimConfig, TensorData, index_batches, train_steps
from detection.types import RunContext


class IssbaParams(TrainedAttackParams, AttackParams):
    rate: float = Field(0.02, gt=0.0, le=0.5)
    steps: int = Field(300, ge=1, description="Encoder/decoder training steps.")
    lr: float = Field(0.05, gt=0.0)
    n_bits: int = Field(8, ge=1, le=256, description="Length of the hidden code.")
    eps: float = Field(12.0, gt=0.0, le=255.0, description="l_inf bound of the residual.")
    lambda_residual: float = Field(0.0, ge=0.0, description="Weight of the residual size.")


class ResidualEncoder(nn.Module):
    """(image, bit-string) -> residual bounded by ``eps`` (images on [0, 1]).

    Trained on random bit-strings so that the decoder must read the residual
    (a fixed string alone could be "decoded" by a constant); poisons then use
    the attack's fixed ``code``.
    """

    code: Tensor

    def __init__(self, channels: int, code: Tensor, eps: float, width: int) -> None:
        super().__init__()
        self.register_buffer("code", code)
        self.eps = eps
        self.net = tiny_conv_net(channels + code.numel(), channels, width)

    def forward(self, x: Tensor, bits: Tensor | None = None) -> Tensor:
        n, _, h, w = x.shape
        b = self.code.expand(n, -1) if bits is None else bits
        code_map = b[:, :, None, None].expand(-1, -1, h, w)
        # gain 4: start with residuals of a few grey levels, not sub-level ones
        # that vanish when rounded to uint8
        out: Tensor = self.eps * torch.tanh(4.0 * self.net(torch.cat([x, code_map], dim=1)))
        return out

    def embed(self, x: Tensor) -> Tensor:
        """``clip(x + residual(x, code))``: the poisoned image."""
        out: Tensor = (x + self(x)).clamp(0, 1)
        return out


def stego_loss(
    encoder: ResidualEncoder,
    decoder: Classifier,
    data: TensorData,
    params: IssbaParams,
    ctx: RunContext,
) -> LossFn:
    """Decode random bit-strings from ``x + residual`` while keeping the residual small."""
    gen = torch.Generator()
    gen.manual_seed(ctx.seed)
    batches = index_batches(data.n, params.batch_size, data.device, gen)
    norm = normalised(data)

    def loss_fn(step: int) -> Tensor:
        xb = data.x[next(batches)].float() / 255.0
        bits = torch.randint(0, 2, (xb.shape[0], params.n_bits), generator=gen).float()
        bits = bits.to(xb.device)
        residual = encoder(xb, bits)
        logits = decoder(norm((xb + residual).clamp(0, 1)))
        decode = nn.functional.binary_cross_entropy_with_logits(logits, bits)
        size = (residual / encoder.eps).pow(2).mean()
        out: Tensor = decode + params.lambda_residual * size
        return out

    return loss_fn


@torch.no_grad()
def bit_accuracy(
    encoder: ResidualEncoder, decoder: Classifier, data: TensorData, x: UInt8Array
) -> float:
    """Fraction of code bits the decoder recovers from the encoded ``x``."""
    if x.shape[0] == 0:
        return float("nan")
    decoded = decoder(normalised(data)(encoder.embed(to_unit(x, data.device)))) > 0
    return float((decoded == (encoder.code > 0.5)).float().mean())


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
    code = torch.from_numpy(rng.integers(0, 2, params.n_bits).astype(np.float32))
    data, ctx = setup(x, labels, params.device, rng)
    encoder = ResidualEncoder(x.shape[-1], code, params.eps / 255.0, params.width)
    decoder = build_model("small_cnn", data.input_shape, params.n_bits, params.width)
    nets = nn.ModuleDict({"enc": encoder, "dec": decoder}).to(data.device)
    optim = OptimConfig(lr=params.lr, momentum=0.9, weight_decay=0.0)
    loss_fn = stego_loss(encoder, decoder, data, params, ctx)
    train_steps(nets, params.steps, loss_fn, optim, ctx, "issba")

    def trigger(batch: UInt8Array) -> UInt8Array:
        return map_images(encoder.embed, batch, data.device)

    poison_x = trigger(x[poison])
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
            "code": [int(b) for b in code.tolist()],
            "bit_accuracy": bit_accuracy(encoder, decoder, data, poison_x),
        },
    )
