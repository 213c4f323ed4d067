"""The memory planner: the CLI prints a plan for the 3B preset without touching the disk or
allocating the model, its fixed parts are exact, and its peak is within 25% of the peak that
MemTracker measures for a real training step at debug scale (CPU, float32)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from torch.distributed._tools.mem_tracker import MemTracker

from titanwarm.config import load_config
from titanwarm.trainer import Trainer
from titanwarm.trainer.memory_plan import estimate

REPO = Path(__file__).resolve().parent.parent


def test_cli_plans_the_3b_preset_on_8_ranks(tmp_path):
    dump = tmp_path / "never"
    proc = subprocess.run([sys.executable, "train.py", "--config", "train_configs/llama3_3b_archwarm.toml",
                           "--estimate-memory", "--world-size", "8", "--device-memory", "80",
                           "--job.dump_folder", str(dump)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| peak |" in proc.stdout and "on 80 GiB per device" in proc.stdout
    assert "dp_shard 8" in proc.stdout and "3.213e9 parameters" in proc.stdout
    assert not dump.exists()


def test_fixed_parts_are_exact_and_peak_is_close_to_measured(tmp_path):
    argv = ["--config", "train_configs/debug_model.toml", "--training.device", "cpu",
            "--training.local_batch_size", "4", "--training.steps", "2", "--job.dump_folder", str(tmp_path),
            "--validation.enable", "false", "--metrics.enable_tensorboard", "false"]
    cfg, _ = load_config(argv)
    plan = estimate(cfg, 1)
    trainer = Trainer(cfg)
    n = sum(p.numel() for p in trainer.model.parameters())
    assert plan.rows["parameters (fp32)"] == 4 * n and plan.rows["optimizer state"] == 8 * n
    trainer.step = 1
    trainer.train_step()  # the optimizer state exists from here on
    tracker = MemTracker()
    tracker.track_external(trainer.model, trainer.optimizer)
    with tracker:
        trainer.step = 2
        trainer.train_step()
    measured = tracker.get_tracker_snapshot("peak")[trainer.device]["Total"]
    assert abs(plan.peak - measured) / measured < 0.25, (plan.peak, measured)
    assert estimate(cfg, 4).rows["parameters (fp32)"] == 4 * n / 4  # FSDP2 over 4 ranks
