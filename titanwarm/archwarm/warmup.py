"""Architecture warm-up inside the trainer: lock blocks, unlock them on the ``[depth_schedule]``.

``ArchitectureWarmup(cfg, model, ...)`` locks the blocks that start inactive; it must run before the
optimizer is built so that they stay out of it. ``attach(trainer)`` then registers an
``after_optimizer_step`` hook that, after step s:
- unlocks the blocks whose event is at s (initialises them, hands their parameters to the optimizer
  as new groups, logs an ``unlock`` event);
- sets, for step s + 1, each recently unlocked block's LR scale (``unlock_lr_warmup_steps``) and
  ramp gate (``unlock_init = "ramp"``);
- reports ``active_layers`` (the depth that step s trained at).
In ``mode = "curvature"`` the unlock steps are not known in advance: after step s the hook feeds a
``CurvaturePolicy`` (``curvature_policy.py``) the ``stability_ratio`` the curvature tracker hook
(registered before this one) measured on step s, all-reduced (max) so every rank decides alike, and
unlocks the group it names; the ``unlock`` event then carries ``reason`` and ``ratio``.
Its ``state_dict`` (lock mask + unlock steps + the policy's decision state) goes into checkpoints;
loading it re-adds the unlocked blocks' parameter groups in their original order, before the
optimizer state is loaded.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

from torch import nn

from titanwarm.archwarm.config import DepthSchedule
from titanwarm.archwarm.curvature_policy import CurvaturePolicy, policy_for
from titanwarm.archwarm.locks import BlockLocks
from titanwarm.archwarm.schedule import resolve_schedule
from titanwarm.archwarm.unlock_init import Sampler, add_gate, init_unlocked, set_gate
from titanwarm.distributed.utils import all_reduce_max
from titanwarm.optim import add_parameters

if TYPE_CHECKING:
    from titanwarm.trainer import Trainer


class ArchitectureWarmup:
    """The depth schedule of one run: lock mask, unlock timeline and per-block ramps."""

    def __init__(self, cfg: DepthSchedule, model: nn.Module, warmup_steps: int, seed: int,
                 sample_init: Sampler, total_steps: int) -> None:
        self.cfg, self.seed, self.sample_init = cfg, seed, sample_init
        self.plan = resolve_schedule(cfg, len(model.layers), warmup_steps)
        self.policy: CurvaturePolicy | None = None
        """mode = "curvature": decides when the plan's groups unlock (their fixed steps are unused)."""
        if cfg.mode == "curvature" and (not self.plan.events or self.plan.events[0].step < total_steps):
            # (a run that ends before the first possible unlock keeps the fixed plan: nothing unlocks)
            self.policy = policy_for(cfg, self.plan, total_steps)
        self.locks = BlockLocks([(f"layers.{k}", m) for k, m in model.layers.items()], cfg.skip_locked)
        for index in range(len(self.locks.blocks)):
            if index not in self.plan.initial:
                self.locks.lock(index)
        self.unlocked_at: dict[int, int] = {}
        """block index -> the step after which it unlocked (in unlock order)."""
        self.groups: dict[int, list[dict]] = {}
        """block index -> its optimizer param groups."""

    def end_warning(self, total_steps: int) -> str | None:
        """A warning naming the blocks that stay locked through a run of ``total_steps`` (None if
        every block trains): shortened runs of a warm-up config train, with fewer blocks."""
        if self.policy is None:
            blocks = self.plan.untrained_blocks(total_steps)
            return (f"depth schedule: block(s) {blocks} unlock only at or after step {total_steps}, the "
                    f"run's last step: they stay locked (identity) for this whole run" if blocks else None)
        late = [i for k, e in enumerate(self.plan.events) if self.policy.latest[k] >= total_steps
                for i in e.layers]
        return (f"depth schedule: all_unlocked_by resolves to step {self.policy.deadline} >= "
                f"training.steps {total_steps}: block(s) {sorted(late)} stay locked for this run "
                f"unless the curvature unlocks them earlier" if late else None)

    def attach(self, trainer: Trainer) -> None:
        """Run on ``trainer``'s steps and save with its checkpoints; warn (rank 0) about blocks that
        will stay locked (``end_warning``)."""
        warning = self.end_warning(trainer.cfg.training.steps)
        if warning and trainer.rank == 0:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
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
        if self.policy is not None:
            self._curvature_unlocks(trainer, step)
        else:
            for event in self.plan.events:
                if event.step > step or event.layers[0] in self.unlocked_at:
                    continue  # not due yet, or done (a due event still applies after a skipped step)
                self._unlock(trainer, step, event.layers, {})
        self.set_ramps(step + 1)

    def _curvature_unlocks(self, trainer: Trainer, step: int) -> None:
        """Feed the policy this step's ratio (None when untracked) and apply its decision."""
        ratio = trainer.step_metrics.get("stability_ratio")
        if ratio is not None:
            # Computed from all-reduced DTensor inner products, so already equal on every rank;
            # the max makes that a guarantee (NaN -> inf: a bad reading is never "safe").
            ratio = float(ratio)
            ratio = all_reduce_max(math.inf if math.isnan(ratio) else ratio)
        decision = self.policy.update(step, ratio)
        if decision is not None:
            self._unlock(trainer, step, self.plan.events[decision.group].layers,
                         {"reason": decision.reason, "ratio": decision.ratio,
                          "ratio_step": decision.ratio_step})

    def _unlock(self, trainer: Trainer, step: int, layers: tuple[int, ...], extra: dict) -> None:
        """Initialise ``layers``, hand them to the optimizer and log an ``unlock`` event."""
        for index in layers:
            prefix, block = self.locks.blocks[index]
            init_unlocked(prefix, block, self.cfg.unlock_init, self.sample_init, self.seed,
                          self.cfg.noise_std)
            self._add_to_optimizer(index, 0.0)
            self.unlocked_at[index] = step
        trainer.metrics.log_event("unlock", step, {"layers": list(layers),
                                                    "active_layers": self.locks.n_active,
                                                    "init": self.cfg.unlock_init, **extra})

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
        """Lock mask, the step each block unlocked after and (curvature mode) the policy's
        decision state (for an exact resume)."""
        state = {**self.locks.state_dict(),
                 "unlocked_at": [[index, at] for index, at in self.unlocked_at.items()]}
        if self.policy is not None:
            state["policy"] = self.policy.state_dict()
        return state

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
        if self.policy is not None:
            if "policy" in state:
                self.policy.load_state_dict(state["policy"])
            else:  # saved in fixed mode: continue from the groups already out, with a fresh streak
                done = [e for e in self.plan.events if all(i in self.unlocked_at for i in e.layers)]
                self.policy.next_group = len(done)
                self.policy.last_unlock = max(self.unlocked_at.values(), default=None)
        self.set_ramps(self.trainer.step + 1)
