"""Jobs: validation against the registry, commit-then-enqueue, cancellation.

Service vocabulary: :func:`get`, :func:`list_page`, :func:`create`,
:func:`cancel`, :func:`delete`. Functions take the session first, raise :mod:`service.errors`
domain errors and never speak HTTP. :func:`create` commits itself, because
the job row must exist before its message can reach a worker. A ``principal``
scopes them to its tenant: another tenant's job is :class:`NotFound`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy.orm import Session

from detection.registry import DETECTORS, Params, parse_detector_params, requires_clean_reserve
from detection.version import code_version
from service import datasets, idempotency, quotas, webhooks
from service import repository as repo
from service.auth import OPEN, Principal
from service.cost import check_cost, time_limits
from service.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    Unavailable,
    field_error,
    validation_errors,
)
from service.guards import check_finite
from service.idempotency import IdempotentRequest
from service.models import FINISHED_STATES, Dataset, Job
from service.queue import JobQueue
from service.schemas import JobCreate
from service.storage import LocalStorage

log = logging.getLogger(__name__)


def get(
    session: Session, job_id: str, for_update: bool = False, principal: Principal = OPEN
) -> Job:
    job = repo.get_job(session, job_id, for_update=for_update, tenant=principal.visible_tenant)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_page(
    session: Session,
    filters: repo.JobFilters,
    limit: int,
    offset: int,
    principal: Principal = OPEN,
) -> tuple[Sequence[Job], int]:
    """Newest first: one page of the principal's jobs that match ``filters``, and their count."""
    filters = replace(filters, tenant=principal.visible_tenant)
    return repo.list_jobs(session, filters, limit, offset)


def create(
    session: Session,
    queue: JobQueue,
    body: JobCreate,
    idempotency_key: str | None = None,
    principal: Principal = OPEN,
) -> Job:
    """Validate, store (state ``queued``), commit, then enqueue.

    With ``idempotency_key``, the same body returns the job made first (not
    enqueued again); another body under the key is a :class:`Conflict`.

    Raises :class:`InvalidInput` for an unknown method, bad params, params that
    need a clean reserve without one, a mismatched clean dataset, bad ground
    truth or a refused ``callback_url`` / ``webhook_secret``; :class:`NotFound` for
    a missing dataset (or one of another tenant); :class:`QuotaExceeded` when the key
    has its limit of active jobs; :class:`Unavailable` when the queue is down (the
    stored job is then marked failed). The job belongs to its dataset's tenant.
    """
    request = None
    if idempotency_key is not None:
        fingerprint = idempotency.fingerprint(body.model_dump(mode="json"))
        key = idempotency.scoped_key(idempotency_key, principal.tenant)
        request = IdempotentRequest("jobs", key, fingerprint, shown=idempotency_key)
    record = idempotency.replayed(session, request)
    if record is not None:
        return get(session, record.resource_id, principal=principal)
    methods = body.method_list
    resolved = validate_methods(methods, body.params)
    dataset = datasets.get(session, body.dataset_id, principal)
    clean = _clean_dataset(session, body.clean_dataset_id, dataset, principal)
    for name, params in resolved.items():
        check_inputs(name, params, dataset, clean)
    stored = stored_params(resolved)
    passes = check_cost(stored, dataset.n_samples, queue.settings)
    callback = webhooks.job_fields(body.callback_url, body.webhook_secret, queue.settings)
    quotas.check_job(session, principal)
    job = repo.create_job(
        session,
        tenant=dataset.tenant,
        api_key_id=principal.key_id,
        dataset_id=dataset.id,
        clean_dataset_id=body.clean_dataset_id,
        method=methods[0],
        methods=methods,
        params=stored,
        seed=body.seed,
        ground_truth=ground_truth(body, dataset.n_samples),
        code_version=code_version(),
        job_metadata=dict(body.metadata),
        **callback,
    )
    idempotency.remember(session, request, 202, job.id)
    session.commit()
    _enqueue_or_fail(session, queue, job, time_limits(passes, queue.settings))
    return job


def _clean_dataset(
    session: Session, clean_id: str | None, dataset: Dataset, principal: Principal
) -> Dataset | None:
    """The clean reserve, of the dataset's own tenant (an admin cannot mix tenants)."""
    if clean_id is None:
        return None
    clean = datasets.get(session, clean_id, principal)
    if clean.tenant != dataset.tenant:
        raise NotFound(f"dataset {clean_id} not found")
    return clean


def cancel(session: Session, job_id: str, principal: Principal = OPEN) -> Job:
    """queued -> cancelled; running -> cancelling; cancelled/cancelling unchanged.

    Raises :class:`Conflict` for a job that already succeeded or failed.
    """
    job = get(session, job_id, for_update=True, principal=principal)
    try:
        return repo.request_cancel(session, job)
    except repo.InvalidTransition as exc:
        raise Conflict(str(exc)) from None


def delete(
    session: Session, storage: LocalStorage, job_id: str, principal: Principal = OPEN
) -> None:
    """Delete a finished job, its scores and its scratch files; :class:`Conflict` while active."""
    job = get(session, job_id, for_update=True, principal=principal)
    if job.state not in FINISHED_STATES:
        raise Conflict(f"job {job_id} is {job.state}; cancel it first")
    repo.delete_job(session, job)
    session.commit()
    storage.delete_job_scratch(job_id)


