"""The training loop (``Trainer``) and its helpers."""

from titanwarm.trainer.trainer import HOOK_POINTS, Trainer

__all__ = ["HOOK_POINTS", "Trainer"]
