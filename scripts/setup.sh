#!/usr/bin/env bash
# Set up titanwarm in ./.venv (or $TITANWARM_VENV): torch (pinned, CPU build here), then the package
# with the extras in TITANWARM_EXTRAS (default "dev": pytest, scipy, matplotlib, rustbpe; the tests
# add "torchtitan", and "torchtitan03" in a second venv: the two torchtitan versions conflict).
# Users on GPUs with their own torch: set TITANWARM_TORCH="" to keep the torch already in the venv,
# or TITANWARM_TORCH="torch==X.Y.Z" for another pin. Idempotent and quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv="${TITANWARM_VENV:-.venv}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
torch_req="${TITANWARM_TORCH-torch==2.13.0}"
if [ -n "$torch_req" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$torch_req"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[${TITANWARM_EXTRAS:-dev}]"
