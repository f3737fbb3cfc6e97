"""Confusion Training (CT): the proactive backdoor-poison detector.

Reference: X. Qi, T. Xie, J. T. Wang, T. Wu, S. Mahloujifar, P. Mittal,
"Towards A Proactive ML Approach for Detecting Backdoor Poison Samples",
USENIX Security 2023 (arXiv:2205.13616).

A backdoor correlation (trigger → target) is simpler and stronger than the
benign ones. Training on the inspected set while also training on clean
samples with deliberately wrong ("confusion") labels destroys the benign
correlations; the confused model keeps fitting the poisons only. Six rounds of
pretrain → confusion-train → distil shrink the inspected set towards the
poisons; a per-class 2-D PCA likelihood-ratio test on the last confused
model's features decides which isolated samples to flag (``flag_rule="paper"``).

The short presets add what a short schedule needs to stay robust (see
:mod:`detection.defenses.ct_params`): pretraining until the set is fitted,
confusion until the reserve is scrambled, a likelihood-ratio check after every
round that guards distillation, a dense score built from every round, and flags
calibrated on known-clean canaries (``flag_rule="clean_fpr"``).

With a ``RunContext.scratch_dir`` the run checkpoints after every round and
resumes from the last finished round of an identical run. ``RunContext.trace``
receives each round's distilled set and losses (``"ct.round"`` events).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from detection.base_model import load_data
from detection.datasets import split_reserve
from detection.defenses.ct_evidence import (
    Evidence,
    RoundCheck,
    canary_flags,
    class_view_score,
    persistent_classes,
    rank01,
    rounds_score,
)
from detection.defenses.ct_identify import (
    LikelihoodRatios,
    ct_scores,
    likelihood_ratio_test,
    stratified_reserve,
)
from detection.defenses.ct_params import CTParams
from detection.defenses.ct_rounds import (
    Reserve,
    RoundState,
    Run,
    confuse_guarded,
    cpu_state,
    keep_previous,
    next_distilled,
    pretrain,
    pretrain_set,
    round_record,
)
from detection.defenses.ct_schedule import calibration_size, reserve_size
from detection.features import per_sample_loss, predict
from detection.models import Classifier
from detection.registry import register_detector
from detection.training import (
    TensorData,
    resolve_device,
    seed_everything,
    train_classifier,
)
from detection.types import (
    DetectionError,
    DetectionInput,
    DetectionResult,
    RunContext,
    class_summaries,
)

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


# --------------------------------------------------------------------------- checkpoint


class _Checkpoint:
    """One file per run fingerprint in ``scratch_dir``; plain tensors and lists only."""

    def __init__(self, ctx: RunContext, fingerprint: str) -> None:
        self.path = None
        if ctx.scratch_dir is not None:
            self.path = ctx.scratch_dir / f"ct_{fingerprint[:24]}.pt"
        self.fingerprint = fingerprint

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        return state if state.get("fingerprint") == self.fingerprint else None

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        tmp.replace(self.path)


def _fingerprint(inp: DetectionInput, params: CTParams, seed: int) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(params.model_dump_json(exclude={"device"}).encode())
    digest.update(f"seed={seed};n_classes={inp.n_classes}".encode())
    for arr in (inp.x, inp.labels, inp.clean_x, inp.clean_labels):
        if arr is not None:
            digest.update(str(arr.shape).encode())
            digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def _save(ckpt: _Checkpoint, plan: _Plan, state: RoundState) -> None:
    rounds = {
        "next_round": state.next_round,
        "distilled": torch.from_numpy(state.distilled),
        "pretrained": state.pretrained,
        "confused": state.confused,
        "evidence": [torch.from_numpy(e) for e in state.evidence.rounds],
        "standardised": [torch.from_numpy(e) for e in state.evidence.standardised],
        "records": state.records,
        "last_check": None if state.last_check is None else vars(state.last_check),
    }
    ckpt.save({"head": plan.head(), "rounds": rounds})


def _restore(saved: dict[str, Any] | None, n: int) -> RoundState:
    rounds = None if saved is None else saved.get("rounds")
    if rounds is None:
        return RoundState(distilled=np.arange(n, dtype=np.int64))
    check = rounds["last_check"]
    return RoundState(
        next_round=int(rounds["next_round"]),
        distilled=rounds["distilled"].numpy().astype(np.int64),
        pretrained=rounds["pretrained"],
        confused=rounds["confused"],
        evidence=Evidence(
            [e.numpy() for e in rounds["evidence"]],
            [e.numpy() for e in rounds.get("standardised", [])],
        ),
        records=list(rounds["records"]),
        last_check=None if check is None else RoundCheck(**check),
    )


# --------------------------------------------------------------------------- reserve


@dataclass
class _Plan:
    """Where the reserve R and the canaries come from, and the base predictions on R.

    ``reserve_idx`` indexes the working set (drawn reserve) or the given
    reserve; ``canaries`` always index the working set.
    """

    given: TensorData | None
    reserve_idx: IntArray | None
    canaries: IntArray
    info: dict[str, Any]
    base_preds: Tensor | None = None
    reserve: Reserve | None = None

    def head(self) -> dict[str, Any]:
        return {
            "reserve_idx": None if self.reserve_idx is None else torch.from_numpy(self.reserve_idx),
            "canaries": torch.from_numpy(self.canaries),
            "info": self.info,
            "base_preds": self.base_preds,
        }

    def ready(self) -> bool:
        return self.reserve is not None


def _working_set(
    inp: DetectionInput, params: CTParams, device: torch.device, seed: int
) -> tuple[TensorData, TensorData | None, IntArray]:
    """The inspected set, plus the given reserve's canaries appended; the rest of the reserve."""
    data, given = load_data(inp, device)
    none = np.zeros(0, dtype=np.int64)
    if given is None or not params.uses_canaries:
        return data, given, none
    labels = given.y.cpu().numpy()
    rest, canary = split_reserve(labels, calibration_size(given.n, params.calibration_size), seed)
    can = given.subset(torch.from_numpy(canary).to(device))
    work = TensorData(torch.cat([data.x, can.x]), torch.cat([data.y, can.y]), data.mean, data.std)
    canaries = np.arange(data.n, work.n, dtype=np.int64)
    return work, given.subset(torch.from_numpy(rest).to(device)), canaries


