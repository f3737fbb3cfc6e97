"""Trace round 0 of Confusion Training: does the backdoor outlast the confusion?

Builds the same case as ``poisonscan bench-ct`` (real data, attack at its paper
rate, 1,000-image clean reserve), pretrains round 0 as CT does, then confuses
and prints every ``--every`` steps: the poisons' mean loss against the clean
samples', the round AUROC (how well the confused model ranks the poisons), the
attack success rate on triggered clean test images and the clean test accuracy.
A backdoor that survives keeps its ASR while the test accuracy falls to chance::

    python -m poisonscan.bench.ct_round0 --attack blend --seed 0 --target 0 \\
        --params '{"feature_dim": 128}'
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detection.attacks.base import PoisonedSet
from detection.defenses import ct
from detection.defenses import ct_rounds as rounds
from detection.defenses.ct_params import CTParams
from detection.defenses.ct_schedule import ScrambleMonitor, confusion_steps
from detection.features import per_sample_loss, predict
from detection.models import Classifier
from detection.training import OptimConfig, TensorData, to_tensor_data, train_steps
from detection.types import RunContext
from poisonscan.bench.ct import Case, prepare


def _probe_sets(
    run: rounds.Run, ps: PoisonedSet, x: np.ndarray, y: np.ndarray
) -> tuple[TensorData, TensorData]:
    """Triggered test images of the victim classes (ASR) and the clean test images."""
    victims = ps.victim_mask(y)
    triggered = to_tensor_data(ps.trigger(x[victims]), ps.target_labels(y[victims]), run.device)
    clean = to_tensor_data(x, y, run.device)
    for data in (triggered, clean):
        data.mean, data.std = run.data.mean, run.data.std
    return triggered, clean


def _accuracy(model: Classifier, data: TensorData) -> float:
    return float((predict(model, data).predictions == data.y.cpu().numpy()).mean())


def _line(
    run: rounds.Run,
    model: Classifier,
    poison: np.ndarray,
    probes: tuple[TensorData, TensorData],
    tag: str,
) -> str:
    n = run.n_inspected
    losses = per_sample_loss(predict(model, run.data).logits, run.labels)[:n]
    return (
        f"| {tag} | {losses[poison].mean():.3f} | {losses[~poison].mean():.3f} | "
        f"{roc_auc_score(poison, -losses):.3f} | {_accuracy(model, probes[0]):.3f} | "
        f"{_accuracy(model, probes[1]):.3f} |"
    )


def trace(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    case = Case("fashion-mnist", args.n_samples, args.attack, None, args.seed, 1000, args.target)
    inp, ps, test_x, test_y = prepare(case)
    params = CTParams(preset="fast", device="cpu", **json.loads(args.params or "{}"))
    ctx = RunContext(device="cpu", seed=args.seed)
    device = torch.device("cpu")
    work, given, canaries = ct._working_set(inp, params, device, args.seed)
    run = rounds.Run(inp, params, ctx, device, ct._resolve_arch(params, inp), work, inp.n_samples)
    plan = ct._plan(run, given, canaries, None)
    probes = _probe_sets(run, ps, test_x, test_y)
    start = time.perf_counter()
    model = run.new_model()
    everything = np.arange(work.n, dtype=np.int64)
    fit = rounds.pretrain(run, model, rounds.pretrain_set(run, everything, None, False), 0)
    print(f"pretrained: {fit.epochs} epochs, {time.perf_counter() - start:.0f} s\n")
    print("| step | poison loss | clean loss | round AUROC | test ASR | test accuracy |")
    print("|---|---|---|---|---|---|")
    print(_line(run, model, ps.is_poison, probes, "pretrained"), flush=True)
    assert plan.reserve is not None
    _confuse(run, model, plan.reserve, ps.is_poison, probes, args.every)


def _confuse(
    run: rounds.Run,
    model: Classifier,
    reserve: rounds.Reserve,
    poison: np.ndarray,
    probes: tuple[TensorData, TensorData],
    every: int,
) -> None:
    """Round 0's confusion as CT runs it, with a probe every ``every`` steps."""
    p = run.params
    sized = confusion_steps(
        None if p.confusion_passes is None else p.confusion_passes[0],
        p.confusion_iters[0],
        reserve.data.n,
        p.batch_size,
    )
    cap = int(sized * p.confusion_max_factor)
    monitor = ScrambleMonitor(run.inp.n_classes, sized, p.scramble_margin, enabled=True)
    loss_fn = rounds._confusion_loss(run, model, run.data, reserve, 0, cap, False, monitor)

    def on_step(step: int) -> bool:
        stop = monitor.step(step)
        if (step + 1) % every == 0 or stop:
            print(_line(run, model, poison, probes, f"confusion {step + 1}"), flush=True)
            model.train()
        return stop

    optim = OptimConfig(
        lr=p.lrs[0], momentum=p.momentum, weight_decay=p.weight_decay, schedule="constant"
    )
    train_steps(model, cap, loss_fn, optim, run.ctx, "confusion", on_step=on_step)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--attack", default="blend")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--n-samples", type=int, default=12000)
    p.add_argument("--params", help="CTParams overrides as JSON (fast preset)")
    p.add_argument("--every", type=int, default=105, help="confusion steps between probes")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


if __name__ == "__main__":
    trace(parse_args())
