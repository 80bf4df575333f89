# Sourced by run.sh and test.sh: create or reuse .venv and install what $1 lists.
# Re-installs only when the requirements file changed since the last install.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$here/$1"
venv="$here/.venv"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
stamp="$venv/.installed-$(basename "$req")"
digest="$(cat "$here"/requirements*.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  "$venv/bin/python" -m pip install -q -r "$req"
  echo "$digest" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
