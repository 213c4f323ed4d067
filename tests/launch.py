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

# glibc's heap-consistency aborts. torch 2.13's gloo path for DTensor's functional all-gather
# corrupts the heap now and then (measured: 1 launch in 80 of the TP curvature-parity worker, the
# abort inside ``all_gather_single`` during a double backward; it failed CI once). Launches of
# workers that only compute and write their result (no checkpoints a second launch would resume
# from) pass ``rerun_on_heap_abort`` and are run once more after one of these, with a warning.
HEAP_ABORTS = ("malloc(): ", "free(): ", "malloc_consolidate(): ", "corrupted size vs. prev_size",
               "double free or corruption")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list[str], timeout: float = 300, env: dict | None = None,
             check: bool = True, rerun_on_heap_abort: bool = False) -> subprocess.CompletedProcess:
    """Run ``torchrun --nproc_per_node=nproc <args>`` from the repo root; raise with the
    output on a non-zero exit when ``check``. A worker killed by a native fault (SIGSEGV,
    SIGABRT from glibc's heap checks) prints every thread's Python stack (faulthandler); with
    ``rerun_on_heap_abort``, a launch that died of a glibc heap abort (``HEAP_ABORTS``) runs once
    more."""
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
    heap_abort = next((m for m in HEAP_ABORTS if m in proc.stderr), None)
    if rerun_on_heap_abort and proc.returncode != 0 and heap_abort:
        warnings.warn(f"torchrun {' '.join(args)}: a worker aborted in glibc's heap check "
                      f"({heap_abort.strip()!r}); running it once more")
        cmd, proc = launch()
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc
