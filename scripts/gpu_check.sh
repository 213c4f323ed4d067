#!/usr/bin/env bash
# The first GPU check (about 8 minutes on one GPU): bf16 + compile + curvature tracker on the debug
# model and a 1B-shaped model; prints tokens/s, MFU, peak memory, half- vs full-depth step time,
# tracking overhead and λmax in bf16 vs fp32. `--cpu`: a dry run with tiny shapes (CI runs it).
# See scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_check.py "$@"
