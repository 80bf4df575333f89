#!/usr/bin/env bash
# Start the Dali studio on http://127.0.0.1:8000 (DALI_HOST / DALI_PORT or --host / --port to
# change; DALI_GRADIO=1 adds the Gradio UI at /gradio, after pip install -r requirements-gradio.txt).
# Creates/reuses .venv and installs what it needs.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh requirements.txt
exec python dali_app.py "$@"
