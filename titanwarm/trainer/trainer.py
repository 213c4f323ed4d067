"""The training loop: build everything from a ``JobConfig``, then step, log and evaluate.

Seams for the research features, so they plug in without editing the loop:
- ``model_parts``: the (parallelized) model; blocks stay addressable as ``model.layers[...]``;
- ``add_parameters`` (titanwarm.optim) grows the optimizer mid-run;
- ``hooks``: callables ``fn(trainer)`` run at ``"before_optimizer_step"`` and
  ``"after_optimizer_step"`` (after the update, before logging) and ``"after_step"``; a hook may put
  values into ``trainer.step_metrics`` and they are logged with the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import time
from typing import Callable

import torch
from torch.distributed.checkpoint.stateful import Stateful

from titanwarm.archwarm.warmup import ArchitectureWarmup
from titanwarm.checkpoint.fault import FaultGuard, TooManySkipsError
from titanwarm.checkpoint.dcp_state import ModelState
from titanwarm.checkpoint.manager import CheckpointManager, resume_point
from titanwarm.checkpoint.optimizer_state import OptimizerState
from titanwarm.config.sections import JobConfig
from titanwarm.data import build_dataloader
from titanwarm.data.prefetch import Prefetcher
from titanwarm.distributed.init import (init_distributed, require_cublas_workspace, resolve_device,
                                     resolve_param_dtype)
from titanwarm.distributed.parallel_dims import ParallelDims
from titanwarm.distributed.parallelize import loss_context
from titanwarm.distributed.param_init import init_model, materialize
from titanwarm.distributed.utils import all_reduce_max, all_reduce_mean, clip_grad_norm_
from titanwarm.metrics import MetricsLogger, memory_stats
from titanwarm.models.weight_init import init_sampler
from titanwarm.optim import LRSchedule, build_optimizer, state_bytes
from titanwarm.optim.matrix_curvature import install as install_matrix_curvature
from titanwarm.registry import MODELS
from titanwarm.report.at_end import write_run_report
from titanwarm.stabilizers import install_stabilizers, stabilized_loss
from titanwarm.tokenizers import load_tokenizer
from titanwarm.trainer.curvature_hook import CurvatureHook
from titanwarm.trainer.flops import active_params, mfu

HOOK_POINTS = ("before_optimizer_step", "after_optimizer_step", "after_step")


class Trainer:
    """One training run. ``Trainer(cfg).train()`` runs it to ``cfg.training.steps``."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        clock = time.perf_counter()
        self.startup: dict[str, float] = {}
        """Seconds per start-up phase (mesh, build, init, data, checkpoint load), for the log line."""
        self.device = resolve_device(cfg.training.device)
        if cfg.training.deterministic and self.device.type == "cuda":
            require_cublas_workspace()
        self.world_size = init_distributed(self.device)
        self.parallel_dims = ParallelDims.from_config(cfg.parallelism, self.world_size)
        self.parallel_dims.build_mesh(self.device.type)
        self.rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        torch.manual_seed(cfg.job.seed)
        if cfg.training.deterministic:
            torch.use_deterministic_algorithms(True)
        clock = self._phase("mesh", clock)

        self.tokenizer = load_tokenizer(cfg.model.tokenizer_path)
        spec = MODELS.get(cfg.model.name)
        model = spec.build(cfg, self.tokenizer.vocab_size)
        self.model_args = model.args
        self.model = spec.parallelize_fn(model, self.parallel_dims, cfg)
        clock = self._phase("build", clock)
        # a run that resumes loads every weight: allocate without drawing (decided on all ranks)
        fresh = resume_point(cfg.checkpoint, cfg.job.dump_folder) is None
        self.resuming = all_reduce_max(1.0 if fresh else 0.0) == 0.0
        if self.resuming:
            materialize(self.model, self.device)
        else:
            init_model(self.model, self.device, cfg.job.seed)
        clock = self._phase("init", clock)
        self.model_parts = [self.model]
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.warmup = (ArchitectureWarmup(cfg.depth_schedule, self.model, cfg.lr_scheduler.warmup_steps,
                                          cfg.job.seed, init_sampler(self.model, cfg.job.seed),
                                          cfg.training.steps)
                       if cfg.depth_schedule.enabled else None)  # locks blocks before the optimizer sees them

        self.optimizer = build_optimizer(self.model_parts, cfg.optimizer, cfg.training.steps,
                                         cfg.job.seed)
        self.schedule = LRSchedule(cfg.lr_scheduler, cfg.optimizer.lr, cfg.training.steps)

        dp_rank, dp_world = self.parallel_dims.dp_rank, self.parallel_dims.dp_world
        t = cfg.training
        self.global_batch = t.global_batch_size if t.global_batch_size != -1 else t.local_batch_size * dp_world
        self.grad_accum = self.global_batch // (t.local_batch_size * dp_world)
        self.train_loader = build_dataloader(cfg, self.tokenizer, dp_rank, dp_world, "train")
        self.val_loader = build_dataloader(cfg, self.tokenizer, dp_rank, dp_world, "val")
        self.train_iter = (itertools.cycle(list(self.train_loader.batches(self.grad_accum)))
                           if t.fixed_batch else iter(self.train_loader))  # full batch: same data every step
        clock = self._phase("data", clock)

        self.metrics = MetricsLogger(cfg.job.dump_folder, self.rank == 0,
                                     cfg.metrics.enable_tensorboard, cfg.metrics.console)
        self.hooks: dict[str, list[Callable[[Trainer], None]]] = {k: [] for k in HOOK_POINTS}
        self.step = 0
        self.step_metrics: dict[str, float] = {}
        # checkpoint seam: fault guard (skip/stop decisions) and the manager (load before the
        # loop, save after a step) of the Stateful components in ``states``; register_state adds one.
        self.fault = FaultGuard(cfg.fault)
        self.step_skipped: str | None = None
        self.stop_signal: str | None = None
        model_state = ModelState(self.model_parts)
        self.states: dict[str, Stateful] = {
            "train": self, "model": model_state,
            "optimizer": OptimizerState(self.optimizer, model_state.named_parameters),
            "dataloader": self.train_loader, "fault": self.fault}
        pd = self.parallel_dims
        self.checkpoint = CheckpointManager(
            cfg.checkpoint, cfg.job.dump_folder, self.states, rank=self.rank, device=self.device,
            model_record={"name": cfg.model.name, "flavor": cfg.model.flavor,
                          "args": json.loads(json.dumps(dataclasses.asdict(self.model_args), default=str))},
            model_args=self.model_args,
            run_record={"world_size": self.world_size,
                        "layout": {"dp_replicate": pd.dp_replicate, "dp_shard": pd.dp_shard, "tp": pd.tp}},
            log_event=self.metrics.log_event)
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        """The last micro-batch trained on (the curvature tracker's "train" batch)."""
        self.log_requested = False
        """Set by a hook to log the current step whatever metrics.log_freq says."""
        install_stabilizers(self)
        self.curvature = CurvatureHook(self) if cfg.curvature.enabled else None
        install_matrix_curvature(self)  # Muon/NuMuon: curvature along the update
        if self.warmup is not None:
            self.warmup.attach(self)  # after the tracker: a step is measured before its unlocks

    # ------------------------------------------------------------------ pieces
    def _phase(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.startup[name] = now - since
        return now

    def add_hook(self, point: str, fn: Callable[[Trainer], None]) -> None:
        """Run ``fn(trainer)`` at ``point`` (one of HOOK_POINTS) on every step."""
        if point not in self.hooks:
            raise KeyError(f"unknown hook point {point!r}; known: {', '.join(HOOK_POINTS)}")
        self.hooks[point].append(fn)

    def register_state(self, name: str, obj: Stateful) -> None:
        """Save and restore ``obj`` (``state_dict``/``load_state_dict``) with the trainer's state
        (the checkpoint manager's ``states``; it loads after the model, before the optimizer)."""
        if name in self.states:
            raise KeyError(f"state {name!r} is already registered")
        self.states[name] = obj

    def state_dict(self) -> dict[str, int]:
        """The trainer's own checkpointed state (``states["train"]``): the step."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])

    def _run_hooks(self, point: str) -> None:
        for fn in self.hooks[point]:
            fn(self)

    def compute_context(self) -> contextlib.AbstractContextManager:
        """Autocast for single-device mixed precision (FSDP2 handles it when sharding)."""
        dtype = resolve_param_dtype(self.cfg.training.mixed_precision_param, self.device)
        if dtype != torch.float32 and not self.parallel_dims.dp_enabled:
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy in float32, plus the z-loss when configured (training only)."""
        return stabilized_loss(logits, labels, self.cfg.stabilizers, train=self.model.training)

    def forward_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """This rank's mean loss on one micro-batch."""
        with self.compute_context():
            logits = self.model(inputs)
        return self.loss_fn(logits, labels)

    def active_layers(self) -> int:
        """Blocks that train now (all of them without architecture warm-up)."""
        return self.warmup.locks.n_active if self.warmup is not None else self.model_args.n_layers

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that currently train (locked blocks excluded)."""
        return [p for m in self.model_parts for p in m.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ steps
    def train_step(self) -> tuple[float, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (local loss, grad norm)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.lr = self.schedule.apply(self.optimizer, self.step)
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(self.grad_accum):
            inputs, labels = next(self.train_iter)
            inputs, labels = inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            self.batch = (inputs, labels)
            with loss_context(self.parallel_dims):
                loss = self.forward_loss(inputs, labels) / self.grad_accum
                if self.step in self.cfg.fault.nan_steps and self.rank == 0:
                    loss = loss * float("nan")  # fault drill: a poisoned batch on one rank
                loss.backward()
            loss_sum += loss.detach()
        grad_norm = clip_grad_norm_(self.trainable_parameters(), self.cfg.training.max_norm)
        loss_value, norm_value = loss_sum.item(), float(grad_norm)
        global_loss, stop = self.fault.global_values(loss_value)
        if stop and self.stop_signal is None:
            self.stop_signal = self.fault.signal_name or "a stop signal on another rank"
        self.step_skipped = self.fault.check(self.step, global_loss, norm_value)
        if self.step_skipped is not None:
            # skip: drop the gradients, no update, no optimizer-step hooks; counted and logged.
            self.optimizer.zero_grad(set_to_none=True)
            self.metrics.log_event("skip", self.step, {"reason": self.step_skipped,
                                                       "skipped_steps": self.fault.skipped_steps})
            try:
                self.fault.raise_if_exhausted(self.step, self.step_skipped, self.checkpoint.last_saved)
            except TooManySkipsError:
                self.checkpoint.finish_pending()
                raise
            return loss_value, norm_value
        self._run_hooks("before_optimizer_step")
        self.optimizer.step()
        self._run_hooks("after_optimizer_step")
        return loss_value, norm_value

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss over ``validation.steps`` held-out batches per rank, averaged over ranks."""
        for m in self.model_parts:
            m.eval()
        total = torch.zeros((), device=self.device)
        batches = self.val_loader.batches(self.cfg.validation.steps)
        for inputs, labels in batches:
            with loss_context(self.parallel_dims):
                total += self.forward_loss(inputs.to(self.device), labels.to(self.device))
        for m in self.model_parts:
            m.train()
        val_loss = all_reduce_mean(total.item() / self.cfg.validation.steps, self.parallel_dims.dp_mesh)
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 80.0))}

    def _should(self, freq: int) -> bool:
        return self.step % freq == 0 or self.step == 1 or self.step == self.cfg.training.steps

    def train(self) -> None:
        """Run until ``training.steps``; log, validate and call hooks along the way. However it
        ends, the train loader's prefetch thread is stopped first: a daemon thread still inside a
        torch op when the interpreter exits is killed mid-unwind, and the process aborts
        ("terminate called without an active exception") after the run has succeeded."""
        try:
            self._train()
        finally:
            if isinstance(self.train_loader, Prefetcher):
                self.train_loader.close()

    def _train(self) -> None:
        cfg = self.cfg
        steps = cfg.training.steps
        pd = self.parallel_dims
        if self.rank == 0:
            print(f"titanwarm: {cfg.job.description} | {cfg.model.name}/{cfg.model.flavor} "
                  f"{self.n_params / 1e6:.2f}M params ({active_params(self.model.parameters()) / 1e6:.2f}M "
                  f"training) | world {self.world_size} "
                  f"(dp_replicate {pd.dp_replicate} x dp_shard {pd.dp_shard} x tp {pd.tp}) | device {self.device} | "
                  f"global batch "
                  f"{self.global_batch} x {cfg.training.seq_len} tokens, grad accum {self.grad_accum}",
                  flush=True)
        tokens_per_step = self.global_batch * cfg.training.seq_len
        window_start, window_steps = time.perf_counter(), 0
        clock = time.perf_counter()
        self.checkpoint.maybe_load()
        self._phase("checkpoint load", clock)
        if self.rank == 0:
            print("startup: " + " | ".join(
                f"{k} {v:.2f}s" + (" (skipped: resuming)" if k == "init" and self.resuming else "")
                for k, v in self.startup.items()), flush=True)
        self.metrics.log_event("start", self.step, {"total_steps": steps, "tokens_per_step": tokens_per_step,
                                                    "world_size": self.world_size, "n_params": self.n_params},
                               console=False)
        self.fault.install_signal_handlers()
        while self.step < steps:
            self.step += 1
            self.step_metrics, self.log_requested = {}, False
            loss, grad_norm = self.train_step()
            window_steps += 1
            self._run_hooks("after_step")
            self.checkpoint.maybe_save(self.step, last=self.step == steps, force=self.stop_signal is not None)
            log_now = (self._should(cfg.metrics.log_freq) or self.stop_signal is not None
                       or self.step_skipped is not None or self.log_requested)
            val_now = cfg.validation.enable and self._should(cfg.validation.freq)
            if not (log_now or val_now):
                continue
            elapsed = time.perf_counter() - window_start
            values = {"loss": all_reduce_mean(loss, self.parallel_dims.dp_mesh), "grad_norm": grad_norm,
                      "lr": self.lr, "skipped_steps": self.fault.skipped_steps,
                      "tokens_per_sec": tokens_per_step * window_steps / elapsed,
                      **memory_stats(self.device),
                      "optimizer_state_mib": state_bytes(self.optimizer) / 2**20, **self.step_metrics}
            values["active_params"] = active_params(self.model.parameters())
            util = mfu(self.model_args, self.active_layers(), cfg.training.seq_len,
                       values["tokens_per_sec"] / self.world_size, self.device)
            if util is not None:
                values["mfu"] = util
            if val_now:
                values.update(self.validate())
            self.metrics.log_step(self.step, values, prefix=self.progress(values))
            window_start, window_steps = time.perf_counter(), 0
            if self.stop_signal is not None:
                if self.rank == 0:
                    print(f"stopping at step {self.step} on {self.stop_signal}"
                          + (f"; checkpoint {self.checkpoint.last_saved} saved"
                             if self.checkpoint.enabled else " (checkpointing is disabled)"), flush=True)
                break
        self.fault.restore_signal_handlers()
        self.checkpoint.finish()
        self.metrics.close()
        if self.rank == 0 and cfg.metrics.report:
            write_run_report(cfg.job.dump_folder)

    def progress(self, values: dict) -> str:
        """Console prefix: step out of total, percentage, and depth under architecture warm-up."""
        steps = self.cfg.training.steps
        depth = (f" d={values['active_layers']}/{self.model_args.n_layers}"
                 if "active_layers" in values else "")
        return f"[{self.step}/{steps} {100 * self.step / steps:.0f}%]{depth}"
