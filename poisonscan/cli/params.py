"""Parsing of ``--param key=value`` options shared by the commands."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def parse_param_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b.c=[1,2]", "d=text"]`` -> nested dict; values parsed as JSON when possible."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects key=value, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
