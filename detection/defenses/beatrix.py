"""Beatrix: the ``beatrix`` detector.

Ma, Wang, Sun, Sun, Chen, Wang, Xiang, Liu, Wang, Wen, Nepal, "Beatrix
Resurrections: Robust Backdoor Detection via Gram Matrices", NDSS 2023.

A trigger changes not only which channels of an intermediate feature map
fire but how they fire *together*. Beatrix summarises a sample's map
``F`` (channels x positions) by Gram matrices of orders ``p = 1..P``,
``G_p = (F^p F^pT)^(1/p)`` (element-wise powers), and measures how far the
upper-triangular entries lie from those of clean samples of the same
*predicted* class: the clean reserve's median and MAD per entry give a robust
z per entry; ours averages ``log(1 + z)`` over entries (a plain mean is ruled
by the few entries whose clean MAD is ~0) and sums over orders. The threshold is
the clean reserve's own deviation quantile (95% by default).

The map is the last one before the body's global pooling (for a feature-
vector MLP, the penultimate vector as a one-position map). Gram features are
computed batch by batch and never stored for the whole set.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from detection.base_model import BaseModelParams
from detection.defenses.common import FloatArray, IntArray, fitted_base_model, require_reserve
from detection.features import predict
from detection.models import Classifier
from detection.registry import register_detector
from detection.thresholds import ThresholdParams, apply_threshold
from detection.training import TensorData
from detection.types import DetectionInput, DetectionResult, RunContext, class_summaries


class BeatrixParams(ThresholdParams):
    """Params of the ``beatrix`` detector (always needs a clean reserve)."""

    max_order: int = Field(5, ge=1, le=12, description="Gram orders 1..max_order.")
    max_channels: int = Field(
        128, ge=2, le=512, description="Keep the channels most active on the reserve (cost ~ C^2)."
    )
    min_class_reserve: int = Field(
        5, ge=2, description="Fewer reserve samples predicted as a class: use all the reserve."
    )
    batch_size: int = Field(256, ge=16, le=8192)
    base_model: BaseModelParams = BaseModelParams()

    def requires_clean_reserve(self) -> bool:
        return True


def feature_map(model: Classifier, xb: Tensor) -> Tensor:
    """The body's activation before its global pooling, as (B, C, positions)."""
    out = xb
    for layer in model.body.children() if isinstance(model.body, nn.Sequential) else []:
        if isinstance(layer, nn.AdaptiveAvgPool2d):
            return out.flatten(2)
        out = layer(out)
    return model.features(xb).unsqueeze(2)


def gram_features(fmap: Tensor, max_order: int) -> Tensor:
    """Upper-triangular entries of ``(F^p F^pT)^(1/p)`` for p = 1..max_order, (B, P, C(C+1)/2)."""
    fmap = fmap.float()
    rows, cols = torch.triu_indices(fmap.shape[1], fmap.shape[1], device=fmap.device)
    orders = []
    for p in range(1, max_order + 1):
        fp = fmap.pow(p)
        g = torch.bmm(fp, fp.transpose(1, 2))
        g = g.sign() * g.abs().pow(1.0 / p)
        orders.append(g[:, rows, cols])
    return torch.stack(orders, dim=1)


@torch.no_grad()
def _maps(model: Classifier, data: TensorData, batch_size: int) -> list[Tensor]:
    model.eval()
    out = []
    for start in range(0, data.n, batch_size):
        idx = torch.arange(start, min(start + batch_size, data.n), device=data.device)
        out.append(feature_map(model, data.batch(idx)).float())
    return out


def active_channels(maps: list[Tensor], max_channels: int) -> Tensor:
    """Indices of the ``max_channels`` channels with the largest mean activation."""
    means = torch.cat([m.mean(dim=2) for m in maps]).mean(dim=0)
    return torch.argsort(means, descending=True)[:max_channels].sort().values