def validate_params(
    method: str, params: dict[str, Any], loc: tuple[str | int, ...] = ("body", "params")
) -> Params:
    """The method's validated params model (defaults filled), or :class:`InvalidInput`."""
    check_finite(params, loc)
    check_method(method, ["body", "method"])
    try:
        return parse_detector_params(method, params)
    except ValidationError as exc:
        errors = validation_errors(exc, loc)
        raise InvalidInput(f"invalid params for method {method!r}", errors) from None


def check_method(method: str, loc: list[str | int]) -> None:
    """:class:`InvalidInput` unless ``method`` names a registered detector."""
    if method not in DETECTORS:
        err = field_error(loc, f"unknown method {method!r}", "enum")
        err["ctx"] = {"expected": DETECTORS.names()}
        raise InvalidInput(f"unknown method {method!r}", [err])


def validate_methods(methods: list[str], params: dict[str, Any]) -> dict[str, Params]:
    """Each method's validated params, in order; several methods take ``params`` by name.

    One method reads ``params`` as its own (as with ``method``); several read
    ``params[name]`` (missing: defaults). Raises :class:`InvalidInput` for an
    unknown method, params keyed by a method not listed, or invalid params.
    """
    if len(methods) == 1:
        return {methods[0]: validate_params(methods[0], params)}
    for i, name in enumerate(methods):
        check_method(name, ["body", "methods", i])
    strays = [key for key in params if key not in methods]
    if strays:
        msg = f"with several methods, params are keyed by method name; not listed: {strays}"
        err = field_error(["body", "params", strays[0]], msg, "unknown_method")
        err["ctx"] = {"expected": methods}
        raise InvalidInput(msg, [err])
    out = {}
    for name in methods:
        raw = params.get(name) or {}
        if not isinstance(raw, dict):
            msg = f"params of method {name!r} must be an object"
            raise InvalidInput(msg, [field_error(["body", "params", name], msg, "dict_type")])
        out[name] = validate_params(name, raw, ("body", "params", name))
    return out


def stored_params(resolved: dict[str, Params]) -> dict[str, Any]:
    """What the job row keeps: one method's params as they are, several keyed by name."""
    dumped = {name: p.model_dump(mode="json") for name, p in resolved.items()}
    return next(iter(dumped.values())) if len(dumped) == 1 else dumped


FEATURE_ARCHS = frozenset({"auto", "mlp"})


def _image_archs(
    params: Any, loc: tuple[str, ...] = ("body", "params")
) -> Iterator[list[str | int]]:
    """The ``loc`` of every ``arch`` field (nested too) that names an image network."""
    if not isinstance(params, dict):
        return
    for key, value in params.items():
        if key == "arch" and isinstance(value, str) and value not in FEATURE_ARCHS:
            yield [*loc, key]
        else:
            yield from _image_archs(value, (*loc, key))


def check_inputs(method: str, params: Params, dataset: Dataset, clean: Dataset | None) -> None:
    """Refuse inputs the params cannot run with, before anything is stored."""
    if len(dataset.sample_shape) == 1:
        errors = [
            field_error(
                loc, "an image network cannot run on feature vectors; use mlp or auto", "arch"
            )
            for loc in _image_archs(params.model_dump(mode="json"))
        ]
        if errors:
            raise InvalidInput(f"dataset {dataset.id} holds feature vectors, not images", errors)
    if clean is None and requires_clean_reserve(params):
        msg = f"these params of method {method!r} need a clean reserve: give clean_dataset_id"
        raise InvalidInput(msg, [field_error(["body", "clean_dataset_id"], msg, "missing")])
    if clean is not None and (
        clean.sample_shape != dataset.sample_shape or clean.n_classes != dataset.n_classes
    ):
        raise InvalidInput(
            "the clean dataset must have the same sample shape and number of classes: "
            f"{clean.sample_shape}/{clean.n_classes} vs {dataset.sample_shape}/{dataset.n_classes}"
        )


def _check_indices(name: str, indices: list[int] | None, n_samples: int) -> list[int] | None:
    if indices is None:
        return None
    loc: list[str | int] = ["body", f"ground_truth_{name}_indices"]
    if indices and (min(indices) < 0 or max(indices) >= n_samples):  # before int64 overflows
        msg = f"indices must lie in [0, {n_samples})"
        raise InvalidInput(msg, [field_error(loc, msg, "out_of_range")])
    arr = np.asarray(indices, dtype=np.int64)
    if np.unique(arr).size != arr.size:
        msg = "indices must be unique"
        raise InvalidInput(msg, [field_error(loc, msg, "duplicate")])
    return sorted(indices)


def ground_truth(body: JobCreate, n_samples: int) -> dict[str, Any] | None:
    """The job's stored ground truth (sorted indices), or :class:`InvalidInput`."""
    poison = _check_indices("poison", body.ground_truth_poison_indices, n_samples)
    cover = _check_indices("cover", body.ground_truth_cover_indices, n_samples)
    if poison is None:
        if cover is not None:
            raise InvalidInput("cover indices need poison indices")
        return None
    if cover and np.intersect1d(poison, cover).size:
        raise InvalidInput("poison and cover indices must be disjoint")
    return {"poison_indices": poison, "cover_indices": cover or []}


def _enqueue_or_fail(
    session: Session, queue: JobQueue, job: Job, limits: tuple[float, float] | None = None
) -> None:
    try:
        queue.enqueue(job.id, limits)
    except Exception as exc:
        log.exception("could not enqueue job %s", job.id)
        repo.mark_job_failed(session, job.id, f"could not enqueue: {type(exc).__name__}")
        session.commit()
        raise Unavailable("the job queue is unavailable; the job was marked failed") from None
