"""Runs the curvature tracker inside the trainer (``[curvature]``): after the optimizer step of every
``interval``-th step, on the same batch on every rank, and logs the estimate with that step.

The tracker itself (``titanwarm.curvature``) knows nothing of the trainer; this is the glue. It
runs before the architecture warm-up's unlock hook, so a tracked step measures the network that
step trained, and its state (one warm-start vector per tracked matrix) is saved with checkpoints.
A measurement the tracker skips (every rank together, e.g. an out-of-memory error on one rank) is
logged as a ``curvature_skip`` event with the reason; training continues.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from titanwarm.curvature import CurvatureTracker
from titanwarm.curvature.sub_batch import sub_batch
from titanwarm.distributed.parallelize import loss_context

if TYPE_CHECKING:
    from titanwarm.trainer.trainer import Trainer

Batch = tuple[torch.Tensor, torch.Tensor]


class CurvatureHook:
    """``after_optimizer_step`` hook owning a ``CurvatureTracker``."""

    def __init__(self, trainer: Trainer) -> None:
        c = trainer.cfg.curvature
        self.interval = c.interval
        self.batch_size = c.batch_size
        self.dtype = c.hvp_dtype(trainer.cfg)
        self.tracker = CurvatureTracker(trainer.model_parts, trainer.optimizer,
                                        seed=trainer.cfg.job.seed, dtype=self.dtype,
                                        **c.tracker_kwargs())
        # "fixed": the first held-out batch, the same at every tracked step (and on resume).
        self.fixed_batch = next(iter(trainer.val_loader.batches(1))) if c.batch == "fixed" else None
        trainer.add_hook("after_optimizer_step", self)
        trainer.register_state("curvature", self.tracker)

    def __call__(self, trainer: Trainer) -> None:
        if trainer.step % self.interval:
            return
        batch = self.fixed_batch if self.fixed_batch is not None else trainer.batch
        batch = sub_batch(batch, self.batch_size)
        # float32 passes: no autocast (FSDP's param_dtype is bypassed by the tracker itself)
        autocast = self.dtype != torch.float32

        def loss_fn(parts: list[torch.nn.Module], b: Batch) -> torch.Tensor:
            inputs, labels = (t.to(trainer.device) for t in b)
            if autocast:
                with trainer.compute_context():
                    logits = parts[0](inputs)
            else:
                logits = parts[0](inputs)
            return trainer.loss_fn(logits, labels)

        with loss_context(trainer.parallel_dims):
            est = self.tracker.step(loss_fn, batch)
        if est is None:
            if self.tracker.last_skip is not None:
                trainer.metrics.log_event("curvature_skip", trainer.step,
                                          {"reason": self.tracker.last_skip})
            return
        trainer.step_metrics.update(
            lambda_max=est.lambda_max, lr_lambda=est.lr_lambda, stability_threshold=est.threshold,
            stability_ratio=est.ratio, hvps=est.hvps, tracker_residual=est.residual,
            hvp_method=est.hvp, tracker_extra_mib=self.tracker.last_extra_bytes / 2**20)
        trainer.step_metrics.update({f"evec_mass/{k}": v for k, v in self.tracker.last_mass.items()})
        if est.lambda_max_h is not None and est.preconditioned:
            trainer.step_metrics["lambda_max_h"] = est.lambda_max_h
        trainer.log_requested = True
