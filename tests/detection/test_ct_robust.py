"""CT's robust pieces: stopping rules, sizes, guarded distillation, evidence, canary flags."""

from __future__ import annotations

import numpy as np
import torch

from detection.defenses.ct_evidence import (
    CLASS_ALPHA,
    Evidence,
    RoundCheck,
    canary_flags,
    class_standardised,
    class_view_score,
    collapsed,
    distill_floor,
    fit_evidence,
    isolated_excess,
    rounds_score,
)
from detection.defenses.ct_identify import distill_indices
from detection.defenses.ct_schedule import (
    FitMonitor,
    ScrambleMonitor,
    calibration_size,
    confusion_steps,
    reserve_size,
)
from detection.models import build_model
from detection.training import OptimConfig, train_steps
from detection.types import RunContext


def _logits_for(labels: torch.Tensor, correct: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """Logits whose argmax is ``labels`` where ``correct``, another class elsewhere."""
    pred = torch.where(correct, labels, (labels + 1) % n_classes)
    return torch.nn.functional.one_hot(pred, n_classes).float()


def test_fit_monitor_stops_at_target_accuracy_after_min_epochs() -> None:
    mon = FitMonitor(steps_per_epoch=2, target=0.9, min_epochs=2)
    labels = torch.arange(10) % 10
    stops = []
    for step in range(8):
        correct = torch.ones(10, dtype=torch.bool)  # fitted from the start
        mon.observe(_logits_for(labels, correct), labels)
        stops.append(mon.step(step))
    # epoch ends at steps 1, 3, ...; the first epoch is below min_epochs
    assert stops[:4] == [False, False, False, True]
    assert mon.history[:2] == [1.0, 1.0]


def test_fit_monitor_stops_on_a_plateau() -> None:
    mon = FitMonitor(steps_per_epoch=1, target=0.99, min_epochs=1, patience=2)
    labels = torch.arange(10)
    accs = [0.5, 0.7, 0.8, 0.8, 0.8, 0.8]
    stopped_at = None
    for step, acc in enumerate(accs):
        correct = torch.arange(10) < int(acc * 10)
        mon.observe(_logits_for(labels, correct), labels)
        if mon.step(step):
            stopped_at = step
            break
    assert stopped_at == 4  # two epochs without gain over the best before them


def test_scramble_monitor_runs_the_sized_count_then_waits_for_chance() -> None:
    mon = ScrambleMonitor(n_classes=10, min_steps=5, margin=0.25)
    labels = torch.arange(10)
    done = []
    for step in range(400):
        correct = torch.arange(10) < (8 if step < 50 else 1)  # 80% -> 10% (chance)
        mon.observe(_logits_for(labels, correct), labels)
        done.append(mon.step(step))
    first = done.index(True)
    assert 50 < first < 400 and mon.accuracy <= 0.125
    scrambled_early = ScrambleMonitor(n_classes=10, min_steps=30, margin=0.25, accuracy=0.1)
    assert [scrambled_early.step(s) for s in range(30)] == [False] * 29 + [True]
    off = ScrambleMonitor(n_classes=10, min_steps=3, margin=0.25, enabled=False)
    assert [off.step(s) for s in range(3)] == [False, False, True]  # the sized count only


def test_train_steps_stops_early_on_callback() -> None:
    model = build_model("mlp", (4,), 2, 8)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))

    def loss_fn(step: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x), y)

    seen: list[int] = []

    def on_step(step: int) -> bool:
        seen.append(step)
        return step == 6

    train_steps(model, 100, loss_fn, OptimConfig(lr=0.01), RunContext(), on_step=on_step)
    assert seen == list(range(7))


def test_sizes_follow_the_data() -> None:
    assert reserve_size(50_000, 10, 0.1) == 2000  # the paper's CIFAR-10 reserve
    assert reserve_size(12_000, 10, 0.1) == 1000
    assert reserve_size(1_500, 10, 0.1) == 150  # capped at 10% of the data
    assert reserve_size(100_000, 43, 0.1) == 4300
    assert calibration_size(1000, None) == 300 and calibration_size(100, None) == 30
    assert calibration_size(1000, 50) == 50 and calibration_size(60, 50) == 30
    assert confusion_steps(96.0, 6000, 2000, 32) == 6000  # the paper's round
    assert confusion_steps(None, 123, 2000, 32) == 123
    assert confusion_steps(24.0, 0, 700, 64) == 263