def _draw(run: Run, model: Classifier) -> tuple[IntArray, IntArray, dict[str, Any]]:
    """Reserve and canaries drawn from the working set's central loss band."""
    out = predict(model, run.data)
    losses = per_sample_loss(out.logits, run.labels)
    return _draw_from(run, losses, run.params.reserve_band)


def _draw_from(
    run: Run, losses: FloatArray, band: tuple[float, float], with_canaries: bool = True
) -> tuple[IntArray, IntArray, dict[str, Any]]:
    p = run.params
    n = run.data.n
    size = p.clean_reserve_size or reserve_size(n, run.inp.n_classes, p.clean_reserve_max_fraction)
    size = min(size, int(p.clean_reserve_max_fraction * n))
    uses = with_canaries and p.uses_canaries
    n_cal = calibration_size(size, p.calibration_size) if uses else 0
    rng = np.random.default_rng(run.ctx.seed)
    drawn, outside = stratified_reserve(
        run.labels, losses, size + n_cal, run.inp.n_classes, rng, band
    )
    canaries = np.zeros(0, dtype=np.int64)
    if n_cal:
        rest, cal = split_reserve(run.labels[drawn], n_cal, run.ctx.seed)
        drawn, canaries = drawn[rest], drawn[cal]
    info = {
        "source": "drawn",
        "size": int(drawn.size),
        "canaries": int(canaries.size),
        "loss_band": list(band),
        "outside_band": outside,
        "note": "drawn from the inspected set (central loss band of a model fitted to it); "
        "these samples are still scored, and canaries drawn this way may hold a few poisons, "
        "which only makes the calibrated threshold stricter",
    }
    return drawn, canaries, info


def _probe(run: Run) -> Classifier:
    """The paper's short probe training (base_source "separate" with a drawn reserve)."""
    p = run.params
    model = run.new_model()
    cfg = replace(p.base_model_params(run.arch).train_config(), epochs=p.reserve_probe_epochs)
    train_classifier(model, run.data, cfg, run.ctx.sub(0.0, 0.05), stage="clean_reserve: probe")
    return model


def _complete(run: Run, plan: _Plan, fitted: Classifier | None) -> None:
    """Fill in the reserve (drawn from ``fitted`` if needed) and the base predictions."""
    if plan.given is None and plan.reserve_idx is None:
        assert fitted is not None
        plan.reserve_idx, plan.canaries, plan.info = _draw(run, fitted)
    data = plan.given
    if plan.reserve_idx is not None:
        data = run.data.subset(torch.from_numpy(plan.reserve_idx).to(run.device))
    assert data is not None
    if plan.base_preds is None:
        plan.base_preds = _base_predictions(run, data, fitted)
    plan.reserve = Reserve(data, plan.base_preds)


