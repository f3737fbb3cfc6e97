"""Rank fusion of several detectors: the ``ensemble`` detector.

Each member detector runs through the registry on the same input and the same
run context, so members that inspect a base model share one through
``ctx.models``. Their dense scores are turned into normalised ranks
(``rank / N`` in (0, 1], ties averaged) so that scales do not matter, and fused
by the mean (agreement) or the max (any member). Flags: samples flagged by at
least ``min_votes`` members (default: a majority), or the top ``budget``
fraction of the fused score. ``info["members"]`` reports what each member
contributed; ``ctx.trace("ensemble_member", ...)`` hands each member's scores
and flags to a caller that wants them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy.stats import rankdata

from detection.defenses.common import BoolArray, FloatArray, IntArray, require_reserve
from detection.registry import DETECTORS, register_detector, requires_clean_reserve
from detection.thresholds import BudgetParams, flag_top_fraction
from detection.types import DetectionInput, DetectionResult, RunContext, class_summaries

NAME = "ensemble"


class EnsembleParams(BudgetParams):
    """Params of the ``ensemble`` detector (``budget`` is used by ``flag_rule='budget'``)."""

    detectors: list[str] = Field(
        ["ss", "ac", "spectre"], min_length=1, description="Member detectors, by name."
    )
    detector_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Params of each member; stored fully resolved."
    )
    fusion: Literal["mean", "max"] = Field(
        "mean", description="mean: average normalised rank; max: the highest of them."
    )
    flag_rule: Literal["vote", "budget"] = Field(
        "vote", description="vote: flagged by at least min_votes members; budget: top budget."
    )
    min_votes: int | None = Field(None, ge=1, description="None: a majority of the members.")

    @model_validator(mode="before")
    @classmethod
    def _resolve_members(cls, data: Any) -> Any:
        """Validate every member's params with its own model and store them resolved."""
        if not isinstance(data, dict):
            return data
        names = data.get("detectors", cls.model_fields["detectors"].default)
        raw = data.get("detector_params") or {}
        if not isinstance(names, list) or not isinstance(raw, dict):
            return data  # the field types report it
        unknown = [n for n in [*names, *raw] if n == NAME or n not in DETECTORS]
        if unknown:
            known = ", ".join(n for n in DETECTORS.names() if n != NAME)
            raise ValueError(f"unknown or nested member detector(s) {unknown}; known: {known}")
        if set(raw) - set(names):
            raise ValueError(f"detector_params for non-members: {sorted(set(raw) - set(names))}")
        resolved = {n: DETECTORS.get(n).parse(raw.get(n)).model_dump() for n in names}
        return {**data, "detector_params": resolved}

    @model_validator(mode="after")
    def _votes_fit(self) -> EnsembleParams:
        if len(set(self.detectors)) != len(self.detectors):
            raise ValueError("detectors must not repeat")
        if self.min_votes is not None and self.min_votes > len(self.detectors):
            raise ValueError("min_votes exceeds the number of detectors")
        return self

    def requires_clean_reserve(self) -> bool:
        return any(
            requires_clean_reserve(DETECTORS.get(n).parse(self.detector_params.get(n)))
            for n in self.detectors
        )


def normalised_ranks(scores: FloatArray) -> FloatArray:
    """``rank / N`` with ties averaged, in (0, 1]; higher = more suspicious."""
    out: FloatArray = rankdata(scores, method="average") / max(1, scores.size)
    return out


def fuse(ranks: FloatArray, fusion: str) -> FloatArray:
    """Fuse member ranks (M, N) into one score per sample (N,)."""
    out: FloatArray = ranks.max(axis=0) if fusion == "max" else ranks.mean(axis=0)
    return out


@register_detector(NAME, EnsembleParams, "Rank-fusion ensemble of detectors")
def detect(inp: DetectionInput, params: EnsembleParams, ctx: RunContext) -> DetectionResult:
    """Run every member detector and fuse their scores by normalised rank.

    Returns
    -------
    DetectionResult
        ``scores`` (N,): fused normalised rank in (0, 1], higher = more
        suspicious; flags by vote or budget; per-class statistic = share of
        the class flagged; ``target_classes`` = classes a majority of the
        members name; ``info["members"]``: each member's flags, targets,
        seconds and contribution.
    """
    if params.requires_clean_reserve():
        require_reserve(inp, NAME, "a member (" + ", ".join(_reserve_members(params)) + ")")
    runs = []
    for i, name in enumerate(params.detectors):
        ctx.check_cancel()
        sub = ctx.sub(i / len(params.detectors), (i + 1) / len(params.detectors), f"{name}: ")
        start = time.perf_counter()
        result = DETECTORS.get(name).fn(inp, _member_params(name, params), sub)
        ctx.trace("ensemble_member", {"name": name, "scores": result.scores, "flags": result.flags})
        runs.append(MemberRun(name, result, time.perf_counter() - start))
    return fuse_results(inp, runs, params)


