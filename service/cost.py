"""A job's cost before it runs: estimated sample-passes from its params, and its time limit.

Every detector's params name their training budget the same way: ``*epochs``
fields (one or a list, passes over the whole set; a nested ``base_model``
counts too) and ``*iters`` fields (steps of ``batch_size`` samples). The
estimate is an upper bound (CT's distilled sets shrink; a job naming several
methods sums them, its params keyed by method name, though they share one base
model when their ``base_model`` params agree); it is checked against
``max_sample_passes`` at ``POST /jobs`` and sets the job's time limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.config import Settings
from service.errors import InvalidInput, field_error

DEFAULT_BATCH = 128


def _total(value: Any) -> float:
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return sum(_total(v) for v in value)
    return 0.0


def sample_passes(params: Mapping[str, Any], n_samples: int) -> float:
    """Estimated samples seen in training (forward + backward) for these params."""
    batch = _total(params.get("batch_size")) or DEFAULT_BATCH
    total = 0.0
    for key, value in params.items():
        if isinstance(value, Mapping):
            total += sample_passes(value, n_samples)
        elif key.endswith("epochs") and "min" not in key:
            total += _total(value) * n_samples
        elif key.endswith("iters"):
            total += _total(value) * batch
    return total


def check_cost(params: Mapping[str, Any], n_samples: int, settings: Settings) -> float:
    """The estimate, or :class:`InvalidInput` (422) when it exceeds the configured cap."""
    passes = sample_passes(params, n_samples)
    if passes > settings.max_sample_passes:
        msg = (
            f"estimated cost {passes:.3g} sample-passes exceeds the cap of "
            f"{settings.max_sample_passes:.3g}; lower the epochs/iterations"
        )
        err = field_error(["body", "params"], msg, "cost_cap")
        err["ctx"] = {"estimate": passes, "cap": settings.max_sample_passes}
        raise InvalidInput(msg, [err])
    return passes


def time_limits(passes: float, settings: Settings) -> tuple[float, float]:
    """(soft, hard) seconds for a job of ``passes`` sample-passes."""
    soft = max(settings.job_time_limit_min_s, passes * settings.job_seconds_per_sample_pass)
    return soft, soft * 1.1 + 60.0
