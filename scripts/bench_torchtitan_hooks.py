"""Per-step cost of the torchtitan adapter's hooks (0.3 glue), measured on torchtitan 0.3.0 on CPU.

What the adapter adds to every training step when it is not tracking and not unlocking:

- ``post_dataloading_process``: keeping the micro-batch for the tracker, cut to ``batch_size`` 1 of 2;
- the optimizer step post-hook (count the step, check the curvature interval and the schedule);
- ``layers.values()`` of the skipping ``ModuleDict`` (one flag read per block);
- the metrics: ``pop_metrics`` merged into ``MetricsProcessor.log``'s ``extra_metrics``.

Two measurements, side by side in one run:

1. each hook alone, timed over ``--calls`` calls (fastest of ``--rounds``), in microseconds;
2. torchtitan's own ``Trainer.train_step`` on the debug Llama 3 (tiny: seq 32, batch 2, SDPA), with
   torchtitan's ``Trainer`` and with ``TitanwarmTrainer`` (depth schedule on with every block
   active until a late unlock, curvature on with an interval beyond the run: every hook runs, no
   tracking, the same compute), alternated ``--rounds`` times, fastest step time of each kept.

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv-tt03/bin/python scripts/bench_torchtitan_hooks.py

Needs the torchtitan 0.3 venv (``TITANWARM_VENV=.venv-tt03 TITANWARM_EXTRAS=dev,torchtitan03 bash
scripts/setup.sh``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torchtitan.components.metrics as tt_metrics

from tests.torchtitan03_cpu import batch, build, sdpa_debugmodel
from tests.torchtitan_glue import CPUMemoryMonitor
from titanwarm.archwarm.config import DepthSchedule
from titanwarm.curvature import Curvature
from titanwarm.integrations.torchtitan.trainer import TitanwarmTrainer, with_titanwarm


def fastest(fn, calls: int, rounds: int) -> float:
    """Fastest mean seconds per call of ``fn`` over ``rounds`` rounds of ``calls`` calls."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def configs(dump: str):
    plain = sdpa_debugmodel(steps=10_000)
    plain.dump_folder = dump
    warm = with_titanwarm(sdpa_debugmodel(steps=10_000),
                          DepthSchedule(enabled=True, unlocks=[{"step": 9_000, "layers": [5]}]),
                          Curvature(enabled=True, interval=9_999, hvp="autograd", batch_size=1))
    warm.dump_folder = dump
    return plain, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    tt_metrics.build_device_memory_monitor = CPUMemoryMonitor
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{Path(tmp) / 'pg'}", rank=0, world_size=1)
        try:
            run(args, tmp)
        finally:
            dist.destroy_process_group()


def run(args, tmp: str) -> None:
    plain_cfg, warm_cfg = configs(str(Path(tmp) / "dump"))
    torch.manual_seed(0)
    plain = build(plain_cfg)
    torch.manual_seed(0)
    warm = build(warm_cfg, TitanwarmTrainer)
    # the first group unlocks only at step 9000: before that blocks 0-4 run, 5 is locked
    warm.titanwarm.apply_unlocks(9_000)  # every block active: the same compute as the plain run
    adapter, layers = warm.titanwarm, warm.model_parts[0].layers
    inputs, labels = batch(0)

    hooks = [
        ("post_dataloading_process (keep micro-batch)",
         lambda: warm.post_dataloading_process(dict(inputs), labels),
         lambda: plain.post_dataloading_process(dict(inputs), labels)),
        ("optimizer step post-hook (no track, no unlock)",
         lambda: (adapter._after_step(), setattr(adapter, "step", 1)), None),
        ("layers.values() (skipping ModuleDict)", lambda: layers.values(),
         lambda: plain.model_parts[0].layers.values()),
        ("metrics merged into extra_metrics", lambda: {**{"lr": 1.0}, **adapter.pop_metrics()}, None),
    ]
    rows = []
    for name, with_hook, without in hooks:
        t = fastest(with_hook, args.calls, args.rounds)
        base = fastest(without, args.calls, args.rounds) if without is not None else 0.0
        rows.append((name, (t - base) * 1e6))

    step_times = {"torchtitan Trainer": [], "TitanwarmTrainer": []}
    step = 0
    for _ in range(args.rounds):
        for name, trainer in (("torchtitan Trainer", plain), ("TitanwarmTrainer", warm)):
            t0 = time.perf_counter()
            for i in range(args.steps):
                trainer.step = step + i + 1
                trainer.train_step(trainer.batch_generator([batch(i)]))
            step_times[name].append((time.perf_counter() - t0) / args.steps)
        step += args.steps
    best = {k: min(v) for k, v in step_times.items()}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; hooks: fastest of "
          f"{args.rounds} x {args.calls} calls; steps: fastest of {args.rounds} x {args.steps}")
    print("| what the adapter adds per step | µs per step |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    print(f"| sum of the hooks | {sum(us for _, us in rows):.1f} |")
    print()
    print("| train_step, debug Llama 3 (seq 32, batch 2, CPU) | ms per step |")
    print("|---|---:|")
    for name, sec in best.items():
        print(f"| {name} | {sec * 1e3:.2f} |")
    ratio = best["TitanwarmTrainer"] / best["torchtitan Trainer"]
    print(f"| ratio TitanwarmTrainer / Trainer | {ratio:.3f} |")


if __name__ == "__main__":
    main()
