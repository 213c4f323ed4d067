#!/usr/bin/env bash
# README's test command: set up ./.venv (with the torchtitan extra, for the adapter test), then run
# the whole test suite (distributed tests included).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
TITANWARM_EXTRAS=dev,torchtitan bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
