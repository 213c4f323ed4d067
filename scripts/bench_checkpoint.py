"""Benchmark: checkpoint size, save time (and the part that blocks training) and load time.

For each flavor and ``async_mode``, trains a few steps on 2 processes (FSDP2, CPU) saving every 2
steps, then resumes for one more step, and reads the ``checkpoint`` / ``resume`` records the
trainer writes to metrics.jsonl. Prints one table row per (flavor, mode): the median over saves.

    python scripts/bench_checkpoint.py [--flavors debugmodel depth16] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for torchrun's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc: int, flavor: str, mode: str, folder: Path, steps: int) -> None:
    """One training run writing checkpoints into ``folder`` (resumes when it already holds some)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "train.py",
           "--config", "train_configs/debug_model.toml", "--model.flavor", flavor,
           "--training.device", "cpu", "--training.seq_len", "64", "--training.local_batch_size", "2",
           "--training.steps", str(steps), "--metrics.log_freq", "1",
           "--metrics.enable_tensorboard", "false", "--validation.enable", "false",
           "--job.dump_folder", str(folder), "--checkpoint.enable", "true",
           "--checkpoint.interval", "2", "--checkpoint.async_mode", mode]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def records(folder: Path, kind: str) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavors", nargs="+", default=["debugmodel", "depth16"])
    parser.add_argument("--modes", nargs="+", default=["disabled", "async"])
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.nproc} processes (FSDP2, CPU, gloo); median over the saves of each run")
    print(f"{'flavor':>11} {'async_mode':>10} {'size MiB':>9} {'save s':>7} {'blocking s':>10} {'load s':>7}")
    for flavor in args.flavors:
        for mode in args.modes:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                run(args.nproc, flavor, mode, folder, steps=4)
                run(args.nproc, flavor, mode, folder, steps=5)  # resumes from step 4
                saves, loads = records(folder, "checkpoint"), records(folder, "resume")
                for r in saves:  # a synchronous save blocks the loop for all of its time
                    r.setdefault("blocking_s", r["save_s"])
                med = lambda key: statistics.median(r[key] for r in saves)  # noqa: E731
                print(f"{flavor:>11} {mode:>10} {med('size_mib'):9.1f} {med('save_s'):7.2f} "
                      f"{med('blocking_s'):10.2f} {loads[0]['load_s']:7.2f}")


if __name__ == "__main__":
    main()
