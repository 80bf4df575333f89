#!/usr/bin/env bash
# Start Dali. Creates/reuses .venv and installs what it needs.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh requirements.txt
exec python -m sd_core "$@"
