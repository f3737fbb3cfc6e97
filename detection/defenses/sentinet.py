"""SentiNet: the ``sentinet`` detector.

Chou, Tramèr, Pellegrino, "SentiNet: Detecting Localized Universal Attacks
Against Deep Learning Systems", IEEE S&P Workshops 2020.

A localized trigger is the part of an image the model looks at, and it keeps
working when moved: Grad-CAM of the predicted class finds the salient region
(the top ``region_share`` of pixels), which is pasted onto clean carrier
images. The *fooled* fraction is how often the carriers then take the
sample's predicted class. As a control, an inert noise patch in the same
region gives the model's average confidence on the carriers. Clean samples lie
under a boundary in the (confidence, fooled) plane fitted on the clean
reserve (a quadratic through the per-bin ``boundary_quantile`` of fooled);
score = the signed height of a sample above that boundary.

No oracle trigger locations are used. Every paste of a chunk of samples runs
as one batch; Grad-CAM takes gradients with ``torch.autograd.grad`` so the
shared base model's parameters are never touched.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

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
from detection.training import TensorData, normalise
from detection.types import (
    DetectionError,
    DetectionInput,
    DetectionResult,
    RunContext,
)


class SentinetParams(ThresholdParams):
    """Params of the ``sentinet`` detector (always needs a clean reserve)."""

    region_share: float = Field(0.15, gt=0.0, lt=1.0, description="Grad-CAM top pixel share.")
    n_carriers: int = Field(16, ge=2, le=256, description="Clean carriers per sample.")
    n_bins: int = Field(10, ge=3, le=100, description="Confidence bins of the boundary fit.")
    boundary_quantile: float = Field(
        0.95, gt=0.5, le=1.0, description="Per-bin quantile of the reserve's fooled fraction."
    )
    batch_size: int = Field(2048, ge=64, le=65536, description="Pasted images per forward.")
    base_model: BaseModelParams = BaseModelParams()

    def requires_clean_reserve(self) -> bool:
        return True


def _split_body(model: Classifier) -> tuple[list[nn.Module], list[nn.Module]]:
    """Body layers before and from the global pooling (where Grad-CAM's map lives)."""
    layers = list(model.body.children()) if isinstance(model.body, nn.Sequential) else []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.AdaptiveAvgPool2d):
            return layers[:i], layers[i:]
    raise DetectionError("sentinet: the model has no convolutional map for Grad-CAM")


def grad_cam_masks(model: Classifier, xb: Tensor, share: float) -> tuple[Tensor, Tensor]:
    """Top-``share`` Grad-CAM pixel masks (B, 1, H, W) of the predicted class, and predictions."""
    head, tail = _split_body(model)
    with torch.enable_grad():
        a = nn.Sequential(*head)(xb).detach().requires_grad_(True)
        logits = model.head(nn.Sequential(*tail)(a))
        preds = logits.argmax(dim=1)
        (grad,) = torch.autograd.grad(logits.gather(1, preds[:, None]).sum(), a)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
    cam = nn.functional.interpolate(cam.detach(), size=xb.shape[2:], mode="bilinear")
    flat = cam.flatten(1) + 1e-6 * torch.rand_like(cam.flatten(1))  # break ties at zero
    cut = torch.quantile(flat, 1.0 - share, dim=1, keepdim=True)
    return (flat >= cut).float().view_as(cam), preds


@torch.no_grad()
def paste_statistics(
    model: Classifier,
    data: TensorData,
    carriers: Tensor,
    params: SentinetParams,
    gen: torch.Generator,
) -> tuple[FloatArray, FloatArray]:
    """Fooled fraction and inert-patch confidence of every sample, each (N,)."""
    model.eval()
    k = carriers.shape[0]
    per_chunk = max(1, params.batch_size // (2 * k))
    c = carriers.float().div(255.0)
    fooled, conf = [], []
    for start in range(0, data.n, per_chunk):
        x = data.x[start : start + per_chunk].float().div_(255.0)
        masks, preds = grad_cam_masks(model, normalise(x, data.mean, data.std), params.region_share)
        m = masks.repeat_interleave(k, dim=0)
        keep = c.repeat(x.shape[0], 1, 1, 1) * (1.0 - m)
        noise = torch.rand(keep.shape, generator=gen).to(keep.device)
        pasted = torch.cat([keep + x.repeat_interleave(k, dim=0) * m, keep + noise * m])
        probs = torch.softmax(model(normalise(pasted, data.mean, data.std)).float(), dim=1)
        n = x.shape[0] * k
        hit = probs[:n].argmax(dim=1) == preds.repeat_interleave(k)
        fooled.append(hit.float().view(-1, k).mean(dim=1).cpu())
        conf.append(probs[n:].max(dim=1).values.view(-1, k).mean(dim=1).cpu())
    return torch.cat(fooled).double().numpy(), torch.cat(conf).double().numpy()


def fit_boundary(conf: FloatArray, fooled: FloatArray, n_bins: int, quantile: float) -> FloatArray:
    """Quadratic coefficients through the per-bin ``quantile`` of fooled over confidence bins."""
    edges = np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
    bins = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    xs, ys = [], []
    for b in range(n_bins):
        sel = bins == b
        if sel.sum() >= 2:
            xs.append(float(conf[sel].mean()))
            ys.append(float(np.quantile(fooled[sel], quantile)))
    deg = min(2, len(xs) - 1)
    if deg < 0:
        return np.array([float(np.quantile(fooled, quantile))])
    out: FloatArray = np.polyfit(xs, ys, deg)
    return out


@register_detector("sentinet", SentinetParams, "SentiNet (Chou et al. 2020)")
def detect(inp: DetectionInput, params: SentinetParams, ctx: RunContext) -> DetectionResult:
    """Score every image by how far its salient region's fooling rate exceeds the clean boundary.

    Returns
    -------
    DetectionResult
        ``scores`` (N,): fooled fraction minus the boundary at the sample's
        inert confidence, higher = more suspicious; flags by the reserve's
        quantile at ``target_fpr`` (or the budget); per-class statistic =
        mean fooled fraction; no target classes.
    """
    if not inp.is_image:
        raise DetectionError("sentinet: Grad-CAM regions need images (N x H x W x C), not features")
    require_reserve(inp, "sentinet", "SentiNet")
    fitted = fitted_base_model(inp, params.base_model, ctx.sub(0.0, 0.7), params.device)
    assert fitted.clean is not None
    start = time.perf_counter()
    ctx.report("transplant", 0.7)
    gen = torch.Generator()
    gen.manual_seed(ctx.seed)
    pick = torch.randperm(fitted.clean.n, generator=gen)[: params.n_carriers]
    carriers = fitted.clean.x[pick.to(fitted.clean.device)]
    fooled, conf = paste_statistics(fitted.model, fitted.data, carriers, params, gen)
    ctx.check_cancel()
    r_fooled, r_conf = paste_statistics(fitted.model, fitted.clean, carriers, params, gen)
    coef = fit_boundary(r_conf, r_fooled, params.n_bins, params.boundary_quantile)
    scores = fooled - np.polyval(coef, conf)
    reserve = r_fooled - np.polyval(coef, r_conf)
    info = {"boundary": coef.tolist(), "seconds": {"transplant": time.perf_counter() - start}}
    return thresholded_result(inp, scores, params, reserve, info, class_values=fooled)
