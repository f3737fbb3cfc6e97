"""The per-run model cache carried by :class:`~detection.types.RunContext`.

Detectors of one job (``ss``, ``ac``, ``spectre``, ...) inspect the same base
model; the first one to ask trains it, the others reuse it. Entries are keyed
by the *content* of the inspected data (a hash of ``x``, ``labels`` and the
clean reserve) plus the training params, seed and device, so two equal
datasets share a model and a changed one never does.

Cached models are read-only: a detector that fine-tunes (ABL, ...) takes
:func:`copy.deepcopy` of the model first. :meth:`ModelCache.get_or_fit`
checks a fingerprint of the weights on every hit and raises if a detector
changed them in place.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # torch stays out of the import of detection.types
    from torch import nn

T = TypeVar("T")


def array_digest(*arrays: NDArray[Any] | None) -> str:
    """SHA-256 over the shapes, dtypes and bytes of ``arrays`` (None allowed)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        c = np.ascontiguousarray(a)
        h.update(f"{c.dtype.str}{c.shape};".encode())
        h.update(c.view(np.uint8).reshape(-1).data if c.size else b"")
    return h.hexdigest()


def weights_fingerprint(model: nn.Module) -> tuple[float, ...]:
    """A cheap checksum of every parameter and buffer (sum of float64 values)."""
    return tuple(float(t.double().sum()) for t in model.state_dict().values())


@dataclass
class _Entry(Generic[T]):
    value: T
    fingerprint: tuple[float, ...] | None


class CachedModelModified(RuntimeError):
    """A detector changed a cached model in place instead of copying it."""


class ModelCache:
    """Models trained during one run, shared read-only between detectors.

    Parameters
    ----------
    max_entries : int
        Least recently used entries beyond this are dropped (a model holds
        its device-resident data too, so keep few).
    """

    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, ...], _Entry[Any]] = OrderedDict()
        self._digests: dict[int, tuple[weakref.ref[Any], str]] = {}
        self.hits = 0
        self.misses = 0

    def content_key(self, owner: object, *arrays: NDArray[Any] | None) -> str:
        """Digest of ``arrays``, memoised per live ``owner`` object (hashing is not free)."""
        memo = self._digests.get(id(owner))
        if memo is not None and memo[0]() is owner:
            return memo[1]
        digest = array_digest(*arrays)
        self._digests = {k: v for k, v in self._digests.items() if v[0]() is not None}
        self._digests[id(owner)] = (weakref.ref(owner), digest)
        return digest

    def get_or_fit(
        self,
        key: tuple[str, ...],
        fit: Callable[[], T],
        model_of: Callable[[T], nn.Module] | None = None,
    ) -> T:
        """The cached value for ``key``, or ``fit()`` stored under it.

        ``model_of(value)`` names the module whose weights must stay unchanged;
        a hit whose weights differ from when they were stored raises
        :class:`CachedModelModified`.
        """
        entry = self._entries.get(key)
        if entry is not None:
            self._check_unchanged(entry, model_of)
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.value  # type: ignore[no-any-return]
        self.misses += 1
        value = fit()
        fingerprint = None if model_of is None else weights_fingerprint(model_of(value))
        self._entries[key] = _Entry(value, fingerprint)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    @staticmethod
    def _check_unchanged(entry: _Entry[Any], model_of: Callable[[Any], nn.Module] | None) -> None:
        if model_of is None or entry.fingerprint is None:
            return
        if weights_fingerprint(model_of(entry.value)) != entry.fingerprint:
            raise CachedModelModified(
                "a cached model was changed in place; detectors that train must deepcopy it"
            )

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._digests.clear()