@dataclass(frozen=True)
class MemberRun:
    """One member detector's result and how long it took."""

    name: str
    result: DetectionResult
    seconds: float


def fuse_results(
    inp: DetectionInput, runs: Sequence[MemberRun], params: EnsembleParams
) -> DetectionResult:
    """Fuse results the members already produced (what :func:`detect` does after running them).

    A caller that ran the members itself (a job naming several methods) gets
    the same fused score, flags and contributions without running them again.
    """
    members, ranks = [], []
    votes = np.zeros(inp.n_samples, dtype=np.int64)
    for run in runs:
        ranks.append(normalised_ranks(run.result.scores))
        votes += run.result.flags
        members.append(_member_info(run.name, run.result, run.seconds))
    rank_matrix = np.vstack(ranks)
    scores = fuse(rank_matrix, params.fusion)
    flags = _flags(scores, votes, params)
    _add_contributions(members, rank_matrix, scores, flags)
    return _result(inp, scores, flags, members, params)


def _reserve_members(params: EnsembleParams) -> list[str]:
    return [n for n in params.detectors if requires_clean_reserve(_member_params(n, params))]


def _member_params(name: str, params: EnsembleParams) -> Any:
    raw = dict(params.detector_params.get(name, {}))
    if params.device is not None and raw.get("device") is None:
        raw["device"] = params.device
    return DETECTORS.get(name).parse(raw)


def _flags(scores: FloatArray, votes: IntArray, params: EnsembleParams) -> BoolArray:
    if params.flag_rule == "budget":
        return flag_top_fraction(scores, params.budget)
    need = params.min_votes or len(params.detectors) // 2 + 1
    out: BoolArray = votes >= need
    return out


def _member_info(name: str, result: DetectionResult, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "n_flagged": result.n_flagged,
        "target_classes": [int(c) for c in result.target_classes],
        "threshold": result.info.get("threshold"),
        "seconds": seconds,
    }


def _add_contributions(
    members: list[dict[str, Any]], ranks: FloatArray, scores: FloatArray, flags: BoolArray
) -> None:
    """Per member: its share of the fused score over the flagged samples, and its agreement.

    ``share``: mean over flagged samples of ``rank_m / sum of ranks`` (1/M when
    all agree); ``agreement``: Spearman correlation of its ranks with the fused score.
    """
    sel = flags if flags.any() else np.ones_like(flags)
    totals = ranks[:, sel].sum(axis=0)
    fused_ranks = normalised_ranks(scores)
    for m, row in zip(members, ranks, strict=True):
        m["share"] = float((row[sel] / np.maximum(totals, 1e-12)).mean())
        m["agreement"] = float(np.corrcoef(row, fused_ranks)[0, 1]) if row.std() > 0 else 0.0


def _result(
    inp: DetectionInput,
    scores: FloatArray,
    flags: BoolArray,
    members: list[dict[str, Any]],
    params: EnsembleParams,
) -> DetectionResult:
    labels = np.asarray(inp.labels, dtype=np.int64)
    named = np.bincount([c for m in members for c in m["target_classes"]], minlength=inp.n_classes)
    targets = [int(c) for c in np.flatnonzero(named > len(members) / 2)]
    shares = np.bincount(labels[flags], minlength=inp.n_classes) / np.maximum(
        np.bincount(labels, minlength=inp.n_classes), 1
    )
    threshold: dict[str, Any] = {"rule": params.flag_rule}
    if params.flag_rule == "budget":
        threshold["fraction"] = params.budget
    else:
        threshold["min_votes"] = params.min_votes or len(members) // 2 + 1
    return DetectionResult(
        scores=scores,
        flags=flags,
        classes=class_summaries(labels, flags, inp.n_classes, shares, set(targets)),
        target_classes=targets,
        info={"threshold": threshold, "fusion": params.fusion, "members": members},
    )
