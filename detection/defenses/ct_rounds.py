"""The stages of one Confusion Training round: pretrain, confuse, check, distil.

Qi et al., USENIX Security 2023: each round pretrains on the distilled set
S_r, confusion-trains from those weights with a clean reserve under wrong
labels, and keeps the samples the confused model still fits. Every optimiser
step goes through :func:`detection.training.train_steps`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from detection.defenses.ct_evidence import (
    Evidence,
    RoundCheck,
    collapsed,
    distill_floor,
    run_round_check,
)
from detection.defenses.ct_identify import class_frequencies, confusion_shifts, distill_indices
from detection.defenses.ct_params import CTParams
from detection.defenses.ct_schedule import (
    FitMonitor,
    ScrambleMonitor,
    confusion_steps,
)
from detection.features import per_sample_loss, predict
from detection.models import Classifier, build_model, prepare_model
from detection.training import (
    OptimConfig,
    TensorData,
    index_batches,
    steps_for_epochs,
    train_steps,
)
from detection.types import DetectionInput, RunContext

StateDict = dict[str, Tensor]
IntArray = NDArray[np.int64]


@dataclass
class Run:
    """What every stage of one CT run shares.

    ``data`` is the working set: the inspected samples first (``n_inspected``
    of them), then any given canaries (clean samples scored like the rest).
    """

    inp: DetectionInput
    params: CTParams
    ctx: RunContext
    device: torch.device
    arch: str
    data: TensorData
    n_inspected: int
    timings: dict[str, float] = field(default_factory=dict)

    def new_model(self, state: StateDict | None = None) -> Classifier:
        p = self.params
        model = build_model(
            self.arch, self.data.input_shape, self.inp.n_classes, p.width, p.feature_dim
        )
        model = prepare_model(model, self.device, self.data.is_image)
        if state is not None:
            model.load_state_dict(state)
        return model

    def timed(self, name: str, start: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)

    def stage(self, r: int, what: str) -> str:
        return f"round {r + 1}/{self.params.n_rounds}: {what}"

    @property
    def labels(self) -> IntArray:
        out: IntArray = self.data.y.cpu().numpy().astype(np.int64)
        return out


@dataclass
class Reserve:
    """The clean reserve R (confusion data) and the base predictions on it."""

    data: TensorData
    base_preds: Tensor


@dataclass
class RoundState:
    """Progress of the distillation loop (what a checkpoint restores)."""

    next_round: int = 0
    distilled: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pretrained: StateDict | None = None
    confused: StateDict | None = None
    evidence: Evidence = field(default_factory=Evidence)
    records: list[dict[str, Any]] = field(default_factory=list)
    last_check: RoundCheck | None = None


def cpu_state(model: nn.Module) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _batches(n: int, batch_size: int, device: torch.device, seed: int) -> Iterator[Tensor]:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return index_batches(n, batch_size, device, gen)


# --------------------------------------------------------------------------- pretrain


def pretrain(run: Run, model: Classifier, train_set: TensorData, r: int) -> FitMonitor:
    """Pretrain ``model`` on ``train_set``: fixed epochs, or until fitted (capped)."""
    p = run.params
    steps_per_epoch = max(1, train_set.n // min(p.batch_size, train_set.n))
    monitor = FitMonitor(
        steps_per_epoch,
        target=p.pretrain_fit if p.pretrain_fit is not None else 2.0,
        min_epochs=p.pretrain_min_epochs[r],
        patience=p.pretrain_patience if p.pretrain_fit is not None else 0,
    )
    schedule = "constant" if p.pretrain_fit is not None else p.pretrain_schedule
    optim = OptimConfig(
        lr=p.pretrain_lr,
        momentum=p.pretrain_momentum,
        weight_decay=p.weight_decay,
        schedule=schedule,
    )
    batches = _batches(train_set.n, p.batch_size, run.device, run.ctx.seed + 100 * r)

    def loss_fn(step: int) -> Tensor:
        idx = next(batches)
        logits = model(train_set.batch(idx))
        monitor.observe(logits, train_set.y[idx])
        return nn.functional.cross_entropy(logits, train_set.y[idx])

    n_steps = steps_for_epochs(train_set.n, p.batch_size, p.pretrain_epochs[r])
    ctx = run.ctx.sub(0.0, 0.45)
    train_steps(model, n_steps, loss_fn, optim, ctx, run.stage(r, "pretrain"), on_step=monitor.step)
    return monitor


def pretrain_set(
    run: Run, distilled: IntArray, reserve: Reserve | None, shifted: bool
) -> TensorData:
    """S_r, or S_r + R with R's labels shifted to (y+1) mod C (the paper's last round)."""
    if distilled.size == run.data.n and not shifted:
        return run.data
    subset = run.data.subset(torch.from_numpy(distilled).to(run.device))
    if not shifted or reserve is None:
        return subset
    wrong = (reserve.data.y + 1) % run.inp.n_classes
    x = torch.cat([subset.x, reserve.data.x])
    return TensorData(x, torch.cat([subset.y, wrong]), run.data.mean, run.data.std)


# --------------------------------------------------------------------------- confuse


@dataclass(frozen=True)
class ConfusionStats:
    steps: int
    reserve_accuracy: float


def confuse(
    run: Run,
    model: Classifier,
    distilled: TensorData,
    reserve: Reserve,
    r: int,
    lr_scale: float = 1.0,
) -> ConfusionStats:
    """Confusion training of round ``r`` (in place; EMA weights swapped in when set)."""
    p, n_classes = run.params, run.inp.n_classes
    last = r == p.n_rounds - 1
    sized = confusion_steps(
        None if p.confusion_passes is None else p.confusion_passes[r],
        p.confusion_iters[r],
        reserve.data.n,
        p.batch_size,
    )
    scrambling = p.confusion_stop == "scrambled"
    cap = int(sized * p.confusion_max_factor) if scrambling else sized
    monitor = ScrambleMonitor(n_classes, sized, p.scramble_margin, enabled=scrambling)
    ema = _ema(model, p.confusion_ema)
    loss_fn = _confusion_loss(run, model, distilled, reserve, r, cap, last, monitor)

    def on_step(step: int) -> bool:
        if ema is not None:
            ema.update_parameters(model)
        return monitor.step(step)

    optim = OptimConfig(
        lr=p.lrs[r] * lr_scale,
        momentum=p.momentum,
        weight_decay=p.weight_decay,
        schedule="constant",
    )
    ctx = run.ctx.sub(0.45, 0.95)
    train_steps(model, cap, loss_fn, optim, ctx, run.stage(r, "confusion"), on_step=on_step)
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return ConfusionStats(monitor.steps, round(monitor.accuracy, 4))


def _ema(model: Classifier, decay: float | None) -> AveragedModel | None:
    if decay is None:
        return None
    averaging = get_ema_multi_avg_fn(decay)  # type: ignore[no-untyped-call]
    return AveragedModel(model, multi_avg_fn=averaging, use_buffers=True)


def _confusion_loss(
    run: Run,
    model: Classifier,
    distilled: TensorData,
    reserve: Reserve,
    r: int,
    n_steps: int,
    last: bool,
    monitor: ScrambleMonitor,
) -> Any:
    """The paper's objective: ((λ-1)·CE(R, confusion labels) + weighted CE(S)) / λ."""
    p, n_classes = run.params, run.inp.n_classes
    freq = class_frequencies(distilled.y.cpu().numpy(), n_classes, last)
    inv_f = torch.from_numpy(1.0 / freq).float().to(run.device)
    next_labels = _confusion_labels(run, reserve, n_steps, r)
    r_batches = _batches(reserve.data.n, p.batch_size, run.device, run.ctx.seed + 1000 + r)
    s_batches = _batches(distilled.n, p.batch_size, run.device, run.ctx.seed + 2000 + r)
    lam, factor = p.lambdas[r], p.batch_factors[r]

    def loss_fn(step: int) -> Tensor:
        idx_r = next(r_batches)
        y_conf = next_labels(idx_r, step)
        if step % factor != 0:
            logits_r = model(reserve.data.batch(idx_r))
            monitor.observe(logits_r, reserve.data.y[idx_r])
            return nn.functional.cross_entropy(logits_r, y_conf)
        idx_s = next(s_batches)
        logits = model(torch.cat([reserve.data.batch(idx_r), distilled.batch(idx_s)]))
        b = idx_r.shape[0]
        monitor.observe(logits[:b], reserve.data.y[idx_r])
        ce = nn.functional.cross_entropy(
            logits.float(), torch.cat([y_conf, distilled.y[idx_s]]), reduction="none"
        )
        w = inv_f[distilled.y[idx_s]]
        inspected = (ce[b:] * w).sum() / w.sum()
        return ((lam - 1.0) * ce[:b].mean() + inspected) / lam

    return loss_fn


