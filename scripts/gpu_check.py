"""The first check to run on a GPU (or, with ``--cpu``, a dry run with tiny shapes on CPU).

Runs train.py five times and prints one table:
  A. debug model, bf16, compile, curvature tracker on every step, LR ~0 (weights stay the same);
  B. A in float32: λmax on (nearly) the same weights, bf16 vs fp32;
  C. A without the tracker: tokens/s, MFU, peak memory; A vs C is the tracking overhead per
     tracked step;
  D/E. a 1B-shaped model (seq 1024) at full depth, and at half depth (architecture warm-up with half
     the blocks locked and skipped): step times, MFU, peak memory.
With two or more GPUs visible the runs use torchrun on 2 of them (FSDP2 over NCCL); with one GPU they
are single-process (bf16 autocast; NCCL and FSDP2 then need a second GPU). Budget: about 8 minutes on
one GPU. Results and the date go to docs/results/gpu.md by hand.

    bash scripts/gpu_check.sh            # on a GPU machine
    bash scripts/gpu_check.sh --cpu      # dry run: tiny shapes, float32, no compile (CI runs it)
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

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tag: str, args: list[str], dump: Path, nproc: int) -> list[dict]:
    """One train.py run; returns its step records."""
    out = dump / tag
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + ["train.py", *args, "--job.dump_folder", str(out)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"gpu_check: run {tag} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "step"]


def step_seconds(records: list[dict], tokens_per_step: int, skip: int) -> float:
    """Median seconds per step after the first ``skip`` steps (compile, warm-up)."""
    times = [tokens_per_step / r["tokens_per_sec"] for r in records if r["step"] > skip]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on CPU with tiny shapes")
    a = parser.parse_args()
    import torch

    gpus = 0 if a.cpu else torch.cuda.device_count()
    if not a.cpu and gpus == 0:
        sys.exit("gpu_check: no CUDA device visible (use --cpu for the dry run)")
    nproc = 2 if gpus >= 2 else 1
    if a.cpu:
        device = ["--training.device", "cpu", "--compile.enable", "false"]
        small = ["--model.flavor", "tinymodel", "--training.seq_len", "64", "--training.local_batch_size", "2"]
        big = ["--model.flavor", "depth8", "--training.seq_len", "128", "--training.local_batch_size", "2"]
        steps, skip = 4, 1
    else:
        device = ["--training.device", "cuda", "--compile.enable", "true"]
        small = ["--training.seq_len", "1024", "--training.local_batch_size", "8"]
        big = ["--model.flavor", "1B", "--training.seq_len", "1024", "--training.local_batch_size", "4",
               "--activation_checkpoint.mode", "selective"]
        steps, skip = 12, 4
    common = ["--config", "train_configs/debug_model.toml", *device, "--metrics.log_freq", "1",
              "--metrics.enable_tensorboard", "false", "--metrics.console", "false",
              "--validation.enable", "false", "--training.steps", str(steps),
              "--lr_scheduler.warmup_steps", "1"]
    bf16 = ["--training.mixed_precision_param", "bfloat16"]
    tracked = ["--curvature.enabled", "true", "--curvature.interval", "1", "--optimizer.lr", "1e-12"]
    half = ["--depth_schedule.enabled", "true", "--depth_schedule.initial_fraction", "0.5",
            "--depth_schedule.start", str(steps - 1), "--depth_schedule.interval", "1",
            "--depth_schedule.group_size", "64"]  # every locked block in one group (a cap, not a count)
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp)
        runs = {
            "A": run("A", common + small + bf16 + tracked, dump, nproc),
            "B": run("B", common + small + tracked + ["--training.mixed_precision_param", "float32"], dump, nproc),
            "C": run("C", common + small + bf16, dump, nproc),
            "D": run("D", common + big + bf16, dump, nproc),
            "E": run("E", common + big + bf16 + half, dump, nproc),
        }
    seq = {k: int(v[v.index("--training.seq_len") + 1]) for k, v in (("small", small), ("big", big))}
    batch = {k: int(v[v.index("--training.local_batch_size") + 1]) for k, v in (("small", small), ("big", big))}
    tok = {k: seq[k] * batch[k] * nproc for k in seq}
    t = {k: step_seconds(r, tok["small" if k in "ABC" else "big"], skip) for k, r in runs.items()}
    # E: only the steps before the unlock are at half depth
    t["E"] = step_seconds([r for r in runs["E"] if r["step"] < steps - 1], tok["big"], skip)
    last = {k: r[-1] for k, r in runs.items()}
    lam = {k: next(r["lambda_max"] for r in runs[k] if "lambda_max" in r) for k in "AB"}
    where = "CPU dry run (tiny shapes, float32: bf16 rows compute in float32)" if a.cpu else \
        f"{torch.cuda.get_device_name(0)} x {nproc}, torch {torch.__version__}"
    print(f"gpu_check: {where}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| debug model tokens/s (C) | {tok['small'] / t['C']:.0f} |")
    print(f"| debug model MFU (C) | {last['C'].get('mfu', float('nan')):.3f} |")
    print(f"| debug model peak memory GiB (C) | {last['C']['memory_gib']:.2f} |")
    print(f"| tracking overhead per tracked step (A / C step time) | {t['A'] / t['C']:.2f}x |")
    print(f"| λmax bf16 (A) / fp32 (B), step 1 | {lam['A']:.4g} / {lam['B']:.4g} "
          f"({100 * (lam['A'] - lam['B']) / abs(lam['B']):+.2f}%) |")
    print(f"| 1B-shape full depth: s/step, tokens/s, MFU, peak GiB (D) | {t['D']:.3f}, {tok['big'] / t['D']:.0f}, "
          f"{last['D'].get('mfu', float('nan')):.3f}, {last['D']['memory_gib']:.2f} |")
    print(f"| 1B-shape half depth: s/step, tokens/s (E) | {t['E']:.3f}, {tok['big'] / t['E']:.0f} |")
    print(f"| half / full depth step time (E / D) | {t['E'] / t['D']:.2f} |")


if __name__ == "__main__":
    main()
