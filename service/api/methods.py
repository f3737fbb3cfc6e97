"""``/methods``: the registered detectors and their params schemas."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from detection.registry import DETECTORS
from service.api.deps import get_principal
from service.api.responses import problems
from service.schemas import MethodRead

router = APIRouter(
    prefix="/methods",
    tags=["methods"],
    dependencies=[Depends(get_principal)],
    responses=problems(401),
)


@router.get("", response_model=list[MethodRead])
def list_methods() -> list[MethodRead]:
    """Every detector a job may name, with the JSON schema its ``params`` must match."""
    entries = (DETECTORS.get(name) for name in DETECTORS.names())
    return [
        MethodRead(name=e.name, description=e.description, params=e.params_schema())
        for e in entries
    ]
