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
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from titanwarm.config.sections import JobConfig
from titanwarm.data import build_dataloader
from titanwarm.distributed.init import init_distributed, resolve_device
from titanwarm.distributed.parallel_dims import ParallelDims
from titanwarm.distributed.parallelize import loss_context
from titanwarm.distributed.param_init import init_model
from titanwarm.distributed.utils import all_reduce_mean, clip_grad_norm_
from titanwarm.metrics import MetricsLogger, memory_stats
from titanwarm.optim import LRSchedule, build_optimizer
from titanwarm.registry import MODELS
from titanwarm.tokenizers import load_tokenizer
from titanwarm.trainer.flops import mfu

HOOK_POINTS = ("before_optimizer_step", "after_optimizer_step", "after_step")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the message names the step."""


class Trainer:
    """One training run. ``Trainer(cfg).train()`` runs it to ``cfg.training.steps``."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.training.device)
        self.world_size = init_distributed(self.device)
        self.parallel_dims = ParallelDims.from_config(cfg.parallelism, self.world_size)
        self.parallel_dims.build_mesh(self.device.type)
        self.rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        torch.manual_seed(cfg.job.seed)
        if cfg.training.deterministic:
            torch.use_deterministic_algorithms(True)

        self.tokenizer = load_tokenizer(cfg.model.tokenizer_path)
        spec = MODELS.get(cfg.model.name)
        model = spec.build(cfg, self.tokenizer.vocab_size)
        self.model_args = model.args
        self.model = spec.parallelize_fn(model, self.parallel_dims, cfg)
        init_model(self.model, self.device, cfg.job.seed)
        self.model_parts = [self.model]
        self.n_params = sum(p.numel() for p in self.model.parameters())

        self.optimizer = build_optimizer(self.model_parts, cfg.optimizer)
        self.schedule = LRSchedule(cfg.lr_scheduler, cfg.optimizer.lr, cfg.training.steps)

        dp_rank, dp_world = self.parallel_dims.dp_rank, self.parallel_dims.dp_world
        t = cfg.training
        self.global_batch = t.global_batch_size if t.global_batch_size != -1 else t.local_batch_size * dp_world
        self.grad_accum = self.global_batch // (t.local_batch_size * dp_world)
        self.train_loader = build_dataloader(cfg, self.tokenizer, dp_rank, dp_world, "train")
        self.val_loader = (build_dataloader(cfg, self.tokenizer, dp_rank, dp_world, "val")
                           if cfg.validation.enable else None)
        self.train_iter = iter(self.train_loader)

        self.metrics = MetricsLogger(cfg.job.dump_folder, self.rank == 0,
                                     cfg.metrics.enable_tensorboard, cfg.metrics.console)
        self.hooks: dict[str, list[Callable[[Trainer], None]]] = {k: [] for k in HOOK_POINTS}
        self.step = 0
        self.step_metrics: dict[str, float] = {}
        self.last_loss = math.nan

    # ------------------------------------------------------------------ pieces
    def add_hook(self, point: str, fn: Callable[[Trainer], None]) -> None:
        """Run ``fn(trainer)`` at ``point`` (one of HOOK_POINTS) on every step."""
        if point not in self.hooks:
            raise KeyError(f"unknown hook point {point!r}; known: {', '.join(HOOK_POINTS)}")
        self.hooks[point].append(fn)

    def _run_hooks(self, point: str) -> None:
        for fn in self.hooks[point]:
            fn(self)

    def _compute_context(self):
        """Autocast for single-device mixed precision (FSDP2 handles it when sharding)."""
        dtype = getattr(torch, self.cfg.training.mixed_precision_param)
        if self.device.type == "cuda" and dtype != torch.float32 and not self.parallel_dims.dp_enabled:
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy, in float32."""
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    def forward_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """This rank's mean loss on one micro-batch."""
        with self._compute_context():
            logits = self.model(inputs)
        return self.loss_fn(logits, labels)

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
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            with loss_context(self.parallel_dims):
                loss = self.forward_loss(inputs, labels) / self.grad_accum
                loss.backward()
            loss_sum += loss.detach()
        grad_norm = clip_grad_norm_(self.trainable_parameters(), self.cfg.training.max_norm)
        loss_value, norm_value = loss_sum.item(), float(grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            raise NonFiniteLossError(
                f"non-finite {'loss' if not math.isfinite(loss_value) else 'gradient norm'} at step "
                f"{self.step} (loss={loss_value}, grad_norm={norm_value}); stopping before the update")
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
        """Run until ``training.steps``; log, validate and call hooks along the way."""
        cfg = self.cfg
        steps = cfg.training.steps
        pd = self.parallel_dims
        if self.rank == 0:
            print(f"titanwarm: {cfg.job.description} | {cfg.model.name}/{cfg.model.flavor} "
                  f"{self.n_params / 1e6:.2f}M params | world {self.world_size} "
                  f"(dp_replicate {pd.dp_replicate} x dp_shard {pd.dp_shard} x tp {pd.tp}) | device {self.device} | global batch "
                  f"{self.global_batch} x {cfg.training.seq_len} tokens, grad accum {self.grad_accum}",
                  flush=True)
        tokens_per_step = self.global_batch * cfg.training.seq_len
        window_start, window_steps = time.perf_counter(), 0
        while self.step < steps:
            self.step += 1
            self.step_metrics = {}
            loss, grad_norm = self.train_step()
            window_steps += 1
            self._run_hooks("after_step")
            self.last_loss = loss
            log_now = self._should(cfg.metrics.log_freq)
            val_now = self.val_loader is not None and self._should(cfg.validation.freq)
            if not (log_now or val_now):
                continue
            elapsed = time.perf_counter() - window_start
            values = {"loss": all_reduce_mean(loss, self.parallel_dims.dp_mesh), "grad_norm": grad_norm,
                      "lr": self.lr,
                      "tokens_per_sec": tokens_per_step * window_steps / elapsed,
                      **memory_stats(self.device), **self.step_metrics}
            util = mfu(self.model_args, self.n_params, cfg.training.seq_len,
                       values["tokens_per_sec"] / self.world_size, self.device)
            if util is not None:
                values["mfu"] = util
            if val_now:
                values.update(self.validate())
            self.metrics.log_step(self.step, values, prefix=self.progress())
            window_start, window_steps = time.perf_counter(), 0
        self.metrics.close()

    def progress(self) -> str:
        """Console prefix: step out of total and percentage."""
        steps = self.cfg.training.steps
        return f"[{self.step}/{steps} {100 * self.step / steps:.0f}%]"
