"""Architecture warm-up and curvature tracking inside a torchtitan (<= 0.2.2) fork.

A thin adapter: the lock masks (``archwarm/locks.py``), the schedule (``archwarm/schedule.py``),
the unlock initialisations (``archwarm/unlock_init.py``) and the tracker (``curvature/``) are
titanwarm's own, unchanged; this module only wires them to torchtitan's objects:

- **Blocks by module reference.** ``model.layers`` (a ``ModuleDict`` keyed "0".."n-1") is read
  once, when the optimizer is built (after parallelize: activation checkpointing, compile, FSDP);
  from then on a block is the module object, never a parameter name (AC/compile insert
  ``_checkpoint_wrapped_module`` / ``_orig_mod`` into names). ``locks.unwrap`` finds the block
  inside those wrappers.
- **Skipping locked blocks.** torchtitan's ``Transformer.forward`` runs
  ``for layer in self.layers.values()``. The adapter swaps the class of that one ``ModuleDict``
  instance for a subclass whose ``values()`` leaves out blocks whose ``skip`` flag is set
  (``BlockLocks`` sets it on lock, clears it on unlock). Names, ``items()``, ``state_dict`` and
  ``parameters()`` are unchanged. With ``skip_locked = false`` locked blocks run through their zero
  weights instead (x + 0 = x: the same values).
- **Optimizer.** The fork's ``build_optimizers_fn`` builds its ``OptimizersContainer`` over every
  parameter (as usual); the adapter then locks the blocks. A locked parameter has
  ``requires_grad=False`` and never a gradient, and Adam/AdamW skip parameters without a gradient:
  no state, no update, no weight decay - the same as being left out. Keeping them in the param
  groups is what lets torchtitan's ``LambdaLR`` (which only knows the groups it was built with) and
  DCP's flattened optimizer state dict work unchanged; unlocking just sets ``requires_grad``.
- **Schedule and tracker** run as step post-hooks of the container
  (``register_step_post_hook``): after optimizer step s the tracker measures (every
  ``[curvature] interval`` steps), then the blocks due at s unlock (they train from step s + 1).
- **Checkpoints.** :func:`titanwarm_states` returns two ``Stateful`` objects for the
  ``CheckpointManager``'s ``states``; the container's ``state_dict``/``load_state_dict`` are
  patched so that the DCP template always lists Adam state for every parameter (zeros at step 0
  for never-stepped ones, dropped again on load), which makes a resume independent of which blocks
  were locked when the template was built.
- **Metrics** go into the ``extra_metrics`` of the fork's ``MetricsProcessor.log``.

Not supported (raise at build): ``mode = "curvature"``, ``unlock_init = "ramp"``,
``unlock_lr_warmup_steps > 0`` (torchtitan's LR schedulers own the param groups' ``lr``),
pipeline parallelism (more than one model part).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections import ChainMap
from typing import Any, Callable

import torch
from torch import nn
from torch.distributed.checkpoint.stateful import Stateful

from titanwarm.archwarm.config import DepthSchedule
from titanwarm.archwarm.locks import BlockLocks, block_weights, unwrap
from titanwarm.archwarm.schedule import UnlockPlan, resolve_schedule
from titanwarm.archwarm.unlock_init import OUTPUT_PROJECTIONS, init_unlocked
from titanwarm.curvature.config import Curvature
from titanwarm.curvature.tracker import CurvatureEstimate, CurvatureTracker
from titanwarm.curvature.vectors import vector_dtype
from titanwarm.distributed.param_init import canonical_name

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""torchtitan's ``components.loss.IGNORE_INDEX`` (labels that do not count)."""
SUPPORTED_INITS = ("noise", "zero_out")


# ---------------------------------------------------------------------------------- skipping


class SkipLockedMixin:
    """``values()`` without the blocks whose ``skip`` flag is set (torchtitan's forward iterates
    ``self.layers.values()``); every other view of the dict is unchanged."""

    def values(self):  # type: ignore[override]
        return [m for m in super().values() if not getattr(unwrap(m), "skip", False)]


class SkipLockedModuleDict(SkipLockedMixin, nn.ModuleDict):
    pass


_SKIP_CLASSES: dict[type, type] = {nn.ModuleDict: SkipLockedModuleDict}