def test_isolated_excess_counts_flagged_isolation_beyond_the_clean_rate() -> None:
    sizes = np.array([1000, 1000, 1000, 500], dtype=np.int64)
    isolated = np.array([400, 100, 120, 50], dtype=np.int64)  # clean classes isolate ~10%
    assert isolated_excess(isolated, sizes, [0]) == 300
    assert isolated_excess(isolated, sizes, []) == 0
    assert isolated_excess(np.array([50, 100, 120, 50]), sizes, [0]) == 0  # no surplus


def test_distill_floor_keeps_room_for_suspected_poisons() -> None:
    check = RoundCheck(0, 5.0, [0], suspected_count=80, isolated_per_class=[80, 0])
    assert distill_floor(check, 1.5, current_size=1000) == 120
    assert distill_floor(check, 1.5, current_size=100) == 100
    assert distill_floor(check, None, current_size=1000) == 0
    quiet = RoundCheck(0, 0.1, [], suspected_count=0, isolated_per_class=[0, 0])
    assert distill_floor(quiet, 1.5, current_size=1000) == 0
    labels = np.repeat(np.arange(2), 100).astype(np.int64)
    losses = np.linspace(0.0, 1.0, 200)
    assert distill_indices(losses, labels, 2, ratio=0.05, topup=0.0).size == 10
    kept = distill_indices(losses, labels, 2, ratio=0.05, topup=0.0, min_keep=120)
    assert np.array_equal(kept, np.arange(120))


def test_collapse_needs_a_flagged_round_and_a_large_fall() -> None:
    before = RoundCheck(0, np.log(1e4), [0], 50, [50, 0])
    after = RoundCheck(0, np.log(1.2), [], 0, [3, 0])
    assert collapsed(before, after, log_drop=4.6)
    assert not collapsed(before, RoundCheck(0, np.log(1e3), [0], 40, [40, 0]), 4.6)
    # still flagged after a big fall: the backdoor is still there
    assert not collapsed(before, RoundCheck(0, np.log(50.0), [0], 40, [40, 0]), 1.0)
    assert not collapsed(None, after, 4.6)
    unflagged = RoundCheck(0, np.log(1.4), [], 0, [1, 0])
    assert not collapsed(unflagged, RoundCheck(0, -30.0, [], 0, [0, 0]), 4.6)


def test_rounds_score_ranks_samples_fitted_in_every_round() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    poison = np.zeros(n, dtype=bool)
    poison[:20] = True
    ev = Evidence()
    for _ in range(6):
        losses = rng.exponential(1.0, n)
        losses[poison] = rng.uniform(0, 0.05, poison.sum())  # always fitted
        lucky = rng.choice(np.arange(20, n), 20, replace=False)
        losses[lucky] = 0.0  # a few clean samples fit by chance in one round
        ev.add(losses, np.zeros(n, dtype=np.int64))
    score = rounds_score(ev)
    assert score.shape == (n,) and np.all((score >= 0) & (score <= 1))
    assert score[poison].min() > np.sort(score[~poison])[-5]
    assert np.isclose(fit_evidence(np.array([3.0, 1.0, 2.0])), [1 / 3, 1.0, 2 / 3]).all()


def _scored_set(rng: np.random.Generator, n_poison: int) -> tuple[np.ndarray, ...]:
    labels = np.repeat(np.arange(10), 1000).astype(np.int64)
    scores = rng.uniform(0, 1, labels.size)
    poison = np.flatnonzero(labels == 3)[:n_poison]
    scores[poison] = rng.uniform(0.999, 1.0, n_poison)
    canaries = np.concatenate([np.flatnonzero(labels == c)[-30:] for c in range(10)])
    scores[canaries] = rng.uniform(0, 1, canaries.size)
    return scores, labels, poison, canaries


