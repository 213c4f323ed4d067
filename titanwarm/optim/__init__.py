"""Optimizers (AdamW/Adam with decay/no-decay groups that can grow mid-run) and LR schedules."""

from titanwarm.optim.lr_schedule import LRSchedule
from titanwarm.optim.optimizer import add_parameters, build_optimizer, param_groups, state_bytes

__all__ = ["LRSchedule", "add_parameters", "build_optimizer", "param_groups", "state_bytes"]