def install_skipping(layers: nn.Module) -> None:
    """Swap ``layers``' class for its skipping subclass (in place; idempotent)."""
    cls = type(layers)
    if issubclass(cls, SkipLockedMixin):
        return
    if not isinstance(layers, nn.ModuleDict):
        raise TypeError(f"model.layers must be an nn.ModuleDict (torchtitan), got {cls.__name__}")
    if cls not in _SKIP_CLASSES:
        _SKIP_CLASSES[cls] = type(f"SkipLocked{cls.__name__}", (SkipLockedMixin, cls), {})
    layers.__class__ = _SKIP_CLASSES[cls]


@contextlib.contextmanager
def math_sdpa(model_parts: list[nn.Module]):
    """Run torchtitan's SDPA wrappers on the math kernel (the fused CPU/GPU kernels have no double
    backward). torchtitan picks its kernels inside the module (``sdpa_kernel(self.sdpa_backends,
    set_priority=True)``), which overrides the tracker's own ``sdpa_kernel(MATH)``; this swaps the
    modules' ``sdpa_backends`` for the duration and restores them."""
    from torch.nn.attention import SDPBackend

    saved = [(m, m.__dict__.get("sdpa_backends")) for part in model_parts for m in part.modules()
             if isinstance(getattr(m, "sdpa_backends", None), list)]
    try:
        for m, _ in saved:
            m.sdpa_backends = [SDPBackend.MATH]
        yield
    finally:
        for m, old in saved:
            if old is None:
                del m.sdpa_backends
            else:
                m.sdpa_backends = old


# ------------------------------------------------------------------------- optimizer helpers


