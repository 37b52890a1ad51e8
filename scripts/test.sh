#!/usr/bin/env bash
# Sets up the environment when needed, then runs the linter and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# The study report is checked in headless Chromium (Debian's package); install it when
# missing and possible. Without it that one check is skipped with its reason.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  echo "dnnlab: installing Debian's chromium for the report rendering test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
    >/dev/null 2>&1 || echo "dnnlab: chromium could not be installed; that test will skip" >&2
fi
ruff check src tests benchmarks scripts
ruff format --check src tests benchmarks scripts
# One worker per core (pytest-xdist; each worker's torch takes its share of the threads,
# tests/conftest.py); tests are handed out in runs of a module and an idle worker takes
# over the other's queue ("worksteal"). `bash scripts/test.sh -n 0` runs them in one process.
python -m pytest -q -n auto --dist worksteal "$@"
