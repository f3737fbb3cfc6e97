#!/usr/bin/env bash
# README command 2 (and CI): set up the venv if needed, lint, type-check, run every test.
# Integration tests use PostgreSQL (127.0.0.1:5432, db `test`) and Redis (127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
echo "== import contracts"; lint-imports
echo "== pytest"; pytest -m "slow or not slow" --durations=15 "$@"
