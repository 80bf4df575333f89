#!/usr/bin/env bash
# Start the Dali studio on http://127.0.0.1:8000 (DALI_HOST / DALI_PORT to change).
# Creates/reuses .venv and installs what it needs.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh requirements.txt
exec python -m stable_diffusion_api "$@"
