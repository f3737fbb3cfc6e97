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
model's features decides which isolated samples to flag.

Every hyperparameter is a :class:`CTParams` field; a ``preset`` fills the ones
the caller leaves out (the paper's ``cifar10``/``gtsrb`` schedules, a GPU
``cifar10-fast``, ``tabular``, and a CPU-sized ``fast``). With a
``RunContext.scratch_dir`` the run checkpoints after the base model and every
round, and resumes from the last finished round of an identical run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from detection.base_model import load_data
from detection.defenses.ct_identify import (
    LikelihoodRatios,
    class_frequencies,
    confusion_shifts,
    ct_scores,
    distill_indices,
    likelihood_ratio_test,
    stratified_reserve,
)
from detection.defenses.ct_params import CTParams
from detection.features import per_sample_loss, predict
from detection.models import Classifier, build_model
from detection.registry import register_detector
from detection.training import (
    OptimConfig,
    TensorData,
    TrainConfig,
    index_batches,
    resolve_device,
    seed_everything,
    train_classifier,
    train_steps,
)
from detection.types import (
    DetectionError,
    DetectionInput,
    DetectionResult,
    RunContext,
    class_summaries,
)

StateDict = dict[str, Tensor]


# --------------------------------------------------------------------------- run state


@dataclass
class _Run:
    """What every stage of one CT run shares."""

    inp: DetectionInput
    params: CTParams
    ctx: RunContext
    device: torch.device
    arch: str
    data: TensorData
    ckpt: _Checkpoint
    timings: dict[str, float] = field(default_factory=dict)

    def new_model(self, state: StateDict | None = None) -> Classifier:
        model = build_model(self.arch, self.data.input_shape, self.inp.n_classes, self.params.width)
        model = model.to(self.device)
        if self.device.type == "cuda" and self.data.is_image:
            model = model.to(memory_format=torch.channels_last)
        if state is not None:
            model.load_state_dict(state)
        return model

    def timed(self, name: str, start: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


def _cpu_state(model: nn.Module) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


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


# --------------------------------------------------------------------------- stages


def _plain_config(params: CTParams, epochs: float) -> TrainConfig:
    optim = OptimConfig(
        lr=params.pretrain_lr,
        momentum=params.pretrain_momentum,
        weight_decay=params.weight_decay,
        schedule=params.pretrain_schedule,
    )
    return TrainConfig(epochs=epochs, batch_size=params.batch_size, optim=optim, augment=False)


def _losses(model: Classifier, data: TensorData) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    out = predict(model, data)
    labels = data.y.cpu().numpy()
    return per_sample_loss(out.logits, labels), out.predictions


def _draw_reserve(run: _Run, ctx: RunContext) -> tuple[NDArray[np.int64], int]:
    """Class-stratified reserve from D, avoiding both loss tails (likely poisons)."""
    p = run.params
    model = run.new_model()
    cfg = replace(p.base_model_params(run.arch).train_config(), epochs=p.reserve_probe_epochs)
    train_classifier(model, run.data, cfg, ctx, stage="clean_reserve: probe")
    losses, _ = _losses(model, run.data)
    size = min(p.clean_reserve_size, int(p.clean_reserve_max_fraction * run.data.n))
    labels = np.asarray(run.inp.labels, dtype=np.int64)
    rng = np.random.default_rng(run.ctx.seed)
    return stratified_reserve(labels, losses, size, run.inp.n_classes, rng, p.reserve_band)


def _base_model(run: _Run, reserve: TensorData, ctx: RunContext) -> tuple[Tensor, StateDict]:
    """Train the base model B on all of D; return its predictions on R and its weights."""
    model = run.new_model()
    cfg = run.params.base_model_params(run.arch).train_config()
    train_classifier(model, run.data, cfg, ctx, stage="base_model")
    return torch.from_numpy(predict(model, reserve).predictions), _cpu_state(model)


def _batches(n: int, run: _Run, seed: int) -> Iterator[Tensor]:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return index_batches(n, run.params.batch_size, run.device, gen)


def _confuse(
    run: _Run,
    model: Classifier,
    distilled: TensorData,
    reserve: TensorData,
    base_preds: Tensor,
    r: int,
    ctx: RunContext,
) -> None:
    """Confusion training of round ``r`` (in place), through :func:`train_steps`."""
    p, n_classes = run.params, run.inp.n_classes
    last = r == p.n_rounds - 1
    labels_s = distilled.y.cpu().numpy()
    freq = class_frequencies(labels_s, n_classes, last)
    inv_f = torch.from_numpy(1.0 / freq).float().to(run.device)
    shifts = torch.from_numpy(confusion_shifts(p.confusion_iters[r], n_classes)).to(run.device)
    base_preds = base_preds.to(run.device)
    r_batches = _batches(reserve.n, run, run.ctx.seed + 1000 + r)
    s_batches = _batches(distilled.n, run, run.ctx.seed + 2000 + r)
    lam, factor = p.lambdas[r], p.batch_factors[r]

    def loss_fn(step: int) -> Tensor:
        idx_r = next(r_batches)
        y_conf = (base_preds[idx_r] + shifts[step]) % n_classes
        if step % factor != 0:
            return nn.functional.cross_entropy(model(reserve.batch(idx_r)), y_conf)
        idx_s = next(s_batches)
        logits = model(torch.cat([reserve.batch(idx_r), distilled.batch(idx_s)]))
        ce = nn.functional.cross_entropy(
            logits.float(), torch.cat([y_conf, distilled.y[idx_s]]), reduction="none"
        )
        b = idx_r.shape[0]
        w = inv_f[distilled.y[idx_s]]
        inspected = (ce[b:] * w).sum() / w.sum()
        return ((lam - 1.0) * ce[:b].mean() + inspected) / lam

    optim = OptimConfig(lr=p.lrs[r], momentum=p.momentum, weight_decay=p.weight_decay)
    optim = replace(optim, schedule="constant")
    train_steps(model, p.confusion_iters[r], loss_fn, optim, ctx, stage=_stage(run, r, "confusion"))


def _stage(run: _Run, r: int, what: str) -> str:
    return f"round {r + 1}/{run.params.n_rounds}: {what}"


def _pretrain_set(
    run: _Run, distilled_idx: NDArray[np.int64], reserve: TensorData, last: bool
) -> TensorData:
    """S_r, or S_r + R with R's labels shifted to (y+1) mod C in the last round."""
    if distilled_idx.size == run.data.n and not last:
        return run.data
    subset = run.data.subset(torch.from_numpy(distilled_idx).to(run.device))
    if not last:
        return subset
    shifted = (reserve.y + 1) % run.inp.n_classes
    x = torch.cat([subset.x, reserve.x])
    return TensorData(x, torch.cat([subset.y, shifted]), run.data.mean, run.data.std)


@dataclass
class _RoundState:
    """Progress of the distillation loop (what a checkpoint restores)."""

    next_round: int = 0
    distilled: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pretrained: StateDict | None = None
    confused: StateDict | None = None
    sizes: list[int] = field(default_factory=list)


def _round(
    run: _Run, state: _RoundState, reserve: TensorData, base_preds: Tensor, ctx: RunContext
) -> None:
    """Pretrain → confusion-train → distil for round ``state.next_round``."""
    p, r = run.params, state.next_round
    last = r == p.n_rounds - 1
    start = time.perf_counter()
    model = run.new_model(state.pretrained)
    pre = _pretrain_set(run, state.distilled, reserve, last)
    sub = replace(ctx.sub(0.0, 0.45), seed=run.ctx.seed + r)
    train_classifier(
        model, pre, _plain_config(p, p.pretrain_epochs[r]), sub, _stage(run, r, "pretrain")
    )
    state.pretrained = _cpu_state(model)
    run.timed(f"round_{r}_pretrain", start)
    run.ctx.check_cancel()
    start = time.perf_counter()
    distilled = (
        pre
        if pre is run.data
        else run.data.subset(torch.from_numpy(state.distilled).to(run.device))
    )
    _confuse(run, model, distilled, reserve, base_preds, r, ctx.sub(0.45, 0.95))
    run.timed(f"round_{r}_confusion", start)
    start = time.perf_counter()
    ctx.report(_stage(run, r, "distill"), 0.97)
    losses, preds = _losses(model, run.data)
    labels = run.data.y.cpu().numpy()
    if last:
        state.distilled = np.flatnonzero(preds == labels).astype(np.int64)
        state.confused = _cpu_state(model)
    else:
        topup = p.topup_fraction_last if r == p.n_rounds - 2 else p.topup_fraction
        state.distilled = distill_indices(losses, labels, run.inp.n_classes, p.ratios[r], topup)
    state.sizes.append(int(state.distilled.size))
    state.next_round = r + 1
    run.timed(f"round_{r}_distill", start)


# --------------------------------------------------------------------------- orchestration


def _round_costs(params: CTParams, n: int, n_reserve: int) -> list[float]:
    """Rough sample-passes of each round, for progress fractions."""
    sizes = [float(n)] + [r * n for r in params.ratios]
    sizes[-1] += n_reserve
    per_step = params.batch_size * (1.0 + 1.0 / np.asarray(params.batch_factors))
    return [
        params.pretrain_epochs[r] * sizes[r] + params.confusion_iters[r] * per_step[r] + n
        for r in range(params.n_rounds)
    ]


def _progress_marks(params: CTParams, n: int, n_reserve: int, drawn: bool) -> list[float]:
    """Cumulative fractions: [reserve end, base end, round 0 end, ..., last round end]."""
    costs = [params.reserve_probe_epochs * n if drawn else 0.0, params.base_epochs * n]
    costs += _round_costs(params, n, n_reserve)
    marks = np.cumsum(costs) / (sum(costs) * 1.02)  # leave ~2% for identification
    return [float(m) for m in marks]


def _reserve_and_base(
    run: _Run, given: TensorData | None, saved: dict[str, Any] | None, marks: list[float]
) -> tuple[TensorData, Tensor, dict[str, Any]]:
    """The clean reserve R (given or drawn), the base model's predictions on R,
    and the checkpoint head that records both."""
    if saved is not None:
        head = {k: saved[k] for k in ("reserve_idx", "reserve_info", "base_preds", "base_state")}
        return _reserve_from(run, given, head["reserve_idx"]), saved["base_preds"], head
    start = time.perf_counter()
    idx = None
    info: dict[str, Any] = {"source": "given", "size": 0 if given is None else given.n}
    if given is None:
        drawn, n_outside = _draw_reserve(run, run.ctx.sub(0.0, marks[0]))
        idx = torch.from_numpy(drawn)
        info = {
            "source": "drawn",
            "size": int(idx.numel()),
            "probe_epochs": run.params.reserve_probe_epochs,
            "loss_band": run.params.reserve_band,
            "outside_band": n_outside,
            "note": "drawn from the inspected set; these samples are still scored",
        }
    reserve = _reserve_from(run, given, idx)
    run.timed("clean_reserve", start)
    run.ctx.check_cancel()
    start = time.perf_counter()
    base_preds, base_state = _base_model(run, reserve, run.ctx.sub(marks[0], marks[1]))
    run.timed("base_model", start)
    head = {
        "reserve_idx": idx,
        "reserve_info": info,
        "base_preds": base_preds,
        "base_state": base_state,
    }
    run.ckpt.save({**head, "stage": "base_model", "rounds": None})
    return reserve, base_preds, head


def _reserve_from(run: _Run, given: TensorData | None, idx: Tensor | None) -> TensorData:
    if idx is None:
        if given is None:
            raise DetectionError("ct: checkpoint without a clean reserve")
        return given
    return run.data.subset(idx.to(run.device))


def _saved_rounds(saved: dict[str, Any] | None, n: int) -> _RoundState:
    rounds = None if saved is None else saved.get("rounds")
    if rounds is None:
        return _RoundState(distilled=np.arange(n, dtype=np.int64))
    return _RoundState(
        next_round=int(rounds["next_round"]),
        distilled=rounds["distilled"].numpy().astype(np.int64),
        pretrained=rounds["pretrained"],
        confused=rounds["confused"],
        sizes=[int(s) for s in rounds["sizes"]],
    )


def _save_rounds(run: _Run, saved_head: dict[str, Any], state: _RoundState) -> None:
    rounds = {
        "next_round": state.next_round,
        "distilled": torch.from_numpy(state.distilled),
        "pretrained": state.pretrained,
        "confused": state.confused,
        "sizes": list(state.sizes),
    }
    run.ckpt.save({**saved_head, "stage": f"round_{state.next_round - 1}", "rounds": rounds})


def _identify(run: _Run, model: Classifier) -> tuple[LikelihoodRatios, NDArray[np.float64]]:
    """LR test and dense scores from the last confused model."""
    p = run.params
    out = predict(model, run.data, with_features=True)
    assert out.features is not None
    labels = np.asarray(run.inp.labels, dtype=np.int64)
    test = likelihood_ratio_test(
        out.features.astype(np.float64),
        labels,
        out.predictions,
        run.inp.n_classes,
        threshold=p.lr_threshold,
        max_class_threshold=p.max_class_threshold,
        eps=p.cov_eps,
    )
    confidence = out.probabilities()[np.arange(labels.size), labels].astype(np.float64)
    return test, ct_scores(confidence, labels, test)


def _resolve_arch(params: CTParams, inp: DetectionInput) -> str:
    arch = params.arch
    if arch == "auto":
        return "small_cnn" if inp.is_image else "mlp"
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
        ``clean_x``/``clean_labels`` become the clean reserve R; without them R
        is a class-stratified sample of the inspected set (``info["clean_reserve"]``).
    params : CTParams
    ctx : RunContext
        ``scratch_dir`` enables per-round checkpoints and resumption.

    Returns
    -------
    DetectionResult
        ``scores`` (N,), higher = more suspicious (see
        :func:`detection.defenses.ct_identify.ct_scores`); ``flags`` = the
        isolated samples of classes whose likelihood ratio passes the test;
        ``classes[c].statistic`` = ``LR_c``; ``target_classes`` = flagged classes.
    """
    _check_input(inp)
    total_start = time.perf_counter()
    device = resolve_device(params.device or ctx.device)
    seed_everything(ctx.seed)
    data, given = load_data(inp, device)
    ckpt = _Checkpoint(ctx, _fingerprint(inp, params, ctx.seed))
    run = _Run(inp, params, ctx, device, _resolve_arch(params, inp), data, ckpt)
    saved = ckpt.load()
    resumed_from = None if saved is None else saved.get("stage")
    n_reserve = given.n if given is not None else params.clean_reserve_size
    marks = _progress_marks(params, data.n, n_reserve, drawn=given is None)
    reserve, base_preds, head = _reserve_and_base(run, given, saved, marks)
    state = _saved_rounds(saved, data.n)
    while state.next_round < params.n_rounds:
        r = state.next_round
        run.ctx.check_cancel()
        _round(run, state, reserve, base_preds, ctx.sub(marks[r + 1], marks[r + 2]))
        _save_rounds(run, head, state)
    ctx.report("identify", marks[-1])
    run.ctx.check_cancel()
    start = time.perf_counter()
    assert state.confused is not None
    test, scores = _identify(run, run.new_model(state.confused))
    run.timed("identify", start)
    run.timings["total"] = round(time.perf_counter() - total_start, 3)
    ctx.report("done", 1.0)
    return _result(run, test, scores, state, head["reserve_info"], resumed_from)


def _result(
    run: _Run,
    test: LikelihoodRatios,
    scores: NDArray[np.float64],
    state: _RoundState,
    reserve_info: dict[str, Any],
    resumed_from: str | None,
) -> DetectionResult:
    labels = np.asarray(run.inp.labels, dtype=np.int64)
    n_classes = run.inp.n_classes
    info = {
        "preset": run.params.preset,
        "arch": run.arch,
        "device": str(run.device),
        "distilled_sizes": state.sizes,
        "likelihood_ratios": [float(v) for v in test.ratios],
        "isolated_per_class": np.bincount(labels[test.isolated], minlength=n_classes).tolist(),
        "suspected_target_classes": test.flagged_classes,
        "estimated_poison_count": int(test.flags.sum()),
        "clean_reserve": reserve_info,
        "reserve_drawn": reserve_info["source"] == "drawn",
        "resumed_from": resumed_from,
        "timings": dict(run.timings),
    }
    classes = class_summaries(labels, test.flags, n_classes, test.ratios, set(test.flagged_classes))
    return DetectionResult(scores, test.flags, classes, list(test.flagged_classes), info)
