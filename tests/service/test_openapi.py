"""The OpenAPI document describes what the server sends; docs pages load no CDN asset."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from service.config import Settings
from service.models import JobState

PROBLEM = "application/problem+json"
OPERATIONS = {
    "create_dataset",
    "import_dataset",
    "list_datasets",
    "get_dataset",
    "create_job",
    "list_jobs",
    "get_job",
    "cancel_job",
    "delete_job",
    "delete_dataset",
    "list_scores",
    "export_scores_csv",
    "export_scores_parquet",
    "list_methods",
    "healthz",
    "readyz",
}


def operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for item in doc["paths"].values() for op in item.values()}


def test_operation_ids_are_explicit_and_errors_are_problems(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    ops = operations(doc)

    assert set(ops) >= OPERATIONS
    for name, op in ops.items():
        html = "text/html" in op["responses"].get("200", {}).get("content", {})
        for status, response in op["responses"].items():
            if int(status) == 404 and html:  # a page's missing job is a page (the report)
                assert list(response["content"]) == ["text/html"], (name, status)
            elif int(status) >= 400:
                content = response["content"]
                assert list(content) == [PROBLEM], (name, status)
                assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert {"200", "201", "409", "413", "422"} <= set(ops["create_dataset"]["responses"])
    assert {"200", "202", "404", "409"} <= set(ops["cancel_job"]["responses"])
    assert {"404", "422", "503"} <= set(ops["create_job"]["responses"])
    assert "503" in ops["readyz"]["responses"]


def test_schemas_are_typed(client: TestClient, settings: Settings) -> None:
    doc = client.get("/openapi.json").json()
    schemas, ops = doc["components"]["schemas"], operations(doc)
    job = schemas["JobRead"]["properties"]

    assert job["state"] == {"$ref": "#/components/schemas/JobState"}
    assert set(schemas["JobState"]["enum"]) == {s.value for s in JobState}
    assert {r["$ref"].rsplit("/", 1)[1] for r in job["params"]["anyOf"]} >= {"SpectralParams"}
    assert "n_flagged" in schemas["JobSummary"]["properties"]
    assert "tpr" in schemas["JobMetrics"]["properties"]
    upload = schemas["Body_create_dataset"]["properties"]["file"]
    assert (upload["type"], upload["format"]) == ("string", "binary")
    assert "text/csv" in ops["export_scores_csv"]["responses"]["200"]["content"]
    parquet = ops["export_scores_parquet"]["responses"]["200"]["content"]
    assert "application/vnd.apache.parquet" in parquet
    limit = next(p for p in ops["list_scores"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == settings.max_page_size
    assert str(settings.max_upload_bytes) in ops["create_dataset"]["description"]


def test_limit_above_the_page_size_is_422_not_capped(
    client: TestClient, settings: Settings
) -> None:
    resp = client.get("/jobs/any/scores", params={"limit": settings.max_page_size + 1})

    assert resp.status_code == 422
    assert resp.headers["content-type"] == PROBLEM
    assert resp.json()["errors"][0]["loc"] == ["query", "limit"]


def test_docs_pages_use_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html.text)
        assert urls and all(u.startswith("/docs-assets/") for u in urls), urls
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url
