#!/usr/bin/env bash
# The whole test suite: lint, type check, tests. Creates/reuses .venv and installs what it needs.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh requirements-dev.txt
ruff check .
mypy
python -m pytest "$@"
