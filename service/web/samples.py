"""``GET /datasets/{id}/samples/{i}.png``: one stored sample decoded to PNG."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import PrincipalDep
from service.api.responses import binary, problems
from service.db import SessionDep
from service.web.data import DatasetCache, sample_png

router = APIRouter(tags=["datasets"], responses=problems(401))


def dataset_cache(request: Request) -> DatasetCache:
    cache: DatasetCache = request.app.state.dataset_cache
    return cache


@router.get(
    "/datasets/{dataset_id}/samples/{index}.png",
    response_class=Response,
    responses={200: binary("image/png", "The sample as a PNG image."), **problems(404, 422)},
)
def get_sample_png(
    request: Request, principal: PrincipalDep, session: SessionDep, dataset_id: str, index: int
) -> Response:
    """Sample ``index`` as PNG: 404 outside ``[0, N)``, 422 for a feature-vector dataset."""
    png = sample_png(session, dataset_cache(request), dataset_id, index, principal)
    # Stored datasets are content-addressed and never change; with keys, only the
    # browser may keep them (a shared cache would serve them to anyone).
    scope = "private" if request.app.state.settings.auth_enabled else "public"
    headers = {"Cache-Control": f"{scope}, max-age=86400, immutable"}
    return Response(png, media_type="image/png", headers=headers)