def inner_optimizers(optimizers: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside a torchtitan ``OptimizersContainer`` (or the optimizer)."""
    return list(getattr(optimizers, "optimizers", [optimizers]))


class OptimizerView:
    """What ``CurvatureTracker`` reads of an optimizer (``param_groups``, ``state``), joined over a
    container's inner optimizers. The container's own ``param_groups`` are not the ones the LR
    schedulers update and its ``state`` is empty, so the tracker must see the inner ones."""

    def __init__(self, optimizers: Any) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in inner_optimizers(self.optimizers) for g in o.param_groups]

    @property
    def state(self) -> ChainMap:
        return ChainMap(*[o.state for o in inner_optimizers(self.optimizers)])


def _zero_adam_state(opt: torch.optim.Optimizer, group: dict, p: torch.Tensor) -> dict:
    """Adam/AdamW state equivalent to none (step 0, zero moments: the first step is the same)."""
    proto = next((s["step"] for s in opt.state.values() if "step" in s), None)
    if proto is not None:
        step = torch.zeros_like(proto)
    else:
        on_device = group.get("fused") or group.get("capturable")
        step = torch.tensor(0.0, dtype=torch.float32, device=p.device if on_device else "cpu")
    state = {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
    if group.get("amsgrad"):
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _fill_missing_state(optimizers: Any) -> list[tuple[torch.optim.Optimizer, torch.Tensor]]:
    added = []
    for opt in inner_optimizers(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                if not opt.state.get(p):
                    opt.state[p] = _zero_adam_state(opt, group, p)
                    added.append((opt, p))
    return added


def _drop_unstepped_state(optimizers: Any) -> None:
    for opt in inner_optimizers(optimizers):
        for p in [p for p, s in opt.state.items() if "step" in s and float(s["step"]) == 0]:
            del opt.state[p]


def patch_container_state(optimizers: Any) -> None:
    """Make the container's (flattened, DCP) state dict list Adam state for *every* parameter.

    DCP builds its load template from ``state_dict()`` before any ``load_state_dict`` runs, i.e.
    with the lock mask of a fresh run; torch's ``set_optimizer_state_dict`` also only restores
    state of parameters that have state and ``requires_grad``. So: save and template fill
    never-stepped parameters with zero state (step 0; equivalent to none for Adam), and load with
    every parameter temporarily trainable, then drop step-0 state again. Lock state and optimizer
    state can then be loaded in either order."""
    if getattr(optimizers, "_titanwarm_patched", False):
        return
    base_state_dict, base_load = optimizers.state_dict, optimizers.load_state_dict

    def state_dict() -> dict[str, Any]:
        added = _fill_missing_state(optimizers)
        try:
            return base_state_dict()
        finally:
            for opt, p in added:
                opt.state.pop(p, None)

    def load_state_dict(state_dict: dict[str, Any]) -> None:
        params = [p for o in inner_optimizers(optimizers) for g in o.param_groups for p in g["params"]]
        flags = [p.requires_grad for p in params]
        added = _fill_missing_state(optimizers)
        try:
            for p in params:
                p.requires_grad_(True)
            base_load(state_dict)
        except BaseException:
            for opt, p in added:
                opt.state.pop(p, None)
            raise
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        _drop_unstepped_state(optimizers)

    optimizers.state_dict = state_dict
    optimizers.load_state_dict = load_state_dict
    optimizers._titanwarm_patched = True


# ------------------------------------------------------------------------------- the adapter


def check_config(ds: DepthSchedule, cv: Curvature, n_layers: int, warmup_steps: int,
                 training_steps: int | None) -> UnlockPlan:
    """Reject what the adapter does not support; resolve the schedule (raises ValueError)."""
    bad = [f"curvature.{k}: {why}" for k, why in cv.problems(None)] if cv.enabled else []
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


class TitanwarmAdapter:
    """Lock mask, unlock schedule and curvature tracker of one torchtitan run.

    Built by the wrapped ``build_optimizers_fn`` right after the fork's container (every
    parameter trainable at that point); reachable afterwards as ``optimizers.titanwarm``.
    ``loss_fn`` is torchtitan's (sum-reduced) loss; the tracker divides by the number of counted
    labels. The tracker runs torchtitan's attention on the math kernel (:func:`math_sdpa`).
    ``context`` (default: none) is entered around the tracker's forward/backward: a fork
    with loss parallelism or AMP sets it, e.g. ``lambda: contextlib.ExitStack()`` with
    ``trainer.train_context()`` and ``trainer.maybe_enable_amp``.
    """

    def __init__(self, model_parts: list[nn.Module], optimizers: Any, depth_schedule: DepthSchedule,
                 curvature: Curvature, *, warmup_steps: int = 0, seed: int = 0,
                 training_steps: int | None = None, loss_fn: Callable | None = None) -> None:
        self.model_parts = list(model_parts)
        if len(self.model_parts) != 1:
            raise NotImplementedError("titanwarm's torchtitan adapter supports one model part "
                                      "(no pipeline parallelism)")
        self.optimizers, self.cfg, self.curvature_cfg = optimizers, depth_schedule, curvature
        self.seed, self.loss_fn = seed, loss_fn
        self.context: Callable[[], Any] = contextlib.nullcontext
        layers = self.model_parts[0].get_submodule("layers")
        self.plan = check_config(depth_schedule, curvature, len(layers), warmup_steps, training_steps)
        self.step = 0
        """Optimizer steps taken (counted by the post-hook, restored from checkpoints)."""
        self.unlocked_at: dict[int, int] = {}
        self.metrics: dict[str, float] = {}
        self.events: list[dict] = []
        self.locks = BlockLocks([(f"layers.{k}", m) for k, m in layers.items()],
                                depth_schedule.skip_locked)
        if depth_schedule.enabled:
            install_skipping(layers)
            for index in range(len(self.locks.blocks)):
                if index not in self.plan.initial:
                    self.locks.lock(index)
        self.tracker: CurvatureTracker | None = None
        self.batch: tuple | None = None
        self._inputs: tuple | None = None
        self._tracking = False
        if curvature.enabled:
            c = curvature
            self.tracker = CurvatureTracker(self.model_parts, OptimizerView(optimizers), method=c.method,
                                            max_hvps=c.max_hvps, tol=c.tol, preconditioned=c.preconditioned,
                                            warm_start=c.warm_start, hvp=c.hvp, track_h=c.track_h, seed=seed)
            self.model_parts[0].register_forward_pre_hook(self._capture_inputs, with_kwargs=True)
        optimizers.register_step_post_hook(self._after_step)
        patch_container_state(optimizers)
        optimizers.titanwarm = self

    # -- batch capture (the tracker measures on the last training micro-batch, or a fixed one)

    def _capture_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._tracking or not module.training or not torch.is_grad_enabled():
            return
        if self.curvature_cfg.batch == "fixed" and self.batch is not None:
            return
        self._inputs = (args, dict(kwargs))

    def record_labels(self, labels: torch.Tensor) -> None:
        """Called by the wrapped loss with each training micro-batch's labels."""
        if self._tracking or self._inputs is None:
            return
        if self.curvature_cfg.batch == "fixed" and self.batch is not None:
            return
        self.batch = (*self._inputs, labels)
        self._inputs = None

    def tracker_loss(self, parts: list[nn.Module], batch: tuple) -> torch.Tensor:
        """Mean loss over the counted labels of ``batch`` = (args, kwargs, labels)."""
        args, kwargs, labels = batch
        pred = parts[0](*args, **kwargs)
        count = (labels != IGNORE_INDEX).sum().clamp(min=1)
        return self.loss_fn(pred, labels) / count

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
        self._tracking = True
        try:
            with self.context(), math_sdpa(self.model_parts), torch.enable_grad():
                est = self.tracker.step(self.tracker_loss, self.batch)
        finally:
            self._tracking = False
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
        "zero_out" re-runs the block's own ``init_weights()`` (torchtitan's model init) and zeroes
        the output projections (exact identity at unlock)."""
        prefix, block = self.locks.blocks[index]
        if self.cfg.unlock_init == "noise":
            init_unlocked(prefix, block, "noise", None, self.seed, self.cfg.noise_std)
            return
        inner = unwrap(block)
        if not hasattr(inner, "init_weights"):
            raise TypeError(f'unlock_init "zero_out" needs {type(inner).__name__}.init_weights()')
        inner.init_weights()
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


class LockState(Stateful):
    """The lock mask, unlock steps and step count (plain lists: stored as DCP byte objects)."""

    def __init__(self, adapter: TitanwarmAdapter) -> None:
        self.adapter = adapter

    def state_dict(self) -> dict[str, Any]:
        return self.adapter.lock_state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.adapter.load_lock_state_dict(state_dict)


class TrackerState(Stateful):
    """``CurvatureTracker`` state in a fixed DCP layout.

    DCP loads only the keys of the template ``state_dict()`` returns, and a fresh tracker has no
    vectors. So every slot the configuration uses ("g" when preconditioned, "h" when tracking H)
    holds one tensor per model parameter (the stored vector, or zeros), keyed by the wrapper-free
    name (AC/compile do not change it) and sharded like the parameter; which entries are real, the
    HVP method and the call count go in a JSON string. Cost: one parameter-sized tensor per slot.
    """

    def __init__(self, tracker: CurvatureTracker) -> None:
        self.tracker = tracker

    def _slots(self) -> list[str]:
        t = self.tracker
        slots = ["g"] if t.preconditioned else []
        return slots + (["h"] if t.track_h or not t.preconditioned else [])

    def state_dict(self) -> dict[str, Any]:
        sd = self.tracker.state_dict()
        params = dict(self.tracker.module.named_parameters())
        out: dict[str, Any] = {}
        present = {}
        for slot in self._slots():
            src = sd["vectors"].get(slot, {})
            present[slot] = [canonical_name(n) for n in src]
            out[slot] = {canonical_name(n): src[n] if n in src
                         else torch.zeros_like(p, dtype=vector_dtype(p.dtype)).detach()
                         for n, p in params.items()}
        out["meta"] = json.dumps({"present": present, "hvp": sd["hvp"],
                                  "calls": sd["calls"]})
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        meta = json.loads(state_dict["meta"])
        names = {canonical_name(n): n for n, _ in self.tracker.module.named_parameters()}
        take = {slot: {names[c]: state_dict[slot][c] for c in meta["present"].get(slot, [])}
                for slot in self._slots()}
        self.tracker.load_state_dict({
            "vectors": {k: v for k, v in take.items() if v}, "hvp": meta["hvp"],
            "calls": meta["calls"]})


def titanwarm_states(optimizers: Any) -> dict[str, Stateful]:
    """``Stateful`` objects to add to the fork's ``CheckpointManager(states=...)``: the lock state
    (``"archwarm"``) and, with ``[curvature]``, the tracker (``"curvature"``). Empty when the
    optimizers were not built by the wrapped builder."""
    adapter = getattr(optimizers, "titanwarm", None)
    if adapter is None:
        return {}
    states: dict[str, Stateful] = {"archwarm": LockState(adapter)}
    if adapter.tracker is not None:
        states["curvature"] = TrackerState(adapter.tracker)
    return states


# ------------------------------------------------------------------------ TrainSpec wrapping


@dataclasses.dataclass
class _Pending:
    """What the wrapped builders pass on to the wrapped optimizer builder: torchtitan 0.2.2 hands
    the JobConfig to ``build_loss_fn`` and ``build_metrics_processor_fn`` (both run before the
    optimizers are built) but only ``job_config.optimizer`` to ``build_optimizers_fn``."""
    job_config: Any = None
    loss_fn: Callable | None = None
    """torchtitan's own (unwrapped) loss function."""
    adapter: TitanwarmAdapter | None = None
    """The adapter of the last built optimizers (the wrapped loss hands it the labels)."""


