"""The Jinja2 environment of the pages and the report (templates ship inside the package)."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape


def _score(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def _short(s: str) -> str:
    return s[:8]


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("service.web", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["score"] = _score
    env.filters["short"] = _short
    return env


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)