def _confusion_labels(
    run: Run, reserve: Reserve, n_steps: int, r: int
) -> Callable[[Tensor, int], Tensor]:
    """Wrong labels for a reserve batch: ``(labels_of(idx, step))``.

    "shift" (ALGORITHMS.md): the base predictions plus one shift per
    iteration, never 0 mod C. "random" (the reference code): a fresh uniformly
    random wrong label per sample and step, relative to the reserve's own
    label; its gradient flattens the outputs instead of pushing every sample
    of the batch the same way round the classes.
    """
    n_classes, device = run.inp.n_classes, run.device
    if run.params.confusion_labels == "random":
        gen = torch.Generator(device=device)
        gen.manual_seed(run.ctx.seed + 3000 + r)
        labels = reserve.data.y

        def random_wrong(idx: Tensor, step: int) -> Tensor:
            offset = torch.randint(1, n_classes, idx.shape, generator=gen, device=device)
            return (labels[idx] + offset) % n_classes

        return random_wrong
    shifts = torch.from_numpy(confusion_shifts(n_steps, n_classes)).to(device)
    base_preds = reserve.base_preds.to(device)

    def shifted(idx: Tensor, step: int) -> Tensor:
        return (base_preds[idx] + shifts[step]) % n_classes

    return shifted


# --------------------------------------------------------------------------- one round


