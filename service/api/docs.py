"""The OpenAPI document as the contract, and its Swagger UI / ReDoc pages with local assets.

FastAPI's document is post-processed once: error responses are problem+json,
the upload is a ``format: binary`` field, ``params`` is typed by the
registered methods' models, and the configured limits are stated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from detection.registry import DETECTORS
from service.api.responses import PROBLEM_REF
from service.config import Settings
from service.errors import PROBLEM_JSON
from service.schemas import Problem

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs-assets"
REF = "#/components/schemas/{model}"
DEFAULT_VALIDATION = "#/components/schemas/HTTPValidationError"
Doc = dict[str, Any]


def install_docs(app: FastAPI, settings: Settings) -> None:
    """``/docs`` and ``/redoc`` served without a CDN; ``app.openapi()`` returns the contract."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    def openapi() -> Doc:
        if app.openapi_schema is None:
            app.openapi_schema = contract(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def limits_text(settings: Settings) -> str:
    return (
        f"Limits: an upload holds at most {settings.max_upload_bytes} bytes (413 above); "
        f"a score page at most {settings.max_page_size} rows (422 above). "
        "Every error is RFC 9457 `application/problem+json`. " + auth_text(settings)
    )


def auth_text(settings: Settings) -> str:
    if not settings.auth_enabled:
        return "Auth: off on this server (open local mode; every row in tenant `default`)."
    return (
        "Auth: every operation needs an API key (`Authorization: Bearer <key>` or "
        "`X-API-Key`; 401 without one). Rows belong to the key's tenant: another tenant's id "
        "is 404. Per-key quotas (active jobs, uploads per minute, stored bytes) answer 429 "
        "with `Retry-After`."
    )


def contract(app: FastAPI, settings: Settings) -> Doc:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=limits_text(settings),
        routes=app.routes,
    )
    schemas: Doc = doc.setdefault("components", {}).setdefault("schemas", {})
    add_model(schemas, Problem)
    problem_validation_errors(doc, schemas)
    binary_uploads(schemas)
    typed_params(schemas)
    state_limits(doc, settings)
    return doc


def add_model(schemas: Doc, model: type[BaseModel]) -> str:
    """Put ``model`` (and the models it uses) in ``components.schemas``; returns its name."""
    schema = model.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return model.__name__


def _operations(doc: Doc) -> list[Doc]:
    return [op for item in doc.get("paths", {}).values() for op in item.values()]


def problem_validation_errors(doc: Doc, schemas: Doc) -> None:
    """FastAPI documents 422 as its own body; the server sends problem+json."""
    for op in _operations(doc):
        response = op.get("responses", {}).get("422")
        if response is not None and DEFAULT_VALIDATION in str(response):
            response["description"] = "Invalid input: the fields at fault are in `errors`."
            response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)


def binary_uploads(schemas: Doc) -> None:
    """OpenAPI 3.1 ``contentMediaType`` files become ``format: binary``, which generators read."""
    for schema in schemas.values():
        for prop in schema.get("properties", {}).values():
            if prop.get("type") == "string" and "contentMediaType" in prop:
                del prop["contentMediaType"]
                prop["format"] = "binary"


def typed_params(schemas: Doc) -> None:
    """``params`` is one of the registered methods' params models (chosen by ``method``)."""
    refs = [
        {"$ref": REF.format(model=add_model(schemas, DETECTORS.get(name).params_model))}
        for name in DETECTORS.names()
    ]
    for name in ("JobCreate", "JobRead"):
        prop = schemas[name]["properties"]["params"]
        prop.pop("additionalProperties", None)
        prop.pop("type", None)
        prop["anyOf"] = refs
        prop["description"] = "The params model of `method` (see GET /methods); defaults filled."


def state_limits(doc: Doc, settings: Settings) -> None:
    """The configured page size and upload size, where the parameters are."""
    for op in _operations(doc):
        for param in op.get("parameters", []):
            if op.get("operationId") == "list_scores" and param["name"] == "limit":
                param["schema"]["maximum"] = settings.max_page_size
        if op.get("operationId") == "create_dataset":
            op["description"] = (
                op.get("description", "") + f"\n\nAt most {settings.max_upload_bytes} bytes."
            )