PENDING = _Pending()


def adapter_for(model_parts: list[nn.Module], optimizers: Any, job_config: Any,
                loss_fn: Callable | None = None) -> TitanwarmAdapter | None:
    """Attach a :class:`TitanwarmAdapter` to ``optimizers`` per ``job_config``'s sections (None
    when both are off or absent). For forks that build their optimizers themselves."""
    ds = getattr(job_config, "depth_schedule", None) or DepthSchedule()
    cv = getattr(job_config, "curvature", None) or Curvature()
    if not ds.enabled and not cv.enabled:
        return None
    if loss_fn is None:
        from torchtitan.components.loss import cross_entropy_loss as loss_fn
    seed = getattr(job_config.debug, "seed", None) or 0
    return TitanwarmAdapter(model_parts, optimizers, ds, cv,
                            warmup_steps=int(job_config.lr_scheduler.warmup_steps), seed=seed,
                            training_steps=job_config.training.steps, loss_fn=loss_fn)


def wrap_train_spec(spec: Any) -> Any:
    """A copy of torchtitan ``TrainSpec`` ``spec`` whose loss, metrics-processor and optimizer
    builders add titanwarm (everything else, the model class included, is ``spec``'s)."""
    base_opt, base_loss = spec.build_optimizers_fn, spec.build_loss_fn
    base_metrics = spec.build_metrics_processor_fn

    def build_loss_fn(job_config, *args, **kwargs):
        PENDING.job_config = job_config
        inner = PENDING.loss_fn = base_loss(job_config, *args, **kwargs)

        def loss_fn(pred, labels, *a, **kw):
            if PENDING.adapter is not None and torch.is_grad_enabled():
                PENDING.adapter.record_labels(labels)
            return inner(pred, labels, *a, **kw)

        return loss_fn

    def build_metrics_processor_fn(job_config, *args, **kwargs):
        PENDING.job_config = job_config
        if base_metrics is None:
            from torchtitan.components.metrics import build_metrics_processor as builder
        else:
            builder = base_metrics
        processor = builder(job_config, *args, **kwargs)
        wrap_metrics_processor(processor)
        return processor

    def build_optimizers_fn(model_parts, *args, **kwargs):
        optimizers = base_opt(model_parts, *args, **kwargs)
        if PENDING.job_config is None:
            raise RuntimeError("titanwarm: the wrapped TrainSpec's build_loss_fn (or "
                               "build_metrics_processor_fn) must run before build_optimizers_fn")
        PENDING.adapter = adapter_for(model_parts, optimizers, PENDING.job_config, PENDING.loss_fn)
        return optimizers

    return dataclasses.replace(spec, build_optimizers_fn=build_optimizers_fn,
                               build_loss_fn=build_loss_fn,
                               build_metrics_processor_fn=build_metrics_processor_fn)


def wrap_metrics_processor(processor: Any) -> None:
    """Add the adapter's metrics to every ``processor.log`` call's ``extra_metrics`` (found via
    ``processor.optimizers.titanwarm``, which torchtitan's Trainer sets)."""
    if getattr(processor, "_titanwarm_wrapped", False):
        return
    base_log = processor.log

    def log(step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=None, **kwargs):
        adapter = getattr(getattr(processor, "optimizers", None), "titanwarm", None)
        if adapter is not None:
            extra_metrics = {**(extra_metrics or {}), **adapter.pop_metrics()}
        return base_log(step, global_avg_loss, global_max_loss, grad_norm,
                        extra_metrics=extra_metrics, **kwargs)

    processor.log = log
    processor._titanwarm_wrapped = True