def test_canary_flags_find_the_excess_class_at_the_target_fpr() -> None:
    scores, labels, poison, canaries = _scored_set(np.random.default_rng(1), n_poison=40)
    cal = canary_flags(scores, labels, canaries, 10, target_fpr=0.01)
    assert cal.classes == [3]
    assert cal.flags[poison].all()
    clean = np.ones(labels.size, dtype=bool)
    clean[poison] = False
    assert cal.flags[clean].mean() < 0.01
    assert 0 < cal.info["fpr_upper_bound"] < 0.05 and cal.info["canaries"] == 300


def test_canary_flags_flag_nothing_on_a_clean_set() -> None:
    scores, labels, _, canaries = _scored_set(np.random.default_rng(2), n_poison=0)
    cal = canary_flags(scores, labels, canaries, 10, target_fpr=0.01)
    assert cal.classes == [] and not cal.flags.any()


def test_canary_flags_keep_only_likelihood_ratio_classes_with_an_excess() -> None:
    scores, labels, poison, canaries = _scored_set(np.random.default_rng(3), n_poison=40)
    # the round checks name a benign class (5) beside the target: no excess there, no flags
    cal = canary_flags(scores, labels, canaries, 10, target_fpr=0.01, lr_classes=[5, 3])
    assert cal.classes == [3]
    # ... and naming only the benign class does not hide the target's excess
    cal = canary_flags(scores, labels, canaries, 10, target_fpr=0.01, lr_classes=[5])
    assert cal.classes == [3] and cal.flags[poison].all()


def test_canary_flags_take_a_vouched_class_at_its_own_level() -> None:
    # A heavy-tailed benign class (6) sets the threshold with its canaries; the target (0)
    # holds 22 poisons above it (p ~ 4e-4): significant for a class the round checks name
    # (level 1e-3), not among all ten classes (1e-4), as in Trojan seed 0 on Fashion-MNIST.
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(10), 1000).astype(np.int64)
    scores = rng.uniform(0, 0.999, labels.size)
    canaries = np.concatenate([np.flatnonzero(labels == c)[-30:] for c in range(10)])
    shirts = np.flatnonzero(labels == 6)
    scores[shirts[:150]] = rng.uniform(0.99995, 1.0, 150)
    scores[shirts[-3:]] = rng.uniform(0.99995, 1.0, 3)  # three of its canaries
    poison = np.flatnonzero(labels == 0)[:22]
    scores[poison] = 1.5
    vouched = canary_flags(scores, labels, canaries, 10, target_fpr=0.01, lr_classes=[0])
    assert 0 in vouched.classes and vouched.flags[poison].all()
    assert vouched.info["class_p_values"][0] > CLASS_ALPHA / 10
    alone = canary_flags(scores, labels, canaries, 10, target_fpr=0.01)
    assert alone.classes == [6] and not alone.flags[poison].any()


def test_class_view_finds_poisons_hidden_by_a_confusion_resistant_class() -> None:
    """Class 1 keeps a heavy clean low-loss tail (Fashion-MNIST "coat"); class 0's
    poisons are far below its own clean losses, yet not below class 1's tail."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 1000).astype(np.int64)
    poison = np.zeros(2000, dtype=bool)
    poison[:30] = True
    ev = Evidence()
    for _ in range(3):
        losses = rng.normal(2.3, 0.05, 2000)
        losses[1000:] = rng.exponential(1.0, 1000)  # heavy tail down to ~0
        losses[poison] = rng.uniform(0.3, 0.5, 30)
        ev.add(losses, labels)
    percentile, by_class = rounds_score(ev, 0), class_view_score(ev, 0)
    tail = np.sort(percentile[~poison])[-100]
    assert (percentile[poison] > tail).mean() < 0.5  # the global view ranks them poorly
    assert by_class[poison].min() > np.sort(by_class[~poison])[-5]
    z = class_standardised(np.array([2.0, 2.0, 2.0, 0.5]), np.zeros(4, dtype=np.int64))
    assert z[3] > 0 and np.allclose(z[:3], 0.0)
