"""Run a study's training runs as child processes, ``n_parallel`` at a time, resumably.

Shared by the study scripts (``reproduce_stability.py``, ``edge_of_stability.py``,
``lr_sensitivity.py``): each run is a folder plus a command; a folder holding ``run.json`` is done
and skipped, a folder without it (an interrupted run) is started over. ``run.json`` records the
run's metadata, return code, wall time, CPU time (user + system, from ``wait4``: comparable between
runs on a shared machine, unlike wall time) and the exact command. Children run single-threaded
(OMP_NUM_THREADS=1), optionally under ``nice``. Also the small helpers the study reports share
(reading metrics, formatting times, matplotlib without a display).

**Committed runs.** ``outputs/`` is not tracked, so a study's raw records would die with the machine
that made them (sessions 1-7 of issue 17 lost theirs that way) and its figures could then only be
remade by rerunning everything. Every finished run under ``outputs/`` is therefore also kept in
``docs/results/runs/`` (same relative path: ``run.json`` and ``metrics.jsonl.zst``, the metrics
compressed with zstd, ~5x); :func:`sync_archive` copies a run there when it finishes and back into
``outputs/`` when a fresh checkout lacks it, so ``--report-only`` works from the repository alone and
a resumed study skips what is committed. Runs outside ``outputs/`` (timing probes in ``/tmp``) are
not kept.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ROOT / "outputs"
"""Where the studies write their runs (not tracked)."""
ARCHIVE = ROOT / "docs" / "results" / "runs"
"""The committed copies of the finished runs under ``OUTPUTS`` (same relative paths)."""


@dataclass
class Run:
    folder: Path
    """Output folder (the child's job.dump_folder); ``run.json`` is written here when it ends."""
    command: list[str]
    """The child command, run from the repository root."""
    meta: dict = field(default_factory=dict)
    """Copied into ``run.json`` (method, lr, seed, ...)."""


def run_pending(runs: list[Run], n_parallel: int, nice: int = 0,
                clear: tuple[str, ...] = ("metrics.jsonl", "train.log")) -> None:
    """Run every run whose folder has no ``run.json``, ``n_parallel`` at a time; files in ``clear``
    left by an interrupted attempt are removed first. Child output goes to ``train.log``. A finished
    run whose stored metadata differs from ``run.meta`` stops everything (exit message)."""
    pending = []
    for run in runs:
        sync_archive(run.folder)
        done = run.folder / "run.json"
        if done.exists():
            stored = json.loads(done.read_text())
            differ = {k: (stored.get(k), v) for k, v in run.meta.items() if stored.get(k) != v}
            if differ:  # e.g. the same folder asked for with another step count
                raise SystemExit(f"{done} was made with other settings (stored, asked): {differ}; "
                                 "use another --out")
            print(f"skip (done): {run.folder}", flush=True)
        else:
            pending.append(run)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    prefix = ["nice", "-n", str(nice)] if nice else []
    running: list[tuple[subprocess.Popen, Run, float, object]] = []
    while pending or running:
        while pending and len(running) < n_parallel:
            run = pending.pop(0)
            for name in clear:
                (run.folder / name).unlink(missing_ok=True)
            run.folder.mkdir(parents=True, exist_ok=True)
            log = open(run.folder / "train.log", "w")
            print(f"start: {shlex.join(run.command)}", flush=True)
            proc = subprocess.Popen(prefix + run.command, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            running.append((proc, run, time.time(), log))
        time.sleep(2)
        still = []
        for proc, run, t0, log in running:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage: the child's CPU time
            if pid == 0:
                still.append((proc, run, t0, log))
                continue
            rc = proc.returncode = os.waitstatus_to_exitcode(status)
            log.close()
            elapsed = time.time() - t0
            (run.folder / "run.json").write_text(json.dumps(
                {**run.meta, "returncode": rc, "elapsed_s": elapsed,
                 "cpu_s": usage.ru_utime + usage.ru_stime, "machine": machine(),
                 "command": "OMP_NUM_THREADS=1 " + shlex.join(run.command)}, indent=1))
            sync_archive(run.folder)
            print(f"done rc={rc} {elapsed:.0f}s: {run.folder}", flush=True)
        running = still


def machine() -> dict:
    """What made a run: the CPU model, its vector instruction set as torch uses it, the host's CPU
    count and the torch version (the driver's, which is the runs' unless ``--python`` says
    otherwise). Reruns on one machine are bit-identical, but float rounding differs between CPUs
    (their vector kernels), and at a high LR that grows into different trajectories (issue 17: 0.04
    nats apart after 1,000 steps), so a committed run says where it ran."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "vector_isa": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__}


def archived(folder: Path) -> Path | None:
    """The committed copy of run ``folder`` (None for a folder outside ``OUTPUTS``)."""
    folder = folder.resolve()
    return ARCHIVE / folder.relative_to(OUTPUTS) if folder.is_relative_to(OUTPUTS) else None


def sync_archive(folder: Path) -> None:
    """Make the finished run ``folder`` and its committed copy agree: a finished run (``run.json``)
    that is not committed yet is copied into ``ARCHIVE``; a committed run missing from ``folder`` (a
    fresh checkout, or an interrupted attempt of the same run) is restored there, ``run.json`` last,
    so a half-restored folder still reads as unfinished."""
    import zstandard

    copy = archived(folder)
    if copy is None:
        return
    if (folder / "run.json").exists():
        if not (copy / "run.json").exists():
            copy.mkdir(parents=True, exist_ok=True)
            if (folder / "metrics.jsonl").exists():
                data = (folder / "metrics.jsonl").read_bytes()
                (copy / "metrics.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(data))
            (copy / "run.json").write_text((folder / "run.json").read_text())
    elif (copy / "run.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.jsonl").unlink(missing_ok=True)
        if (copy / "metrics.jsonl.zst").exists():
            data = zstandard.ZstdDecompressor().decompress((copy / "metrics.jsonl.zst").read_bytes())
            (folder / "metrics.jsonl").write_bytes(data)
        (folder / "run.json").write_text((copy / "run.json").read_text())


def read_records(folder: Path, kind: str = "step") -> list[dict]:
    """The ``kind`` records of ``folder/metrics.jsonl`` (non-finite numbers as written: NaN/inf)."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == kind]


def crashed(folder: Path, meta: dict) -> bool:
    """Whether the finished run in ``folder`` crashed: it exited non-zero without the trainer's
    ``skip`` records (the trainer skips a non-finite step and stops after repeated ones, which is a
    divergence). A crash is a bug to read in ``train.log``, not a divergence: the analyses leave it
    out and say so here, on stderr."""
    if meta.get("returncode") in (0, None) or read_records(folder, "skip"):
        return False
    print(f"{relative(folder)}: crashed (exit {meta['returncode']}, no non-finite-step stop), left out; "
          "see its train.log, move the folder away to rerun it", file=sys.stderr)
    return True


def relative(path: Path) -> str:
    """``path`` relative to the repository root when inside it (for commands and dump folders)."""
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def minutes(meta: dict) -> str:
    """"wall / CPU min" of a finished run (CPU time is missing for runs recorded before it was)."""
    if meta.get("elapsed_s") is None:
        return "running"
    cpu = meta.get("cpu_s")
    return f"{meta['elapsed_s'] / 60:.1f} / {cpu / 60:.1f} min" if cpu is not None else f"{meta['elapsed_s'] / 60:.1f} min / n/a"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    print(f"wrote {relative(path)}", file=sys.stderr)
