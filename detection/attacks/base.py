"""Attack contract: params, the poisoned-set result, the registry and :func:`plant`.

An attack is a function ``(x, labels, n_classes, params, rng) -> PoisonedSet``
registered by name with its own frozen params model::

    @register_attack("badnet", BadNetParams, "BadNet (Gu et al. 2017)")
    def badnet(x, labels, n_classes, params, rng) -> PoisonedSet: ...

Images are uint8 ``(N, H, W, C)`` with any ``H, W >= 8`` and ``C`` 1 or 3. An
attack never mutates its input; it returns a new array in which the poison
samples carry the train-time trigger (and the poisoned label) and the cover
samples carry a trigger variant but keep their labels. Cover samples are
negatives in every metric; only ``poison_indices`` are positives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from detection.registry import Params, Registry

TriggerFn = Callable[[NDArray[np.uint8]], NDArray[np.uint8]]
Int64Array = NDArray[np.int64]
UInt8Array = NDArray[np.uint8]


class AttackParams(Params):
    """Fields every attack understands; each attack overrides the defaults it needs."""

    rate: float = Field(
        0.003, gt=0.0, le=0.5, description="Fraction of the N samples that become poison."
    )
    target_class: int = Field(0, ge=0, description="Class the trigger maps to.")
    cover_rate: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Fraction of N that gets a trigger variant but keeps its label.",
    )


@dataclass(frozen=True)
class PoisonedSet:
    """A poisoned copy of a dataset plus everything needed to evaluate it.

    Attributes
    ----------
    x : ndarray, uint8 (N, H, W, C)
        The poisoned images (a new array).
    labels : ndarray, int64 (N,)
        Given labels after poisoning.
    poison_indices, cover_indices : ndarray, int64
        Sorted, unique and disjoint. Covers keep their labels.
    target_class : int or None
        None for all-to-all attacks (``y -> (y + 1) mod C``).
    n_classes : int
    trigger : callable
        Test-time trigger on a uint8 NHWC batch of the same image size.
    info : dict
        JSON-able description (attack name, params, counts, trigger regions).
    source_classes : tuple of int or None
        Classes whose triggered inputs should flip (source-specific attacks);
        None means every class other than the target.
    """

    x: UInt8Array
    labels: Int64Array
    poison_indices: Int64Array
    cover_indices: Int64Array
    target_class: int | None
    n_classes: int
    trigger: TriggerFn
    info: dict[str, Any] = field(default_factory=dict)
    source_classes: tuple[int, ...] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def is_poison(self) -> NDArray[np.bool_]:
        """Ground-truth mask, shape ``(N,)``; covers are False."""
        mask = np.zeros(self.n_samples, dtype=bool)
        mask[self.poison_indices] = True
        return mask

    def target_labels(self, labels: NDArray[np.integer]) -> Int64Array:
        """Label a triggered test sample of true class ``labels`` should be predicted as."""
        y = np.asarray(labels, dtype=np.int64)
        if self.target_class is None:
            out: Int64Array = (y + 1) % self.n_classes
            return out
        return np.full_like(y, self.target_class)

    def victim_mask(self, labels: NDArray[np.integer]) -> NDArray[np.bool_]:
        """Which test samples count for the attack success rate (true class ``labels``)."""
        y = np.asarray(labels, dtype=np.int64)
        if self.target_class is None:
            return np.ones(y.shape, dtype=bool)
        mask = y != self.target_class
        if self.source_classes is not None:
            mask &= np.isin(y, np.asarray(self.source_classes, dtype=np.int64))
        out: NDArray[np.bool_] = mask
        return out


AttackFn = Callable[[UInt8Array, Int64Array, int, Any, np.random.Generator], PoisonedSet]
ATTACKS: Registry[AttackFn] = Registry("attack", "detection.attacks")
register_attack = ATTACKS.register


def parse_attack_params(name: str, params: Mapping[str, Any] | Params | None) -> AttackParams:
    """Validate ``params`` (a mapping, or any params model) against ``name``'s model."""
    entry = ATTACKS.get(name)
    if isinstance(params, entry.params_model):
        parsed: Params = params
    elif isinstance(params, Params):
        parsed = entry.parse(params.model_dump())
    else:
        parsed = entry.parse(params)
    assert isinstance(parsed, AttackParams)
    return parsed


