"""The client's request bodies and queries (no server: what it would send)."""

from __future__ import annotations

from poisonscan.client import Job, _export_query, _page_query, job_body


def test_job_body_names_one_method_or_several() -> None:
    one = job_body("d1", "ct", {"preset": "fast"}, {"seed": 3, "callback_url": None})
    assert one == {"dataset_id": "d1", "method": "ct", "params": {"preset": "fast"}, "seed": 3}
    several = job_body("d1", ["ss", "ac"], {"ss": {}}, {"callback_url": "https://hooks.example/x"})
    assert several["methods"] == ["ss", "ac"] and "method" not in several
    assert several["callback_url"] == "https://hooks.example/x"


def test_score_queries_select_a_method() -> None:
    assert _page_query("index", None, 10, None) == {"order": "index", "limit": 10}
    query = _page_query("score_desc", True, 5, "c", "ac")
    assert query == {
        "order": "score_desc",
        "limit": 5,
        "method": "ac",
        "flagged": "true",
        "cursor": "c",
    }
    assert _export_query(None) == {"order": "index"}
    assert _export_query("ensemble") == {"order": "index", "method": "ensemble"}


def test_job_reads_multi_method_and_webhook_fields() -> None:
    job = Job.model_validate(
        {
            "id": "j",
            "dataset_id": "d",
            "method": "ss",
            "methods": ["ss", "ac"],
            "score_methods": ["ss", "ac", "ensemble"],
            "state": "queued",
            "webhook_secret": "whsec_abc",
        }
    )
    assert job.score_methods[-1] == "ensemble" and job.webhook_secret == "whsec_abc"
