"""scripts/gpu_check.sh --cpu: the GPU check's dry run (tiny shapes on CPU) runs end to end and
prints every row of its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu():
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1"), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("gpu_check: CPU dry run")
    for row in ("tokens/s (C)", "MFU (C)", "peak memory GiB (C)", "tracking overhead", "λmax bf16 (A) / fp32 (B)",
                "1B-shape full depth", "1B-shape half depth", "half / full depth step time"):
        assert row in out, out
