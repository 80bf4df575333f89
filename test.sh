#!/usr/bin/env bash
# The whole test suite: lint, type check, tests. Creates/reuses .venv and installs what it needs.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh requirements-dev.txt
# The optional model upscalers are tested too: spandrel without the torchvision it lists, which
# breaks beside the CPU torch (requirements-upscalers.txt says why).
python -m pip install -q --no-deps spandrel==0.4.2 einops==0.8.2
export DALI_TEST_UPSCALERS=1  # so their tests fail, not skip, should it be missing
# The browser test drives Debian's Chromium (no browser download); install it where we can.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
ruff check .
ruff format --check .
mypy
# One torch thread per process: tests start servers beside themselves on 2 cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
# -m "": every test, the slow, server, browser and PostgreSQL ones too (a plain `pytest` skips
# those for a fast local loop); arguments after it narrow or re-mark the run.
python -m pytest -m "" "$@"
