"""Spawn real multi-process runs (torchrun, gloo) from tests and collect their output.

Distributed tests write a small worker script (or call a module) and use ``torchrun`` here so
that every test really starts ``nproc`` processes with their own process group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Native aborts of gloo workers that are torch's, not the code under test (torch 2.13, CPU):
# - glibc heap-consistency aborts: the gloo path of DTensor's functional all-gather corrupts the
#   heap now and then (1 of 80 standalone launches of the TP curvature-parity worker, inside
#   ``all_gather_single`` during a double backward);
# - "terminate called without an active exception" at interpreter exit: gloo threads that
#   ``destroy_process_group`` leaves running (see ``titanwarm.cli.exit_after_run``, which the
#   workers call to skip that teardown; the rerun stays as a second guard).
# Launches of workers that only compute and write a result (no checkpoint a second launch would
# resume from) pass ``rerun_on_native_abort`` and run once more after one of these, with a warning.
NATIVE_ABORTS = ("malloc(): ", "free(): ", "malloc_consolidate(): ", "corrupted size vs. prev_size",
                 "double free or corruption", "terminate called without an active exception")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list[str], timeout: float = 300, env: dict | None = None,
             check: bool = True, rerun_on_native_abort: bool = False) -> subprocess.CompletedProcess:
    """Run ``torchrun --nproc_per_node=nproc <args>`` from the repo root; raise with the
    output on a non-zero exit when ``check``. A worker killed by a native fault (SIGSEGV,
    SIGABRT from glibc's heap checks) prints every thread's Python stack (faulthandler); with
    ``rerun_on_native_abort``, a launch that died of one of torch's native aborts
    (``NATIVE_ABORTS``) runs once more."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.setdefault("PYTHONFAULTHANDLER", "1")
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})

    def launch() -> tuple[list[str], subprocess.CompletedProcess]:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
        return cmd, subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                                   timeout=timeout)

    cmd, proc = launch()
    abort = next((m for m in NATIVE_ABORTS if m in proc.stderr), None)
    if rerun_on_native_abort and proc.returncode != 0 and abort:
        warnings.warn(f"torchrun {' '.join(args)}: a worker died of a native abort "
                      f"({abort.strip()!r}); running it once more")
        cmd, proc = launch()
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc
