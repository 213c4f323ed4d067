"""Shared pieces of the curvature benchmark scripts (``scripts/curvature_*.py``, ``bench_tracker.py``).

Every script drives the project's real ``titanwarm.trainer.Trainer`` built from
``titanwarm.config.load_config`` overrides: one process, CPU float32 by default, the built-in
Shakespeare+KJV corpus and the shipped 8k tokenizer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from titanwarm.config import load_config  # noqa: E402

SHARED_NOTE = ("timings taken on a shared 2-core CPU machine (other jobs running): "
               "ratios are more reliable than absolute times")


def set_threads(n: int | None = None) -> int:
    """Torch intra-op threads: ``n``, else $OMP_NUM_THREADS, else 1 (the machine is shared)."""
    n = n or int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(n)
    return n


def run_config(flavor: str, seq_len: int, batch: int, steps: int, dump: str | Path,
               lr: float = 3e-3, warmup: int = 20, seed: int = 0, extra: list[str] | None = None):
    """A ``JobConfig`` for a short single-process run of the llama3 ``flavor``."""
    args = ["--model.name", "llama3", "--model.flavor", flavor,
            "--model.tokenizer_path", str(REPO / "tokenizer" / "titanwarm_8k.tiktoken"),
            "--training.device", "cpu" if not torch.cuda.is_available() else "auto",
            "--training.mixed_precision_param", "float32",
            "--training.seq_len", str(seq_len), "--training.local_batch_size", str(batch),
            "--training.steps", str(steps), "--optimizer.lr", str(lr),
            "--lr_scheduler.warmup_steps", str(warmup), "--job.seed", str(seed),
            "--metrics.enable_tensorboard", "false", "--metrics.console", "false",
            "--metrics.log_freq", "1000000", "--validation.enable", "false",
            "--job.dump_folder", str(dump), *(extra or [])]
    cfg, _ = load_config(args)
    return cfg, args


def tracker_loss_fn(trainer):
    """The loss the trainer's ``[curvature]`` hook hands to the tracker (same autocast/loss)."""

    def loss_fn(parts, b):
        inputs, labels = (t.to(trainer.device) for t in b)
        with trainer.compute_context():
            logits = parts[0](inputs)
        return trainer.loss_fn(logits, labels)

    return loss_fn


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty list."""
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q))
