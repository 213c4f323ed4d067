"""The memory planner (``train.py --estimate-memory``) against a measured peak, on CPU at debug
scale: one training step (after a first one, so the optimizer state exists) of the debug model under
``torch.distributed._tools.mem_tracker.MemTracker``, which counts every live tensor by kind
(parameters, gradients, optimizer state, activations, temporaries). Prints a table; the planner's
figures are float32 on CPU, so they compare like for like.

    OMP_NUM_THREADS=1 python scripts/check_memory_plan.py
"""

from __future__ import annotations

import tempfile

from torch.distributed._tools.mem_tracker import MemTracker

from titanwarm.config import load_config
from titanwarm.trainer import Trainer
from titanwarm.trainer.memory_plan import GIB, estimate

CASES = {
    "AC none, batch 4": ["--training.local_batch_size", "4"],
    "AC none, batch 8": [],
    "AC full, batch 4": ["--activation_checkpoint.mode", "full", "--training.local_batch_size", "4"],
    "AC selective/2, batch 8": ["--activation_checkpoint.mode", "selective"],
}
MIB = 2**20


def measure(argv: list[str]) -> float:
    """Peak bytes of the second training step."""
    cfg, _ = load_config(argv)
    trainer = Trainer(cfg)
    trainer.step = 1
    trainer.train_step()
    tracker = MemTracker()
    tracker.track_external(trainer.model, trainer.optimizer)
    with tracker:
        trainer.step = 2
        trainer.train_step()
    return tracker.get_tracker_snapshot("peak")[trainer.device]["Total"]


def main() -> None:
    print("| case | planned peak MiB | measured peak MiB | error |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as dump:
        for label, extra in CASES.items():
            argv = ["--config", "train_configs/debug_model.toml", "--training.device", "cpu",
                    "--training.steps", "2", "--job.dump_folder", dump, "--validation.enable", "false",
                    "--metrics.enable_tensorboard", "false", "--metrics.console", "false", *extra]
            cfg, _ = load_config(argv)
            planned = estimate(cfg, 1).peak
            measured = measure(argv)
            print(f"| {label} | {planned / MIB:.1f} | {measured / MIB:.1f} | "
                  f"{100 * (planned - measured) / measured:+.1f}% |", flush=True)
    print(f"(GiB = {GIB} bytes; the plan counts gradients at their full size during the activations' "
          "peak, which a real step never reaches: an upper bound)")


if __name__ == "__main__":
    main()
