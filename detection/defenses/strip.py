"""STRIP: the ``strip`` detector.

Gao, Xu, Wang, Chen, Ranasinghe, Nepal, "STRIP: A Defence Against Trojan
Attacks on Deep Neural Networks", ACSAC 2019.

Superimpose each sample with random clean images (pixel-wise sum, clamped to
the valid range) and look at the entropy of the base model's softmax over
the blends. A clean image's class is destroyed by the overlay, so the
predictions scatter (high entropy); a trigger still fires through the
overlay, so a poison's blends keep predicting the target (low entropy).
Score = minus the mean entropy over ``n_perturb`` blends.

Carriers come from the clean reserve; without one, from random images of the
inspected set (poisons are a small minority there; the summary says so).
Every blend of a chunk of samples runs as one batch.
"""

from __future__ import annotations

import time

import torch
from pydantic import Field
from torch import Tensor

from detection.base_model import BaseModelParams
from detection.defenses.common import (
    FloatArray,
    fitted_base_model,
    require_reserve,
    thresholded_result,
)
from detection.models import Classifier
from detection.registry import register_detector
from detection.thresholds import ThresholdParams
from detection.training import TensorData, autocast_for, normalise
from detection.types import (
    DetectionError,
    DetectionInput,
    DetectionResult,
    RunContext,
)


class StripParams(ThresholdParams):
    """Params of the ``strip`` detector."""

    n_perturb: int = Field(
        32, ge=2, le=1000, description="Blends per sample (the paper: 100; 32 ranks as well)."
    )
    batch_size: int = Field(4096, ge=64, le=65536, description="Blends per forward pass.")
    base_model: BaseModelParams = BaseModelParams()


@torch.no_grad()
def blend_entropy(
    model: Classifier,
    data: TensorData,
    carriers: Tensor,
    n_perturb: int,
    batch_size: int,
    generator: torch.Generator,
) -> FloatArray:
    """Mean softmax entropy of each sample of ``data`` over ``n_perturb`` blends, shape (N,).

    ``carriers`` is uint8 NCHW on ``data``'s device; a blend is
    ``min(x + carrier, 1)`` in [0, 1] pixel space, then normalised like training.
    """
    model.eval()
    per_chunk = max(1, batch_size // n_perturb)
    out = []
    for start in range(0, data.n, per_chunk):
        x = data.x[start : start + per_chunk].float().div_(255.0)
        pick = torch.randint(0, carriers.shape[0], (x.shape[0] * n_perturb,), generator=generator)
        over = carriers[pick.to(carriers.device)].float().div_(255.0)
        blends = (x.repeat_interleave(n_perturb, dim=0) + over).clamp_(max=1.0)
        with autocast_for(data.device):
            logits = model(normalise(blends, data.mean, data.std)).float()
        logp = torch.log_softmax(logits, dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1)
        out.append(entropy.view(-1, n_perturb).mean(dim=1).cpu())
    result: FloatArray = torch.cat(out).double().numpy()
    return result


@register_detector("strip", StripParams, "STRIP (Gao et al. 2019)")
def detect(inp: DetectionInput, params: StripParams, ctx: RunContext) -> DetectionResult:
    """Score every image by minus its mean prediction entropy under clean overlays.

    Returns
    -------
    DetectionResult
        ``scores`` (N,): ``-mean entropy``, higher = more suspicious; flags by
        the budget or the clean reserve's own blend entropies at ``target_fpr``;
        per-class statistic = mean score of the class; no target classes.
    """
    if not inp.is_image:
        raise DetectionError("strip: superimposition needs images (N x H x W x C), not features")
    if params.threshold == "clean_fpr":
        require_reserve(inp, "strip")
    fitted = fitted_base_model(inp, params.base_model, ctx.sub(0.0, 0.8), params.device)
    start = time.perf_counter()
    ctx.report("superimpose", 0.8)
    gen = torch.Generator()
    gen.manual_seed(ctx.seed)
    carriers = fitted.data.x if fitted.clean is None else fitted.clean.x

    def score(data: TensorData) -> FloatArray:
        entropy = blend_entropy(
            fitted.model, data, carriers, params.n_perturb, params.batch_size, gen
        )
        return -entropy

    scores = score(fitted.data)
    ctx.check_cancel()
    reserve = None if fitted.clean is None else score(fitted.clean)
    info = {
        "carriers": "clean_reserve" if fitted.clean is not None else "inspected_set",
        "seconds": {"superimpose": time.perf_counter() - start},
    }
    return thresholded_result(inp, scores, params, reserve, info)