@torch.no_grad()
def deviations(
    model: Classifier,
    data: TensorData,
    preds: IntArray,
    stats: tuple[Tensor, Tensor],
    channels: Tensor,
    params: BeatrixParams,
) -> FloatArray:
    """Sum over orders of the mean ``log(1 + robust z)`` of the Gram entries, shape (N,).

    The log keeps entries whose clean MAD is ~0 from swamping the average.

    ``stats`` holds the per-class median and scaled MAD, each (C, P, E).
    """
    med, mad = stats
    model.eval()
    out = []
    for start in range(0, data.n, params.batch_size):
        stop = min(start + params.batch_size, data.n)
        idx = torch.arange(start, stop, device=data.device)
        fmap = feature_map(model, data.batch(idx))[:, channels]
        g = gram_features(fmap, params.max_order).cpu()
        cls = torch.from_numpy(preds[start:stop])
        z = (g - med[cls]).abs() / mad[cls]
        out.append(torch.log1p(z).mean(dim=2).sum(dim=1))
    result: FloatArray = torch.cat(out).double().numpy()
    return result


def clean_stats(
    grams: Tensor, preds: IntArray, n_classes: int, min_count: int
) -> tuple[Tensor, Tensor]:
    """Per predicted class median and 1.4826 MAD of every Gram entry, each (C, P, E)."""
    pooled = _median_mad(grams)
    med = pooled[0].expand(n_classes, *pooled[0].shape).clone()
    mad = pooled[1].expand(n_classes, *pooled[1].shape).clone()
    for c in range(n_classes):
        rows = torch.from_numpy(preds == c)
        if int(rows.sum()) >= min_count:
            med[c], mad[c] = _median_mad(grams[rows])
    return med, mad


def _median_mad(g: Tensor) -> tuple[Tensor, Tensor]:
    med = g.median(dim=0).values
    mad = 1.4826 * (g - med).abs().median(dim=0).values
    floor = 1e-3 * mad.mean() + 1e-8
    return med, mad.clamp_min(float(floor))


@register_detector("beatrix", BeatrixParams, "Beatrix (Ma et al. 2023)")
def detect(inp: DetectionInput, params: BeatrixParams, ctx: RunContext) -> DetectionResult:
    """Score every sample by its Gram-matrix deviation from clean samples of its predicted class.

    Returns
    -------
    DetectionResult
        ``scores`` (N,): summed robust z of the Gram entries, higher = more
        suspicious; flags above the reserve's ``1 - target_fpr`` quantile (or
        the budget); per-class statistic = share flagged among samples
        *predicted* as the class; ``target_classes`` = predicted classes
        holding more than half of the flags.
    """
    require_reserve(inp, "beatrix", "Beatrix")
    fitted = fitted_base_model(inp, params.base_model, ctx.sub(0.0, 0.8), params.device)
    assert fitted.clean is not None
    start = time.perf_counter()
    ctx.report("gram", 0.8)
    preds = predict(fitted.model, fitted.data).predictions
    clean_preds = predict(fitted.model, fitted.clean).predictions
    maps = _maps(fitted.model, fitted.clean, params.batch_size)
    channels = active_channels(maps, params.max_channels)
    grams = torch.cat([gram_features(m[:, channels], params.max_order).cpu() for m in maps])
    stats = clean_stats(grams, clean_preds, inp.n_classes, params.min_class_reserve)
    ctx.check_cancel()
    scores = deviations(fitted.model, fitted.data, preds, stats, channels, params)
    reserve = deviations(fitted.model, fitted.clean, clean_preds, stats, channels, params)
    flags, threshold = apply_threshold(scores, params, reserve)
    return _result(inp, scores, flags, preds, threshold, time.perf_counter() - start)


def _result(
    inp: DetectionInput,
    scores: FloatArray,
    flags: np.ndarray,
    preds: IntArray,
    threshold: dict[str, object],
    seconds: float,
) -> DetectionResult:
    by_pred = np.bincount(preds[flags], minlength=inp.n_classes)
    shares = by_pred / np.maximum(np.bincount(preds, minlength=inp.n_classes), 1)
    top = int(np.argmax(by_pred))
    targets = [top] if by_pred[top] > flags.sum() / 2 else []
    labels = np.asarray(inp.labels, dtype=np.int64)
    return DetectionResult(
        scores=scores,
        flags=flags,
        classes=class_summaries(labels, flags, inp.n_classes, shares, set(targets)),
        target_classes=targets,
        info={"threshold": threshold, "seconds": {"gram": seconds}},
    )
