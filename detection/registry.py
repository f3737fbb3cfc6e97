"""Name-based registries: one for detectors, one for attacks.

A detector is a module with a frozen pydantic params model and a ``detect``
function, registered by name::

    @register_detector("ss", SpectralParams, "Spectral Signatures (Tran et al. 2018)")
    def detect(inp: DetectionInput, params: SpectralParams, ctx: RunContext) -> DetectionResult:
        ...

The same params model validates CLI options, the API's ``params`` body and the
stored job row, so all three accept exactly the same things.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from detection.types import DetectionInput, DetectionResult, RunContext


class Params(BaseModel):
    """Base of every params model: frozen, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DetectorParams(Params):
    """Fields every detector understands.

    Detectors that flag by a budget or a clean-reserve FPR subclass
    :class:`detection.thresholds.BudgetParams` / ``ThresholdParams`` instead.
    """

    device: str | None = Field(
        None, description="torch device; default: cuda when available, else cpu."
    )

    def requires_clean_reserve(self) -> bool:
        """True when these params cannot run without a clean reserve (``clean_x``).

        Callers (the API at ``POST /jobs``, the CLI) refuse such a request before
        any work. The default reads a ``threshold`` field (see
        :class:`detection.thresholds.ThresholdParams`): ``"clean_fpr"`` needs a
        reserve. A detector with other needs overrides this on its params model.
        """
        return getattr(self, "threshold", None) == "clean_fpr"


P = TypeVar("P", bound=Params)
F = TypeVar("F", bound=Callable[..., Any])
DetectFn = Callable[[DetectionInput, Any, RunContext], DetectionResult]


class UnknownNameError(KeyError):
    """Lookup of a name nobody registered."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    params_model: type[Params]
    fn: F
    description: str

    def parse(self, raw: Mapping[str, Any] | None) -> Params:
        """Validate raw params (raises pydantic.ValidationError)."""
        return self.params_model.model_validate(dict(raw or {}))

    def params_schema(self) -> dict[str, Any]:
        return self.params_model.model_json_schema()


class Registry(Generic[F]):
    """A mapping name -> Entry, filled by importing ``package``'s modules."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry[F]] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def register(self, name: str, params_model: type[Params], description: str) -> Callable[[F], F]:
        def decorate(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, params_model, fn, description)
            return fn

        return decorate

    def _load(self) -> None:
        # Under a lock and marked loaded only after the import: a second thread
        # (the API's request pool) must not see the registry half-filled.
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                importlib.import_module(self.package)
                self._loaded = True

    def get(self, name: str) -> Entry[F]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries


DETECTORS: Registry[DetectFn] = Registry("detector", "detection.defenses")
register_detector = DETECTORS.register


def get_detector(name: str) -> Entry[DetectFn]:
    return DETECTORS.get(name)


def parse_detector_params(name: str, raw: Mapping[str, Any] | None) -> Params:
    """Validate ``raw`` against detector ``name``'s params model."""
    return DETECTORS.get(name).parse(raw)


def requires_clean_reserve(params: Params) -> bool:
    """Whether validated detector ``params`` need a clean reserve to run."""
    return isinstance(params, DetectorParams) and params.requires_clean_reserve()


def run_detector(
    name: str, inp: DetectionInput, raw_params: Mapping[str, Any] | None, ctx: RunContext
) -> DetectionResult:
    entry = DETECTORS.get(name)
    return entry.fn(inp, entry.parse(raw_params), ctx)