def _redraw(run: Run, plan: _Plan, confused_losses: FloatArray) -> None:
    """Draw a drawn reserve again from round 0's confused losses (upper band).

    A reserve drawn before any confusion can hold poisons when the fitted
    model fits everything (an easy dataset, a high poison rate); trained
    with wrong labels, a handful of them unlearns the backdoor for every
    later round. Round 0's confused model still fits the poisons, so they
    sit in its low loss tail, away from the band drawn here.
    """
    band = run.params.reserve_redraw_band
    p = run.params
    own_labels = p.confusion_labels == "random" or p.base_source == "labels"
    if band is None or not own_labels or plan.info.get("source") != "drawn":
        return
    if plan.info.get("redrawn"):
        return
    first = plan.info
    plan.canaries = _redraw_canaries(run, confused_losses, plan.canaries.size)
    losses = confused_losses.copy()
    losses[plan.canaries] = -np.inf  # never both a canary and trained on
    reserve, _, _ = _draw_from(run, losses, band, with_canaries=False)
    plan.reserve_idx = reserve
    plan.info = {
        **first,
        "size": int(reserve.size),
        "redrawn": {
            "after_round": 0,
            "reserve_confused_loss_band": list(band),
            "canary_confused_loss_band": list(run.params.canary_redraw_band),
        },
        "note": "drawn from the inspected set (a band of a fitted model's losses), then again "
        "after round 0 from bands of the confused model's losses above its low tail, where "
        "poisons sit; these samples are still scored",
    }
    plan.base_preds = None
    _complete(run, plan, None)


def _redraw_canaries(run: Run, confused_losses: FloatArray, count: int) -> IntArray:
    """Canaries from above round 0's confused low tail: clean, and little biased."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(run.ctx.seed + 1)
    band = run.params.canary_redraw_band
    drawn, _ = stratified_reserve(run.labels, confused_losses, count, run.inp.n_classes, rng, band)
    return drawn


def _base_predictions(run: Run, reserve: TensorData, fitted: Classifier | None) -> Tensor:
    """What the confusion labels shift: the reserve's labels or a model's predictions."""
    source = run.params.base_source
    if source == "labels" or run.params.confusion_labels == "random":
        return reserve.y.cpu()
    base = fitted if source == "round0" else _base_model(run)
    assert base is not None
    return torch.from_numpy(predict(base, reserve).predictions)


def _base_model(run: Run) -> Classifier:
    """The paper's base model B: the architecture trained on all data, augmented."""
    start = time.perf_counter()
    model = run.new_model()
    cfg = run.params.base_model_params(run.arch).train_config()
    train_classifier(model, run.data, cfg, run.ctx.sub(0.05, 0.15), stage="base_model")
    run.timed("base_model", start)
    return model


def _plan(
    run: Run, given: TensorData | None, canaries: IntArray, saved: dict[str, Any] | None
) -> _Plan:
    if saved is not None:
        head = saved["head"]
        idx = head["reserve_idx"]
        plan = _Plan(
            given,
            None if idx is None else idx.numpy().astype(np.int64),
            head["canaries"].numpy().astype(np.int64),
            head["info"],
            head["base_preds"],
        )
        if plan.base_preds is not None:
            _complete(run, plan, None)
        return plan
    info = {"source": "given", "size": 0 if given is None else given.n, "canaries": canaries.size}
    plan = _Plan(given, None, canaries, info)
    source = "labels" if run.params.confusion_labels == "random" else run.params.base_source
    if source == "separate" or (source == "labels" and given is not None):
        start = time.perf_counter()
        _complete(run, plan, _probe(run) if given is None else None)
        run.timed("clean_reserve", start)
    return plan


# --------------------------------------------------------------------------- rounds


