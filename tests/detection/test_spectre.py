"""SPECTRE: robust whitening, the QUE matrix exponential, and recall on real data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import expm

from detection.attacks import PoisonedSet
from detection.defenses.spectre import (
    SpectreParams,
    dims_grid,
    fit_class,
    que_matrix,
    robust_mean_cov,
)
from detection.metrics import evaluate
from detection.registry import run_detector
from detection.types import DetectionError, DetectionInput, RunContext

BASE_MODEL = {"arch": "small_cnn", "epochs": 12}


def test_dims_grid_is_squares_up_to_max() -> None:
    assert dims_grid(64, 8) == [1, 4, 9, 16, 25, 36, 49, 64]
    assert dims_grid(16, 4) == [1, 4, 9, 16]


def test_robust_covariance_ignores_a_third_of_outliers() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(0.0, 1.0, (400, 5)) * np.array([1.0, 2.0, 0.5, 1.0, 1.0])
    outliers = rng.normal(0.0, 0.3, (200, 5)) + np.array([8.0, 0, 0, 0, 0])
    mean, cov = robust_mean_cov(np.vstack([clean, outliers]))
    assert np.abs(mean).max() < 0.3
    assert np.allclose(np.diag(cov), [1.0, 4.0, 0.25, 1.0, 1.0], rtol=0.3)


def test_que_matrix_is_a_matrix_exponential() -> None:
    rng = np.random.default_rng(1)
    white = rng.normal(size=(500, 4)) @ np.diag([3.0, 1.0, 1.0, 1.0])
    white[:, 1] += 0.5 * white[:, 0]  # off-diagonal terms tell expm from element-wise exp
    u = que_matrix(white, alpha=4.0)
    c = white - white.mean(axis=0)
    s = c.T @ c / white.shape[0]
    m = expm(4.0 * (s - np.eye(4)) / (np.linalg.eigvalsh(s)[-1] - 1.0))
    assert np.allclose(u, m / np.trace(m))
    assert not np.allclose(u, np.exp(4.0 * (s - np.eye(4)) / (np.linalg.eigvalsh(s)[-1] - 1.0)))
    assert np.isclose(np.trace(u), 1.0)
    assert np.allclose(que_matrix(np.eye(3) * np.sqrt(3), 4.0), np.eye(3) / 3)  # no excess


def test_fit_class_ranks_a_shifted_subpopulation_first() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(600, 32))
    features[:60] += 4.0 * rng.normal(size=32) / np.sqrt(32) * 3
    fit = fit_class(features, SpectreParams())
    assert fit is not None and fit.k in dims_grid(64, 8)
    scores = fit.score(features)
    assert set(np.argsort(-scores)[:60].tolist()) == set(range(60))
    assert scores[60:].mean() == pytest.approx(1.0, abs=0.3)  # clean QUE score ~1 on average


def test_spectre_finds_badnet_on_digits(
    poisoned_digits: tuple[DetectionInput, PoisonedSet],
) -> None:
    inp, ps = poisoned_digits
    raw = {"threshold": "clean_fpr", "target_fpr": 0.05, "base_model": BASE_MODEL}
    result = run_detector("spectre", inp, raw, RunContext(device="cpu"))
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.1, metrics
    assert metrics["auroc"] >= 0.95, metrics
    assert result.info["threshold"]["rule"] == "clean_fpr"
    assert all(k is None or k in dims_grid(64, 8) for k in result.info["dims"])


def test_spectre_refuses_clean_fpr_without_reserve(
    poisoned_digits: tuple[DetectionInput, PoisonedSet],
) -> None:
    inp, _ = poisoned_digits
    bare = DetectionInput(inp.x, inp.labels, inp.n_classes)
    with pytest.raises(DetectionError, match="clean reserve"):
        run_detector("spectre", bare, {"threshold": "clean_fpr"}, RunContext(device="cpu"))
