"""Anti-Backdoor Learning isolation: the ``abl`` detector.

Li, Lyu, Koren, Lyu, Li, Ma, "Anti-Backdoor Learning: Training Clean Models
on Poisoned Data", NeurIPS 2021.

Backdoor samples are learned much faster than clean ones. ABL's isolation
stage trains a fresh model for a few epochs with a loss that stops any batch
from going below ``gamma``: here the flooding loss ``|CE - gamma| + gamma``
(the gradient turns to ascent once the batch loss dips under ``gamma``), so
clean samples stay near ``gamma`` while the poisons' shortcut drives their
own loss to ~0. Score = minus each sample's final cross-entropy; the lowest-
loss ``budget`` fraction is flagged. Training runs through the shared loop.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from detection.base_model import BaseModelParams, load_data, pick_arch
from detection.defenses.common import FloatArray
from detection.features import per_sample_loss, predict
from detection.models import build_model, prepare_model
from detection.registry import register_detector
from detection.thresholds import BudgetParams, flag_top_fraction
from detection.training import (
    TensorData,
    index_batches,
    resolve_device,
    seed_everything,
    steps_for_epochs,
    train_steps,
)
from detection.types import DetectionInput, DetectionResult, RunContext, class_summaries


class AblParams(BudgetParams):
    """Params of the ``abl`` detector: flags the lowest-loss ``budget`` fraction."""

    gamma: float = Field(0.5, gt=0.0, le=5.0, description="Flooding level of the batch loss.")
    isolation: BaseModelParams = Field(
        BaseModelParams(epochs=20),
        description="The freshly trained isolation model (the paper: 20 epochs).",
    )


def flooding_losses(
    model: nn.Module, data: TensorData, params: AblParams, ctx: RunContext
) -> list[float]:
    """Train ``model`` on ``data`` with the flooding loss ``|CE - gamma| + gamma``."""
    cfg = params.isolation.train_config()
    gen = torch.Generator()
    gen.manual_seed(ctx.seed)
    batches = index_batches(data.n, cfg.batch_size, data.device, gen)
    augment = cfg.augment and data.is_image
    gamma = params.gamma

    def loss_fn(step: int) -> Tensor:
        idx = next(batches)
        ce = nn.functional.cross_entropy(model(data.batch(idx, augment)), data.y[idx])
        return (ce - gamma).abs() + gamma

    n_steps = steps_for_epochs(data.n, cfg.batch_size, cfg.epochs)
    return train_steps(model, n_steps, loss_fn, cfg.optim, ctx, stage="isolation")


def isolation_losses(
    inp: DetectionInput, params: AblParams, ctx: RunContext
) -> tuple[FloatArray, list[float]]:
    """Per-sample CE of a model trained from scratch with flooding, shape (N,)."""
    dev = resolve_device(params.device or ctx.device)
    seed_everything(ctx.seed)
    data, _ = load_data(inp, dev)
    arch = pick_arch(params.isolation.arch, inp)
    model = build_model(arch, data.input_shape, inp.n_classes, params.isolation.width)
    model = prepare_model(model, dev, data.is_image)
    history = flooding_losses(model, data, params, ctx)
    return per_sample_loss(predict(model, data).logits, inp.labels), history


@register_detector("abl", AblParams, "ABL isolation (Li et al. 2021)")
def detect(inp: DetectionInput, params: AblParams, ctx: RunContext) -> DetectionResult:
    """Score every sample by minus its loss under a briefly, flood-trained model.

    Returns
    -------
    DetectionResult
        ``scores`` (N,): ``-CE``, higher = more suspicious; ``flags``: the
        ``floor(budget * N)`` lowest losses; per-class statistic = share of
        the class flagged; ``target_classes`` = the class holding most flags
        when it holds more than half of them.
    """
    start = time.perf_counter()
    losses, history = isolation_losses(inp, params, ctx.sub(0.0, 0.95))
    scores = -losses
    flags = flag_top_fraction(scores, params.budget)
    labels = np.asarray(inp.labels, dtype=np.int64)
    flagged = np.bincount(labels[flags], minlength=inp.n_classes)
    shares = flagged / np.maximum(np.bincount(labels, minlength=inp.n_classes), 1)
    top = int(np.argmax(flagged))
    targets = [top] if flagged[top] > flags.sum() / 2 else []
    ctx.report("isolation", 1.0)
    return DetectionResult(
        scores=scores,
        flags=flags,
        classes=class_summaries(labels, flags, inp.n_classes, shares, set(targets)),
        target_classes=targets,
        info={
            "threshold": {"rule": "budget", "fraction": params.budget},
            "final_batch_loss": history[-1] if history else None,
            "seconds": {"isolation": time.perf_counter() - start},
        },
    )
