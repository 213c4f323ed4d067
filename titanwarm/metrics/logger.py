"""Write metrics on rank 0: a console line per logged step, ``metrics.jsonl``, TensorBoard.

``metrics.jsonl`` holds one JSON object per line. Step records have ``"kind": "step"`` and the keys
listed in README's "Metrics" section (``step``, ``time`` (Unix seconds), ``loss``, ``lr``, ``grad_norm``, ``tokens_per_sec``,
``memory_gib`` ..., plus ``val_loss``/``val_ppl`` on evaluation steps). Event records (``"kind"`` is
the event's name, e.g. ``"unlock"``) carry the step and the event's fields. TensorBoard receives every
numeric field of step records under ``train/<key>`` (``val/<key>`` for validation keys).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

VAL_KEYS = ("val_loss", "val_ppl")


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak memory of this process in GiB: CUDA allocator peak on GPU, peak RSS on CPU."""
    if device.type == "cuda":
        return {"memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"memory_gib": rss_kib / 2**20}


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        if key in ("lr",):
            return f"{key}={value:.2e}"
        if key == "tokens_per_sec":
            return f"tok/s={value:,.0f}"
        return f"{key}={value:.4g}"
    return f"{key}={value}"


class MetricsLogger:
    """Metrics sink for one run; every method is a no-op on ranks other than 0."""

    CONSOLE_KEYS = ("loss", "grad_norm", "lr", "tokens_per_sec", "memory_gib", "val_loss", "val_ppl",
                    "lr_lambda", "stability_ratio")

    def __init__(self, dump_folder: str, is_rank0: bool, tensorboard: bool, console: bool) -> None:
        self.enabled = is_rank0
        self.console = console
        self.folder = Path(dump_folder)
        self.jsonl = None
        self.tb = None
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.folder / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.folder / "tb"))

    def log_step(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        """Record one step's values (console, jsonl, TensorBoard). ``prefix`` replaces the console
        line's leading ``step N`` (the trainer shows progress and depth there)."""
        if not self.enabled:
            return
        record = {"kind": "step", "step": step, "time": round(time.time(), 3), **values}
        self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    group = "val" if key in VAL_KEYS else "train"
                    self.tb.add_scalar(f"{group}/{key}", value, step)
        if self.console:
            shown = " ".join(_fmt(k, values[k]) for k in self.CONSOLE_KEYS if k in values)
            head = prefix or f"step {step}"
            print(f"{head} {shown}", file=sys.stdout, flush=True)

    def log_event(self, kind: str, step: int, values: dict[str, Any], console: bool = True) -> None:
        """Record an event (e.g. an unlock) in jsonl, on the console (unless ``console`` is False)
        and as TensorBoard text."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            self.tb.add_text(f"events/{kind}", json.dumps(values), step)
        if self.console and console:
            print(f"step {step:>6} [{kind}] " + " ".join(f"{k}={v}" for k, v in values.items()), flush=True)

    def close(self) -> None:
        """Flush and close the files."""
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