def _round(run: Run, plan: _Plan, state: RoundState, r: int) -> None:
    """Pretrain → confusion-train (guarded) → distil, for round ``r``."""
    p = run.params
    last = r == p.n_rounds - 1
    start = time.perf_counter()
    model = run.new_model(state.pretrained)
    shifted = r >= p.shifted_reserve_from
    monitor = pretrain(run, model, pretrain_set(run, state.distilled, plan.reserve, shifted), r)
    state.pretrained = cpu_state(model)
    if not plan.ready():
        _complete(run, plan, model)
    assert plan.reserve is not None
    run.timed(f"round_{r}_pretrain", start)
    run.ctx.check_cancel()
    conf_start = time.perf_counter()
    subset = run.data.subset(torch.from_numpy(state.distilled).to(run.device))
    model, stats, verdict, notes = confuse_guarded(run, state, subset, plan.reserve, r)
    run.timed(f"round_{r}_confusion", conf_start)
    record = round_record(r, state, monitor, stats, verdict, notes, time.perf_counter() - start)
    if r == 0:
        _redraw(run, plan, verdict.losses[: run.data.n])
    if not notes["collapsed"]:
        state.evidence.add(verdict.losses, run.labels)
        state.last_check = verdict.check
    if last:
        state.distilled = np.flatnonzero(verdict.preds == run.labels).astype(np.int64)
        state.confused = cpu_state(model)
    elif notes["collapsed"]:
        state.distilled = keep_previous(state)
    else:
        state.distilled = next_distilled(run, state, verdict, r)
    record["kept"] = int(state.distilled.size)
    state.records.append(record)
    state.next_round = r + 1
    run.ctx.trace(
        "ct.round",
        {
            **record,
            "distilled": state.distilled,
            "losses": verdict.losses,
            "n_inspected": run.n_inspected,
        },
    )


def _round_marks(params: CTParams, n: int) -> list[float]:
    """Cumulative progress fractions at the end of each round (rough sample-passes)."""
    sizes = [float(n)] + [r * n for r in params.ratios]
    passes = [params.pretrain_epochs[r] * sizes[r] + 30.0 * params.batch_size for r in range(6)]
    passes = [
        max(x, 1.0) + params.confusion_iters[r] * params.batch_size for r, x in enumerate(passes)
    ]
    marks = 0.15 + 0.83 * np.cumsum(passes) / sum(passes)
    return [0.15, *(float(m) for m in marks)]


# --------------------------------------------------------------------------- identify


def _identify(run: Run, state: RoundState) -> tuple[LikelihoodRatios, FloatArray]:
    """The paper's LR test on the last confused model, and the dense score."""
    p = run.params
    assert state.confused is not None
    out = predict(run.new_model(state.confused), run.data, with_features=True)
    assert out.features is not None
    labels = run.labels
    test = likelihood_ratio_test(
        out.features.astype(np.float64),
        labels,
        out.predictions,
        run.inp.n_classes,
        threshold=p.lr_threshold,
        max_class_threshold=p.max_class_threshold,
        eps=p.cov_eps,
    )
    if p.score == "final":
        confidence = out.probabilities()[np.arange(labels.size), labels].astype(np.float64)
        return test, ct_scores(confidence, labels, test)
    scores = rounds_score(state.evidence, p.score_from_round)
    if _two_views(p):
        class_view = class_view_score(state.evidence, p.score_from_round)
        scores = np.maximum(rank01(scores), rank01(class_view))
    if p.flag_rule == "paper":
        scores = scores + 2.0 * test.flags
    return test, scores


def _resolve_arch(params: CTParams, inp: DetectionInput) -> str:
    arch = params.arch
    if arch == "auto":
        return "convnet" if inp.is_image else "mlp"
    if arch != "mlp" and not inp.is_image:
        raise DetectionError(f"ct: arch {arch!r} needs images; use arch 'mlp' or 'auto'")
    return arch


def _check_input(inp: DetectionInput) -> None:
    if inp.n_samples < 4 * inp.n_classes:
        raise DetectionError(f"ct: need at least {4 * inp.n_classes} samples, got {inp.n_samples}")
    if inp.is_image and min(inp.x.shape[1:3]) < 8:
        raise DetectionError(f"ct: images must be at least 8x8, got {inp.x.shape[1:3]}")


