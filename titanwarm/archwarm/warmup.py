"""Architecture warm-up inside the trainer: lock blocks, unlock them on the ``[depth_schedule]``.

``ArchitectureWarmup(cfg, model, ...)`` locks the blocks that start inactive; it must run before the
optimizer is built so that they stay out of it. ``attach(trainer)`` then registers an
``after_optimizer_step`` hook that, after step s:
- unlocks the blocks whose event is at s (initialises them, hands their parameters to the optimizer
  as new groups, logs an ``unlock`` event);
- sets, for step s + 1, each recently unlocked block's LR scale (``unlock_lr_warmup_steps``) and
  ramp gate (``unlock_init = "ramp"``);
- reports ``active_layers`` (the depth that step s trained at).
Its ``state_dict`` (lock mask + unlock steps) goes into checkpoints; loading it re-adds the unlocked
blocks' parameter groups in their original order, before the optimizer state is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from titanwarm.archwarm.config import DepthSchedule
from titanwarm.archwarm.locks import BlockLocks
from titanwarm.archwarm.schedule import resolve_schedule
from titanwarm.archwarm.unlock_init import Sampler, add_gate, init_unlocked, set_gate
from titanwarm.optim import add_parameters

if TYPE_CHECKING:
    from titanwarm.trainer import Trainer


class ArchitectureWarmup:
    """The depth schedule of one run: lock mask, unlock timeline and per-block ramps."""

    def __init__(self, cfg: DepthSchedule, model: nn.Module, warmup_steps: int, seed: int,
                 sample_init: Sampler) -> None:
        self.cfg, self.seed, self.sample_init = cfg, seed, sample_init
        self.plan = resolve_schedule(cfg, len(model.layers), warmup_steps)
        self.locks = BlockLocks([(f"layers.{k}", m) for k, m in model.layers.items()], cfg.skip_locked)
        for index in range(len(self.locks.blocks)):
            if index not in self.plan.initial:
                self.locks.lock(index)
        self.unlocked_at: dict[int, int] = {}
        """block index -> the step after which it unlocked (in unlock order)."""
        self.groups: dict[int, list[dict]] = {}
        """block index -> its optimizer param groups."""

    def attach(self, trainer: Trainer) -> None:
        """Run on ``trainer``'s steps and save with its checkpoints."""
        self.trainer = trainer
        trainer.add_hook("after_optimizer_step", self.after_optimizer_step)
        trainer.register_state("depth_schedule", self)

    def _add_to_optimizer(self, index: int, lr_scale: float) -> None:
        params = self.locks.unlock(index)
        self.groups[index] = add_parameters(self.trainer.optimizer, params,
                                            self.trainer.cfg.optimizer.weight_decay, lr_scale)

    def after_optimizer_step(self, trainer: Trainer) -> None:
        """Hook: record this step's depth, apply the unlocks due by now, set next step's ramps."""
        step = trainer.step
        trainer.step_metrics["active_layers"] = self.locks.n_active
        for event in self.plan.events:
            if event.step > step or event.layers[0] in self.unlocked_at:
                continue  # not due yet, or done (a due event still applies after a skipped step)
            for index in event.layers:
                prefix, block = self.locks.blocks[index]
                init_unlocked(prefix, block, self.cfg.unlock_init, self.sample_init, self.seed,
                              self.cfg.noise_std)
                self._add_to_optimizer(index, 0.0)
                self.unlocked_at[index] = step
            trainer.metrics.log_event("unlock", step, {"layers": list(event.layers),
                                                        "active_layers": self.locks.n_active,
                                                        "init": self.cfg.unlock_init})
        self.set_ramps(step + 1)

    def set_ramps(self, step: int) -> None:
        """LR scales and residual gates of unlocked blocks for optimizer step ``step``."""
        warm, ramp = self.cfg.unlock_lr_warmup_steps, self.cfg.ramp_steps
        for index, at in self.unlocked_at.items():
            scale = 1.0 if warm == 0 else min(1.0, (step - at) / warm)
            for group in self.groups[index]:
                group["lr_scale"] = scale
            if self.cfg.unlock_init == "ramp":
                set_gate(self.locks.blocks[index][1], min(1.0, (step - at - 1) / ramp))

    def state_dict(self) -> dict:
        """Lock mask and the step each block unlocked after (for an exact resume)."""
        return {**self.locks.state_dict(),
                "unlocked_at": [[index, at] for index, at in self.unlocked_at.items()]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the mask; re-add unlocked blocks' groups in unlock order (optimizer state is
        loaded afterwards); re-create ramp gates. Weights come from the model checkpoint."""
        for index, at in state["unlocked_at"]:
            if index in self.unlocked_at:
                continue
            if self.cfg.unlock_init == "ramp":
                add_gate(self.locks.blocks[index][1])
            self._add_to_optimizer(index, 0.0)
            self.unlocked_at[index] = at
        self.locks.load_state_dict({"locked": state["locked"]})
        self.set_ramps(self.trainer.step + 1)
