"""Benchmark: training-step time and optimizer-state memory vs active depth under architecture warm-up.

For a research flavor, runs the real trainer with 1/4, 1/2, 3/4 and all blocks active (the rest
locked), with ``skip_locked`` on and off, and prints a table: median step time, its ratio to full
depth, and the optimizer-state size this process holds.

    python scripts/bench_archwarm.py [--flavor depth16] [--steps 12] [--seq-len 128] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from titanwarm.config import load_config
from titanwarm.optim import state_bytes
from titanwarm.trainer import Trainer


def measure(flavor: str, active: int, n_layers: int, skip: bool, args: argparse.Namespace) -> tuple[float, int]:
    """(median step seconds, optimizer-state bytes) with ``active`` of ``n_layers`` blocks active."""
    with tempfile.TemporaryDirectory() as folder:
        overrides = [
            "--model.flavor", flavor, "--training.seq_len", str(args.seq_len),
            "--training.local_batch_size", str(args.batch), "--training.steps", "1000",
            "--training.device", "cpu", "--lr_scheduler.warmup_steps", "10",
            "--validation.enable", "false", "--metrics.console", "false",
            "--metrics.enable_tensorboard", "false", "--job.dump_folder", folder,
        ]
        if active < n_layers:
            overrides += ["--depth_schedule.enabled", "true", "--depth_schedule.initial_layers", str(active),
                          "--depth_schedule.start", "900", "--depth_schedule.interval", "1", "--depth_schedule.skip_locked", str(skip).lower()]
        trainer = Trainer(load_config(overrides)[0])
        times = []
        for _ in range(args.warmup + args.steps):
            trainer.step += 1
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        trainer.metrics.close()
        return statistics.median(times[args.warmup:]), state_bytes(trainer.optimizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", default="depth16")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    import titanwarm.components  # noqa: F401  (registers the models)
    from titanwarm.registry import MODELS

    n_layers = MODELS.get("llama3").flavors[args.flavor].n_layers
    depths = sorted({max(1, n_layers * q // 4) for q in (1, 2, 3, 4)})
    rows = [(depth, skip, *measure(args.flavor, depth, n_layers, skip, args))
            for depth in depths for skip in ((True, False) if depth < n_layers else (True,))]
    full_time = rows[-1][2]
    print(f"{args.flavor}: {n_layers} blocks, batch {args.batch} x {args.seq_len} tokens, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'active':>8} {'skip_locked':>11} {'step s':>8} {'vs full':>8} {'opt state MiB':>14}")
    for depth, skip, seconds, opt_bytes in rows:
        label = "n/a" if depth == n_layers else str(skip).lower()
        print(f"{f'{depth}/{n_layers}':>8} {label:>11} {seconds:8.3f} {seconds / full_time:8.2f} "
              f"{opt_bytes / 2**20:14.2f}")

if __name__ == "__main__":
    main()
