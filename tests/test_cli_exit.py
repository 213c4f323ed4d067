"""``exit_after_run``: a distributed process ends with the run's status, its output flushed, and
without interpreter teardown (where torch's leftover gloo threads can abort a finished run); a
single process exits normally."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.launch import REPO

SCRIPT = """
import atexit, logging, sys
from titanwarm.cli import exit_after_run
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
atexit.register(lambda: print("teardown ran", flush=True))
print("run output", end="")  # no newline and no flush: exit_after_run must flush it
logging.getLogger("t").info("log line")
exit_after_run(int(sys.argv[1]))
"""


@pytest.mark.parametrize("world", ["1", "2"])
@pytest.mark.parametrize("status", [0, 3])
def test_exit_after_run(world: str, status: int) -> None:
    env = {**os.environ, "WORLD_SIZE": world, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(status)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == status
    assert proc.stdout.startswith("run output") and "log line" in proc.stderr
    assert ("teardown ran" in proc.stdout) == (world == "1")
