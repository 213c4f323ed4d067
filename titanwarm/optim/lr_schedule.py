"""Learning-rate schedules: linear warmup, then a registered decay shape down to ``min_lr_ratio``.

``LRSchedule.factor(step)`` is the multiplier of the peak LR for optimizer step ``step`` (1-based: the
first update uses step 1). ``apply(optimizer, step)`` writes ``peak * factor * group["lr_scale"]``
into every param group, so groups added mid-run (unlocked blocks) follow the same schedule and can
carry their own scale. Decay shapes are registered in ``LR_SCHEDULES`` as functions of progress
p in [0, 1] through the decay phase returning 1 -> 0; ``min_lr_ratio`` is mixed in afterwards.
"""

from __future__ import annotations

import math

import torch

from titanwarm.config.sections import LRScheduler as LRConfig
from titanwarm.registry import LR_SCHEDULES

LR_SCHEDULES.add("constant", lambda p: 1.0)
LR_SCHEDULES.add("linear", lambda p: 1.0 - p)
LR_SCHEDULES.add("cosine", lambda p: 0.5 * (1.0 + math.cos(math.pi * p)))
LR_SCHEDULES.add("sqrt", lambda p: 1.0 - math.sqrt(p))
LR_SCHEDULES.add("wsd", lambda p: 1.0 - p)  # linear decay, confined to the last decay_ratio


class LRSchedule:
    """Warmup + decay, as a pure function of the step (nothing to checkpoint but the step)."""

    def __init__(self, cfg: LRConfig, peak_lr: float, total_steps: int) -> None:
        self.cfg, self.peak_lr, self.total_steps = cfg, peak_lr, total_steps
        self.shape = LR_SCHEDULES.get(cfg.decay_type)

    def factor(self, step: int) -> float:
        """Multiplier of the peak LR at optimizer step ``step`` (1-based)."""
        warmup, total = self.cfg.warmup_steps, self.total_steps
        if step <= warmup:
            return step / (warmup + 1)
        start = warmup
        if self.cfg.decay_type == "wsd":
            start = max(warmup, total - round(self.cfg.decay_ratio * total))
        if step <= start or self.cfg.decay_type == "constant":
            return 1.0
        progress = min(1.0, (step - start) / max(1, total - start))
        ratio = self.cfg.min_lr_ratio
        return ratio + (1.0 - ratio) * self.shape(progress)

    def lr(self, step: int) -> float:
        """The base learning rate at ``step`` (before per-group scales)."""
        return self.peak_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for ``step``; returns the base lr."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
