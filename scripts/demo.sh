#!/usr/bin/env bash
# README command 1: set up the venv if needed, then run the end-to-end demo on embedded
# defaults (SQLite + a serverless Celery broker; no Postgres or Redis needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/poisonscan demo "$@"
