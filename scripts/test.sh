#!/usr/bin/env bash
# README's test command: set up ./.venv (with torchtitan 0.2.2, for the adapter's 0.2 glue test),
# run the whole test suite (distributed tests included); then set up ./.venv-tt03 (torchtitan
# 0.3.0: it cannot share a venv with 0.2.2) and run the adapter's 0.3 glue test there.
# Both adapter tests must run: TITANWARM_REQUIRE_TORCHTITAN turns their "torchtitan version not
# installed" skip into a failure, and a 0.3 run that executes no test fails.
# Extra arguments go to the main pytest run, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
TITANWARM_EXTRAS=dev,torchtitan bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
TITANWARM_REQUIRE_TORCHTITAN=train_spec .venv/bin/python -m pytest -q -ra --durations=15 "$@"

echo "== torchtitan 0.3 adapter test (./.venv-tt03) =="
TITANWARM_VENV=.venv-tt03 TITANWARM_EXTRAS=test-torchtitan03 bash scripts/setup.sh
TITANWARM_REQUIRE_TORCHTITAN=trainer .venv-tt03/bin/python -m pytest -q -ra \
  -p no:cacheprovider tests/test_torchtitan03_adapter.py --junitxml=.venv-tt03/junit.xml
.venv-tt03/bin/python - <<'PY'
import sys
import xml.etree.ElementTree as ET
suite = ET.parse(".venv-tt03/junit.xml").getroot().find("testsuite")
run = int(suite.get("tests")) - int(suite.get("skipped"))
if run == 0:
    sys.exit("scripts/test.sh: the torchtitan 0.3 adapter test ran no test")
PY
