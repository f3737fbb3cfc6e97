"""Input-aware dynamic backdoor (Nguyen & Tran 2020, "Input-Aware Dynamic
Backdoor Attack", NeurIPS).

A tiny conv generator maps each image to its own pattern and mask; it is
trained jointly with a small classifier so that ``x + m(x) (p(x) - x)`` is
classified as the target, while "cross" samples (x with the trigger generated
for another image) keep their label, a diversity loss keeps patterns
input-specific, and a mask-density penalty keeps masks small; the mask is
soft-thresholded to nearly binary as in the paper's mask network. The trained
generator then poisons the chosen samples. Training is tiny by default (a few
hundred Adam steps, the paper's generator optimiser; here the classifier
shares it) and goes through the shared loop.
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
)
from detection.models import build_model
from detection.training import LossFn, OptimConfig, TensorData, index_batches, train_steps
from detection.types import RunContext

# the paper's 1e-7 makes the ratio explode while patterns are still alike at
# initialisation, which blows the mask into saturation on the first steps
DIV_EPS = 0.05


class DynamicParams(TrainedAttackParams, AttackParams):
    rate: float = Field(0.003, gt=0.0, le=0.5)
    steps: int = Field(300, ge=1, description="Joint generator/classifier training steps.")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate.")
    backdoor_ratio: float = Field(0.1, gt=0.0, lt=1.0, description="Backdoored share of a batch.")
    cross_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Cross-trigger share of a batch.")
    mask_density: float = Field(0.05, gt=0.0, le=1.0, description="Target mean mask value.")
    lambda_norm: float = Field(10.0, ge=0.0)
    lambda_div: float = Field(1.0, ge=0.0)


class InputAwareGenerator(nn.Module):
    """Image -> (pattern in [0, 1], mask in [0, 1]), both per pixel.

    As in the paper's mask network, the mask goes through a steep soft
    threshold (``0.5 + 0.5 tanh(20 s - 10)`` of a sigmoid ``s``), so it ends
    up nearly binary: a few pixels fully replaced by the pattern rather than a
    faint blend everywhere, which a victim trained on a few poisons would not
    pick up.
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.channels = channels
        self.net = tiny_conv_net(channels, channels + 1, width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(x)
        soft = torch.sigmoid(out[:, self.channels :])
        mask = 0.5 + 0.5 * torch.tanh(20.0 * soft - 10.0)
        return torch.sigmoid(out[:, : self.channels]), mask

    def backdoor(self, x: Tensor) -> Tensor:
        """Poison ``x`` (NCHW on [0, 1]) with its own pattern."""
        pattern, mask = self(x)
        out: Tensor = x + mask * (pattern - x)
        return out


def joint_loss(
    nets: nn.ModuleDict, data: TensorData, params: DynamicParams, ctx: RunContext
) -> LossFn:
    """The per-step loss of joint generator/classifier training."""
    gen = torch.Generator()
    gen.manual_seed(ctx.seed)
    batches = index_batches(data.n, params.batch_size, data.device, gen)
    norm = normalised(data)

    def loss_fn(step: int) -> Tensor:
        idx = next(batches)
        xb, yb = data.x[idx].float() / 255.0, data.y[idx]
        n = xb.shape[0]
        n_bd = max(1, round(params.backdoor_ratio * n))
        n_cross = round(params.cross_ratio * n)
        partner = torch.randperm(n, generator=gen).to(data.device)
        pattern, mask = nets["gen"](xb)
        mixed = xb + mask * (pattern - xb)
        crossed = xb + mask[partner] * (pattern[partner] - xb)
        inputs = torch.cat([mixed[:n_bd], crossed[n_bd : n_bd + n_cross], xb[n_bd + n_cross :]])
        targets = torch.cat([torch.full_like(yb[:n_bd], params.target_class), yb[n_bd:]])
        ce = nn.functional.cross_entropy(nets["clf"](norm(inputs)), targets)
        dist_x = (xb - xb[partner]).abs().mean(dim=(1, 2, 3))
        dist_p = (pattern - pattern[partner]).abs().mean(dim=(1, 2, 3))
        diversity = (dist_x / (dist_p + DIV_EPS)).mean()
        density = torch.relu(mask.mean(dim=(1, 2, 3)) - params.mask_density).mean()
        out: Tensor = ce + params.lambda_div * diversity + params.lambda_norm * density
        return out

    return loss_fn


def train_generator(
    data: TensorData, n_classes: int, params: DynamicParams, ctx: RunContext
) -> InputAwareGenerator:
    """Train the generator jointly with a throw-away small CNN."""
    c = data.input_shape[0]
    generator = InputAwareGenerator(c, params.width)
    clf = build_model("small_cnn", data.input_shape, n_classes, params.width)
    nets = nn.ModuleDict({"gen": generator, "clf": clf}).to(data.device)
    optim = OptimConfig(lr=params.lr, weight_decay=0.0, name="adam")
    train_steps(nets, params.steps, joint_loss(nets, data, params, ctx), optim, ctx, "dynamic")
    return generator


@register_attack(
    "dynamic", DynamicParams, "Input-aware dynamic trigger generator (Nguyen & Tran 2020)"
)
def dynamic(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: DynamicParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """Poison non-target samples with their generated pattern/mask, relabel to target."""
    poison = choose(rng, not_target(labels, params), count_for(params.rate, labels.size))
    data, ctx = setup(x, labels, params.device, rng)
    generator = train_generator(data, n_classes, params, ctx).eval()

    def trigger(batch: UInt8Array) -> UInt8Array:
        return map_images(generator.backdoor, batch, data.device)

    return assemble(
        "dynamic",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=trigger(x[poison]),
        trigger=trigger,
    )
