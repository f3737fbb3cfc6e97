"""``/jobs/{id}/deliveries``: the webhook delivery log (the work is in :mod:`service.webhooks`)."""

from __future__ import annotations

from fastapi import APIRouter

from service import webhooks
from service.api.deps import PrincipalDep, SessionDep
from service.api.responses import problems
from service.schemas import DeliveryPage, DeliveryRead

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}/deliveries", response_model=DeliveryPage, responses=problems(401, 404))
def list_deliveries(session: SessionDep, principal: PrincipalDep, job_id: str) -> DeliveryPage:
    """Every attempt to deliver the job's webhook, oldest first (empty until the job ends)."""
    rows = webhooks.list_deliveries(session, job_id, principal)
    return DeliveryPage(items=[DeliveryRead.model_validate(r) for r in rows])