@dataclass(frozen=True)
class Judgement:
    """A confused model's view of the working set."""

    losses: NDArray[np.float64]
    preds: IntArray
    check: RoundCheck


def judge(run: Run, model: Classifier) -> Judgement:
    """Losses, predictions and the likelihood-ratio check of a confused model."""
    p = run.params
    out = predict(model, run.data, with_features=True)
    assert out.features is not None
    labels = run.labels
    losses = per_sample_loss(out.logits, labels)
    check = run_round_check(
        out.features.astype(np.float64),
        labels,
        out.predictions,
        losses,
        run.inp.n_classes,
        (p.lr_threshold, p.max_class_threshold, p.cov_eps),
    )
    return Judgement(losses, out.predictions, check)


def confuse_guarded(
    run: Run, state: RoundState, distilled: TensorData, reserve: Reserve, r: int
) -> tuple[Classifier, ConfusionStats, Judgement, dict[str, Any]]:
    """Confuse from the pretrained weights; on a collapse retry once, gentler."""
    notes: dict[str, Any] = {"retried": False, "collapsed": False}
    for lr_scale in (1.0, 0.5):
        model = run.new_model(state.pretrained)
        stats = confuse(run, model, distilled, reserve, r, lr_scale)
        verdict = judge(run, model)
        fell = run.params.collapse_guard and collapsed(
            state.last_check, verdict.check, run.params.collapse_log_drop
        )
        if not fell:
            return model, stats, verdict, notes
        if lr_scale < 1.0:
            notes["collapsed"] = True
            return model, stats, verdict, notes
        notes["retried"] = True
        run.ctx.check_cancel()
    raise AssertionError("unreachable")


def next_distilled(run: Run, state: RoundState, verdict: Judgement, r: int) -> IntArray:
    """S_{r+1}: the paper's cut with top-ups, never below the suspected-poison floor."""
    p = run.params
    topup = p.topup_fraction_last if r == p.n_rounds - 2 else p.topup_fraction
    floor = distill_floor(verdict.check, p.distill_floor, int(state.distilled.size))
    return distill_indices(
        verdict.losses, run.labels, run.inp.n_classes, p.ratios[r], topup, min_keep=floor
    )


def round_record(
    r: int,
    state: RoundState,
    monitor: FitMonitor,
    stats: ConfusionStats,
    verdict: Judgement,
    notes: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """What the summary says about a round (no ground truth needed)."""
    return {
        "round": r,
        "set_size": int(state.distilled.size),
        "pretrain_epochs": monitor.epochs,
        "pretrain_accuracy": round(monitor.history[-1], 4) if monitor.history else None,
        "confusion_steps": stats.steps,
        "reserve_accuracy": stats.reserve_accuracy,
        **verdict.check.to_dict(),
        **notes,
        "seconds": round(seconds, 2),
    }


def keep_previous(state: RoundState) -> IntArray:
    """After a collapse that a gentler retry did not cure: keep S_r as S_{r+1}."""
    return state.distilled.copy()


def with_seed(ctx: RunContext, seed: int) -> RunContext:
    return replace(ctx, seed=seed)
