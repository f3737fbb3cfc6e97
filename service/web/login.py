"""``/ui/login``: a form that checks an API key and keeps it in an HttpOnly cookie.

With auth on, the pages accept the key from the cookie (reads only, see
:func:`service.api.deps.get_principal`) and show what the key's tenant may see;
a page without a valid key redirects here. The cookie is HttpOnly (no script
reads it), ``SameSite=Strict`` (no other site sends it) and ``Secure`` over HTTPS.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from service import auth
from service.api.deps import KEY_COOKIE, SessionDep, SettingsDep
from service.errors import Unauthorized
from service.web.templating import render

router = APIRouter(prefix="/ui", include_in_schema=False)
HOME = "/ui/jobs"
COOKIE_MAX_AGE_S = 8 * 3600


def safe_next(target: str | None) -> str:
    """Only a dashboard path: a login link cannot send the browser elsewhere."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return HOME


@router.get("/login", response_class=HTMLResponse)
def login_form(next: str | None = None) -> HTMLResponse:
    return HTMLResponse(render("login.html", next=safe_next(next), error=None))


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: Annotated[str, Form(max_length=200)],
    next: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    """Check the key, set the cookie and go on to ``next`` (303); 401 with the form again."""
    target = safe_next(next)
    try:
        auth.authenticate(session, key.strip(), settings)
    except Unauthorized as exc:
        html = render("login.html", next=target, error=exc.detail)
        return HTMLResponse(html, status_code=401, headers=exc.headers)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        KEY_COOKIE,
        key.strip(),
        max_age=COOKIE_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(KEY_COOKIE, path="/", httponly=True, samesite="strict")
    return response