@register_detector("ct", CTParams, "Confusion Training (Qi et al. 2023)")
def detect(inp: DetectionInput, params: CTParams, ctx: RunContext) -> DetectionResult:
    """Confusion Training: distil the poison samples with confused models.

    Parameters
    ----------
    inp : DetectionInput
        Images uint8 (N, H, W, C) with H, W >= 8, or float features (N, D).
        ``clean_x``/``clean_labels`` become the clean reserve (part of it the
        canaries of ``flag_rule="clean_fpr"``); without them the reserve is a
        class-stratified sample of the inspected set (``info["clean_reserve"]``).
    params : CTParams
    ctx : RunContext
        ``scratch_dir`` enables per-round checkpoints and resumption.

    Returns
    -------
    DetectionResult
        ``scores`` (N,), higher = more suspicious: with ``score="rounds"`` the
        mean fit percentile under the confused models of rounds 1..5 (plus 2
        for the paper rule's flags), with ``score="final"``
        :func:`detection.defenses.ct_identify.ct_scores`; ``flags`` by
        ``flag_rule``; ``info["rounds"]`` what each round saw.
    """
    _check_input(inp)
    total_start = time.perf_counter()
    device = resolve_device(params.device or ctx.device)
    seed_everything(ctx.seed)
    work, given, canaries = _working_set(inp, params, device, ctx.seed)
    run = Run(inp, params, ctx, device, _resolve_arch(params, inp), work, inp.n_samples)
    ckpt = _Checkpoint(ctx, _fingerprint(inp, params, ctx.seed))
    saved = ckpt.load()
    plan = _plan(run, given, canaries, saved)
    state = _restore(saved, work.n)
    resumed_from = f"round_{state.next_round - 1}" if state.next_round else None
    marks = _round_marks(params, work.n)
    while state.next_round < params.n_rounds:
        r = state.next_round
        ctx.check_cancel()
        _round(replace(run, ctx=ctx.sub(marks[r], marks[r + 1])), plan, state, r)
        _save(ckpt, plan, state)
    ctx.report("identify", marks[-1])
    start = time.perf_counter()
    test, scores = _identify(run, state)
    result = _result(run, plan, state, test, scores)
    run.timed("identify", start)
    run.timings["total"] = round(time.perf_counter() - total_start, 3)
    result.info["timings"] = dict(run.timings)
    result.info["resumed_from"] = resumed_from
    ctx.report("done", 1.0)
    return result


def _two_views(p: CTParams) -> bool:
    return p.class_view and p.score == "rounds"


def _calibrated_flags(
    run: Run, plan: _Plan, state: RoundState, scores: FloatArray, lr_classes: list[int]
) -> tuple[BoolArray, list[int], dict[str, Any]]:
    """Canary-calibrated flags of the dense score, or with ``class_view`` the union
    of the percentile view's and the class view's flags, each view at half the
    target FPR (a union bound keeps the clean exceedance rate at the target).
    """
    p, labels = run.params, run.labels
    views = {"percentile": scores}
    if _two_views(p):
        views["percentile"] = rounds_score(state.evidence, p.score_from_round)
        views["class"] = class_view_score(state.evidence, p.score_from_round)
    fpr = p.target_fpr / len(views)
    flags = np.zeros(labels.size, dtype=bool)
    classes: set[int] = set()
    infos: dict[str, dict[str, Any]] = {}
    for name, view in views.items():
        cal = canary_flags(view, labels, plan.canaries, run.inp.n_classes, fpr, lr_classes)
        flags |= cal.flags
        classes |= set(cal.classes)
        infos[name] = {**cal.info, "classes": cal.classes}
    info = {**infos["percentile"], "target_fpr": p.target_fpr, "views": infos}
    return flags, sorted(classes), info


def _result(
    run: Run, plan: _Plan, state: RoundState, test: LikelihoodRatios, scores: FloatArray
) -> DetectionResult:
    p, n, n_classes = run.params, run.n_inspected, run.inp.n_classes
    labels = run.labels
    calibration: dict[str, Any] | None = None
    if p.flag_rule == "clean_fpr" and plan.canaries.size:
        persistent = persistent_classes(state.records, p.score_from_round)
        lr_classes = list(test.flagged_classes) if persistent is None else persistent
        flags, targets, calibration = _calibrated_flags(run, plan, state, scores, lr_classes)
        calibration["final_test_classes"] = [int(c) for c in test.flagged_classes]
        if _two_views(p):
            scores = scores + flags  # flags first: the union is not a cut of either view
    else:
        flags, targets = test.flags, list(test.flagged_classes)
    info = {
        "preset": p.preset,
        "arch": run.arch,
        "device": str(run.device),
        "flag_rule": p.flag_rule if calibration is not None else "paper",
        "rounds": state.records,
        "distilled_sizes": [rec["kept"] for rec in state.records],
        "likelihood_ratios": [float(v) for v in test.ratios],
        "isolated_per_class": np.bincount(
            labels[:n][test.isolated[:n]], minlength=n_classes
        ).tolist(),
        "suspected_target_classes": targets,
        "estimated_poison_count": int(flags[:n].sum()),
        "clean_reserve": {**plan.info, "size": plan.info.get("size", 0)},
        "reserve_drawn": plan.info.get("source") == "drawn",
        "calibration": calibration,
    }
    ratios = test.ratios
    classes = class_summaries(labels[:n], flags[:n], n_classes, ratios, set(targets))
    return DetectionResult(scores[:n], flags[:n], classes, targets, info)
