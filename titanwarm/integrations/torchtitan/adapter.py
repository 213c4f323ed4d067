"""The shared core: architecture warm-up and curvature tracking on torchtitan's objects.

Version-independent (torchtitan 0.2.2 and 0.3.x): it takes the model parts, the fork's
``OptimizersContainer`` and titanwarm's own ``[depth_schedule]``/``[curvature]`` dataclasses, and
is handed the tracker's loss and each training micro-batch by a glue layer (``train_spec.py`` for
0.2.2, ``trainer.py`` for 0.3.x). The lock masks (``archwarm/locks.py``), the schedule
(``archwarm/schedule.py``), the unlock initialisations (``archwarm/unlock_init.py``) and the
tracker (``curvature/``) are titanwarm's own, unchanged.

- **Blocks by module reference.** ``model.layers`` (a ``ModuleDict`` keyed "0".."n-1") is read
  once, when the optimizer is built (after parallelize: activation checkpointing, compile, FSDP);
  from then on a block is the module object, never a parameter name. Locked blocks are skipped in
  the forward (``skipping.py``).
- **Optimizer.** The container is built over every parameter (as usual); the adapter then locks
  the blocks. A locked parameter has ``requires_grad=False`` and never a gradient, and Adam/AdamW
  skip parameters without a gradient: no state, no update, no weight decay. Keeping them in the
  param groups is what lets torchtitan's ``LambdaLR`` and DCP's flattened optimizer state dict work
  unchanged (``optimizer_state.py``); unlocking just sets ``requires_grad``.
- **Schedule and tracker** run as one step post-hook of the container: after optimizer step s the
  tracker measures (every ``[curvature] interval`` steps), then the blocks due at s unlock (they
  train from step s + 1).
- **Checkpoints**: ``checkpoint_states.py``. **Metrics**: :meth:`TitanwarmAdapter.pop_metrics`,
  fed into the fork's ``MetricsProcessor.log`` ``extra_metrics`` (``metrics.py``).

Not supported (raise at build): ``mode = "curvature"``, ``unlock_init = "ramp"``,
``unlock_lr_warmup_steps > 0`` (torchtitan's LR schedulers own the param groups' ``lr``),
pipeline parallelism (more than one model part).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch
from torch import nn

from titanwarm.archwarm.config import DepthSchedule
from titanwarm.archwarm.locks import BlockLocks, block_weights, unwrap
from titanwarm.archwarm.schedule import UnlockPlan, resolve_schedule
from titanwarm.archwarm.unlock_init import OUTPUT_PROJECTIONS, init_unlocked
from titanwarm.curvature import Curvature, CurvatureEstimate, CurvatureTracker
from titanwarm.curvature.sub_batch import UncuttableBatch, sub_batch
from titanwarm.integrations.torchtitan.attention import math_attention
from titanwarm.integrations.torchtitan.optimizer_state import OptimizerView, patch_container_state
from titanwarm.integrations.torchtitan.skipping import install_skipping

logger = logging.getLogger(__name__)

SUPPORTED_INITS = ("noise", "zero_out")
TrackerLoss = Callable[[list[nn.Module], Any], torch.Tensor]
"""``(model_parts, batch) -> scalar loss`` (mean over the batch's counted tokens)."""


def check_config(ds: DepthSchedule, cv: Curvature, n_layers: int, warmup_steps: int,
                 training_steps: int | None, mixed_precision_param: str = "float32") -> UnlockPlan:
    """Reject what the adapter does not support; resolve the schedule (raises ValueError).
    ``mixed_precision_param``: torchtitan's ``training.mixed_precision_param`` (FSDP's
    ``param_dtype``), the compute of ``[curvature] dtype = "param"``."""
    compute = getattr(torch, mixed_precision_param)
    bad = [f"curvature.{k}: {why}" for k, why in cv.problems(None, compute)] if cv.enabled else []
    if ds.enabled:
        if ds.mode != "fixed":
            bad.append(f'depth_schedule.mode: {ds.mode!r} is not supported by the torchtitan adapter (only "fixed")')
        if ds.unlock_init not in SUPPORTED_INITS:
            bad.append(f"depth_schedule.unlock_init: {ds.unlock_init!r} is not supported by the "
                       f"torchtitan adapter (allowed: {', '.join(SUPPORTED_INITS)})")
        if ds.unlock_lr_warmup_steps:
            bad.append("depth_schedule.unlock_lr_warmup_steps: must be 0 with torchtitan (its LR "
                       "schedulers own the param groups' lr)")
    if bad:
        raise ValueError("; ".join(bad))
    plan = resolve_schedule(ds, n_layers, warmup_steps)
    if plan.events and training_steps is not None and plan.events[-1].step >= training_steps:
        raise ValueError(f"depth_schedule: the last group unlocks after step {plan.events[-1].step}, "
                         f"but training.steps is {training_steps}")
    return plan


def build_tracker(model_parts: list[nn.Module], optimizers: Any, cv: Curvature,
                  seed: int) -> CurvatureTracker:
    """titanwarm's tracker per ``[curvature]``, reading the container's inner optimizers. Its
    passes run in float32 (``dtype = "float32"``: FSDP's ``param_dtype`` is bypassed, the gathered
    parameters are float32) or in FSDP's ``param_dtype`` (``dtype = "param"``)."""
    dtype = torch.float32 if cv.dtype == "float32" else None
    return CurvatureTracker(model_parts, OptimizerView(optimizers), seed=seed, dtype=dtype,
                            **cv.tracker_kwargs())


class TitanwarmAdapter:
    """Lock mask, unlock schedule and curvature tracker of one torchtitan run.

    Built by a glue layer right after the fork's optimizers container (every parameter trainable
    at that point); reachable afterwards as ``optimizers.titanwarm``. ``tracker_loss`` is the
    tracker's loss on a captured batch (the glue's: it knows torchtitan's loss signature); the
    glue hands each training micro-batch to :meth:`record_batch`, which keeps its first
    ``[curvature] batch_size`` sequences. ``prepare_batch`` (default: none), if a glue sets it,
    turns the kept batch into the form ``tracker_loss`` takes, once per tracked step (the 0.3 glue
    keeps the data loader's raw batch and runs torchtitan's ``post_dataloading_process`` on the
    cut batch there). The tracker runs torchtitan's attention on the math kernel
    (``attention.py``). ``context`` (default: none) is entered around the tracker's
    forward/backward, e.g. the trainer's ``train_context``.
    """

    def __init__(self, model_parts: list[nn.Module], optimizers: Any, depth_schedule: DepthSchedule,
                 curvature: Curvature, *, warmup_steps: int = 0, seed: int = 0,
                 training_steps: int | None = None, tracker_loss: TrackerLoss | None = None,
                 mixed_precision_param: str = "float32") -> None:
        self.model_parts = list(model_parts)
        if len(self.model_parts) != 1:
            raise NotImplementedError("titanwarm's torchtitan adapter supports one model part "
                                      "(no pipeline parallelism)")
        if curvature.enabled and tracker_loss is None:
            raise ValueError("curvature.enabled needs the tracker's loss (tracker_loss=...)")
        self.optimizers, self.cfg, self.curvature_cfg = optimizers, depth_schedule, curvature
        self.seed, self.tracker_loss = seed, tracker_loss
        self.context: Callable[[], Any] = contextlib.nullcontext
        self.prepare_batch: Callable[[Any], Any] | None = None
        layers = self.model_parts[0].get_submodule("layers")
        self.plan = check_config(depth_schedule, curvature, len(layers), warmup_steps, training_steps,
                                 mixed_precision_param)
        self.step = 0
        """Optimizer steps taken (counted by the post-hook, restored from checkpoints)."""
        self.unlocked_at: dict[int, int] = {}
        self.metrics: dict[str, float] = {}
        self.events: list[dict] = []
        self.last_estimate: CurvatureEstimate | None = None
        self.locks = BlockLocks([(f"layers.{k}", m) for k, m in layers.items()],
                                depth_schedule.skip_locked)
        if depth_schedule.enabled:
            install_skipping(layers)
            for index in range(len(self.locks.blocks)):
                if index not in self.plan.initial:
                    self.locks.lock(index)
        self.tracker = build_tracker(self.model_parts, optimizers, curvature, seed) if curvature.enabled else None
        self.batch: Any = None
        self.warned_uncut = False
        self.tracking = False
        """True while the tracker runs its own forwards (glue capture hooks ignore them)."""
        optimizers.register_step_post_hook(self._after_step)
        patch_container_state(optimizers)
        optimizers.titanwarm = self

    def wants_batch(self) -> bool:
        """Whether :meth:`record_batch` would keep a batch now (a glue can skip assembling one)."""
        if self.tracker is None or self.tracking:
            return False
        return not (self.curvature_cfg.batch == "fixed" and self.batch is not None)

    def record_batch(self, batch: Any) -> None:
        """Keep the first ``[curvature] batch_size`` sequences of ``batch`` (a training
        micro-batch, in the form ``tracker_loss`` or ``prepare_batch`` takes) for the tracker: the
        last one of each step, or with ``batch = "fixed"`` the first one ever. A batch that cannot
        be cut (packed varlen metadata) is kept whole, with one warning; the form is the same on
        every rank, so every rank decides alike."""
        if not self.wants_batch():
            return
        try:
            self.batch = sub_batch(batch, self.curvature_cfg.batch_size)
        except UncuttableBatch as e:
            if not self.warned_uncut:
                logger.warning("curvature.batch_size = %d: %s; measuring on the whole micro-batch",
                               self.curvature_cfg.batch_size, e)
                self.warned_uncut = True
            self.batch = batch

    # -- the step post-hook

    def _after_step(self, *_: Any) -> None:
        self.step += 1
        step = self.step
        self.metrics["archwarm/active_layers"] = self.locks.n_active  # the depth step s trained at
        if self.tracker is not None and step % self.curvature_cfg.interval == 0:
            self.track(step)
        if self.cfg.enabled:
            self.apply_unlocks(step)

    def track(self, step: int) -> CurvatureEstimate | None:
        """Run the tracker on the captured batch (after the optimizer step, before unlocks)."""
        if self.batch is None:
            logger.warning("curvature: no training batch captured yet; skipping step %d", step)
            return None
        self.tracking = True
        try:
            batch = self.batch if self.prepare_batch is None else self.prepare_batch(self.batch)
            with self.context(), math_attention(self.model_parts), torch.enable_grad():
                est = self.tracker.step(self.tracker_loss, batch)
        finally:
            self.tracking = False
        if est is not None:
            self.metrics.update({
                "curvature/lambda_max": est.lambda_max, "curvature/lr_lambda": est.lr_lambda,
                "curvature/stability_threshold": est.threshold, "curvature/stability_ratio": est.ratio,
                "curvature/hvps": est.hvps, "curvature/residual": est.residual, "curvature/step": step})
            if est.lambda_max_h is not None and est.preconditioned:
                self.metrics["curvature/lambda_max_h"] = est.lambda_max_h
        self.last_estimate = est
        return est

    def apply_unlocks(self, step: int) -> None:
        """Unlock every block whose event is due by ``step`` (initialised, then trainable)."""
        for event in self.plan.events:
            if event.step > step or event.layers[0] in self.unlocked_at:
                continue
            for index in event.layers:
                self.init_block(index)
                self.locks.unlock(index)
                self.unlocked_at[index] = step
            info = {"step": step, "layers": list(event.layers), "active_layers": self.locks.n_active,
                    "init": self.cfg.unlock_init}
            self.events.append(info)
            self.metrics["archwarm/last_unlock_step"] = step
            logger.info("archwarm: unlocked blocks %s after step %d (%d/%d active)", list(event.layers),
                        step, self.locks.n_active, len(self.locks.blocks))

    @torch.no_grad()
    def init_block(self, index: int) -> None:
        """Unlock initialisation: "noise" is titanwarm's (seeded per name, layout-independent);
        "zero_out" re-runs the block's own torchtitan init (``init_weights()`` in 0.2.2,
        ``init_states()`` in 0.3.x) and zeroes the output projections (exact identity at unlock)."""
        prefix, block = self.locks.blocks[index]
        if self.cfg.unlock_init == "noise":
            init_unlocked(prefix, block, "noise", None, self.seed, self.cfg.noise_std)
            return
        inner = unwrap(block)
        reinit = getattr(inner, "init_weights", None) or getattr(inner, "init_states", None)
        if reinit is None:
            raise TypeError(f'unlock_init "zero_out" needs {type(inner).__name__}.init_weights() '
                            "or .init_states()")
        reinit()
        for name, param in block_weights(block):
            if name in OUTPUT_PROJECTIONS:
                param.zero_()

    def pop_metrics(self) -> dict[str, float]:
        """Metrics for the next ``MetricsProcessor.log`` (the latest values)."""
        return dict(self.metrics)

    # -- checkpoint state

    def lock_state_dict(self) -> dict[str, Any]:
        return {"locked": list(self.locks.locked),
                "unlocked_at": [[i, s] for i, s in self.unlocked_at.items()], "step": self.step}

    def load_lock_state_dict(self, state: dict[str, Any]) -> None:
        self.locks.load_state_dict({"locked": list(state["locked"])})
        self.unlocked_at = {int(i): int(s) for i, s in state["unlocked_at"]}
        self.step = int(state["step"])
        self.metrics["archwarm/active_layers"] = self.locks.n_active
