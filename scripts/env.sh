#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv when it is missing or
# when pyproject.toml changed since it was built. Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
stamp="$venv/.dnnlab-stamp"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$py" -c 'import sys; assert sys.version_info >= (3, 10), "dnnlab needs Python >= 3.10"'
  echo "dnnlab: setting up $venv (first run only; installs PyTorch, a few minutes)" >&2
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[dev]" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