def plant(
    name: str,
    x: NDArray[np.uint8],
    labels: NDArray[np.integer],
    n_classes: int,
    params: Mapping[str, Any] | Params | None = None,
    seed: int = 0,
) -> PoisonedSet:
    """Poison ``(x, labels)`` with attack ``name``; deterministic in ``seed``.

    Parameters
    ----------
    name : str
        A registered attack (``ATTACKS.names()``).
    x : ndarray, uint8 (N, H, W, C)
        Clean images; never modified.
    labels : ndarray, int (N,)
        Clean labels in ``[0, n_classes)``.
    params : mapping or params model, optional
        Overrides of the attack's defaults.
    seed : int
        Seeds sample choice, trigger textures and any attack-side training.
    """
    parsed = parse_attack_params(name, params)
    x, labels = _check_inputs(x, labels, n_classes, parsed)
    rng = np.random.default_rng(seed)
    result = ATTACKS.get(name).fn(x, labels, n_classes, parsed, rng)
    result.info.setdefault("seed", seed)
    return result


def _check_inputs(
    x: NDArray[np.uint8], labels: NDArray[np.integer], n_classes: int, params: AttackParams
) -> tuple[UInt8Array, Int64Array]:
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"attacks need uint8 images (N, H, W, C); got {x.dtype} {x.shape}")
    if min(x.shape[1], x.shape[2]) < 8:
        raise ValueError(f"images must be at least 8x8, got {x.shape[1]}x{x.shape[2]}")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels shape {y.shape} does not match {x.shape[0]} images")
    if params.target_class >= n_classes:
        raise ValueError(f"target_class {params.target_class} >= n_classes {n_classes}")
    return x, y


def count_for(rate: float, n_samples: int) -> int:
    """``round(rate * N)`` samples, at least one when ``rate > 0``."""
    return max(1, round(rate * n_samples)) if rate > 0 else 0


def choose(
    rng: np.random.Generator, pool: NDArray[np.bool_], k: int, what: str = "poison"
) -> Int64Array:
    """``k`` distinct sorted indices drawn uniformly from ``pool`` (a bool mask)."""
    candidates = np.flatnonzero(pool)
    if k > candidates.size:
        raise ValueError(f"need {k} {what} samples but only {candidates.size} are eligible")
    picked = rng.choice(candidates, size=k, replace=False)
    return np.sort(picked).astype(np.int64)


def choose_with_covers(
    rng: np.random.Generator,
    poison_pool: NDArray[np.bool_],
    cover_pool: NDArray[np.bool_] | None,
    params: AttackParams,
) -> tuple[Int64Array, Int64Array]:
    """Poison indices from ``poison_pool``, then disjoint covers from ``cover_pool``.

    ``cover_pool`` None lets any non-poison sample become a cover.
    """
    n = poison_pool.shape[0]
    poison = choose(rng, poison_pool, count_for(params.rate, n))
    free = np.ones(n, dtype=bool) if cover_pool is None else cover_pool.copy()
    free[poison] = False
    covers = choose(rng, free, count_for(params.cover_rate, n), "cover")
    return poison, covers


def not_target(labels: Int64Array, params: AttackParams) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = labels != params.target_class
    return out


def assemble(
    name: str,
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: AttackParams,
    *,
    poison_indices: Int64Array,
    poison_x: UInt8Array,
    trigger: TriggerFn,
    cover_indices: Int64Array | None = None,
    cover_x: UInt8Array | None = None,
    poison_labels: Int64Array | None = None,
    target_class: int | None = -1,
    source_classes: tuple[int, ...] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> PoisonedSet:
    """Write poisons/covers into a copy of ``x`` and relabel the poisons.

    ``poison_labels`` None means every poison gets ``params.target_class``;
    ``target_class`` -1 means ``params.target_class``.
    """
    covers = np.zeros(0, np.int64) if cover_indices is None else cover_indices
    out_x = x.copy()
    out_x[poison_indices] = poison_x
    if cover_x is not None:
        out_x[covers] = cover_x
    out_y = labels.copy()
    target = params.target_class if target_class == -1 else target_class
    if poison_labels is None:
        out_y[poison_indices] = params.target_class
    else:
        out_y[poison_indices] = poison_labels
    info: dict[str, Any] = {
        "attack": name,
        "params": params.model_dump(mode="json"),
        "n_samples": int(x.shape[0]),
        "n_poison": int(poison_indices.size),
        "n_cover": int(covers.size),
    }
    info.update(extra or {})
    return PoisonedSet(
        out_x, out_y, poison_indices, covers, target, n_classes, trigger, info, source_classes
    )
