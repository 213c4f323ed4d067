"""The torchtitan 0.2.2 glue: a ``TrainSpec`` whose builders attach the shared adapter.

torchtitan 0.2.2 (TOML configs) builds everything through a registered ``TrainSpec``;
:func:`wrap_train_spec` returns a copy whose loss, metrics-processor and optimizer builders add
titanwarm (``register.py`` registers torchtitan's Llama 3 wrapped this way). The fork adds
:func:`~titanwarm.integrations.torchtitan.checkpoint_states.titanwarm_states` to its
``CheckpointManager``. The tracker's batch is captured by a forward pre-hook on the model (its
inputs) and the wrapped loss (its labels); its loss is torchtitan's sum-reduced loss divided by
the number of counted labels, as 0.2.2's ``Trainer`` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from titanwarm.archwarm.config import DepthSchedule
from titanwarm.curvature import Curvature
from titanwarm.integrations.torchtitan.adapter import TitanwarmAdapter
from titanwarm.integrations.torchtitan.metrics import wrap_metrics_processor

IGNORE_INDEX = -100
"""torchtitan's ``components.loss.IGNORE_INDEX`` (labels that do not count)."""


@dataclasses.dataclass
class _Pending:
    """What the wrapped builders pass on to the wrapped optimizer builder: torchtitan 0.2.2 hands
    the JobConfig to ``build_loss_fn`` and ``build_metrics_processor_fn`` (both run before the
    optimizers are built) but only ``job_config.optimizer`` to ``build_optimizers_fn``."""
    job_config: Any = None
    loss_fn: Callable | None = None
    """torchtitan's own (unwrapped) loss function."""
    capture: "BatchCapture | None" = None
    """The batch capture of the last built optimizers (the wrapped loss hands it the labels)."""


PENDING = _Pending()


class BatchCapture:
    """Assembles (args, kwargs, labels) training micro-batches for the adapter: the model's
    forward pre-hook gives the inputs, the wrapped loss the labels."""

    def __init__(self, model: nn.Module, loss_fn: Callable) -> None:
        self.loss_fn = loss_fn
        self.adapter: TitanwarmAdapter | None = None
        """Set once the adapter (which takes :meth:`tracker_loss`) is built."""
        self.inputs: tuple | None = None
        model.register_forward_pre_hook(self.capture_inputs, with_kwargs=True)

    def capture_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if (module.training and torch.is_grad_enabled() and self.adapter is not None
                and self.adapter.wants_batch()):
            self.inputs = (args, dict(kwargs))

    def record_labels(self, labels: torch.Tensor) -> None:
        """Called by the wrapped loss with each training micro-batch's labels."""
        if self.inputs is not None and self.adapter is not None and self.adapter.wants_batch():
            self.adapter.record_batch((*self.inputs, labels))
        self.inputs = None

    def tracker_loss(self, parts: list[nn.Module], batch: tuple) -> torch.Tensor:
        """Mean loss over the counted labels of ``batch`` = (args, kwargs, labels)."""
        args, kwargs, labels = batch
        pred = parts[0](*args, **kwargs)
        count = (labels != IGNORE_INDEX).sum().clamp(min=1)
        return self.loss_fn(pred, labels) / count


def adapter_for(model_parts: list[nn.Module], optimizers: Any, job_config: Any,
                loss_fn: Callable | None = None) -> TitanwarmAdapter | None:
    """Attach a :class:`TitanwarmAdapter` to ``optimizers`` per ``job_config``'s sections (None
    when both are off or absent). For forks that build their optimizers themselves."""
    PENDING.capture = None
    ds = getattr(job_config, "depth_schedule", None) or DepthSchedule()
    cv = getattr(job_config, "curvature", None) or Curvature()
    if not ds.enabled and not cv.enabled:
        return None
    if loss_fn is None:
        from torchtitan.components.loss import cross_entropy_loss as loss_fn
    seed = getattr(job_config.debug, "seed", None) or 0
    capture = BatchCapture(model_parts[0], loss_fn)
    adapter = TitanwarmAdapter(model_parts, optimizers, ds, cv,
                               warmup_steps=int(job_config.lr_scheduler.warmup_steps), seed=seed,
                               training_steps=job_config.training.steps,
                               tracker_loss=capture.tracker_loss,
                               mixed_precision_param=job_config.training.mixed_precision_param)
    capture.adapter, PENDING.capture = adapter, capture
    return adapter


def wrap_train_spec(spec: Any) -> Any:
    """A copy of torchtitan ``TrainSpec`` ``spec`` whose loss, metrics-processor and optimizer
    builders add titanwarm (everything else, the model class included, is ``spec``'s)."""
    base_opt, base_loss = spec.build_optimizers_fn, spec.build_loss_fn
    base_metrics = spec.build_metrics_processor_fn

    def build_loss_fn(job_config, *args, **kwargs):
        PENDING.job_config = job_config
        inner = PENDING.loss_fn = base_loss(job_config, *args, **kwargs)

        def loss_fn(pred, labels, *a, **kw):
            if PENDING.capture is not None and torch.is_grad_enabled():
                PENDING.capture.record_labels(labels)
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
        adapter_for(model_parts, optimizers, PENDING.job_config, PENDING.loss_fn)
        return optimizers

    return dataclasses.replace(spec, build_optimizers_fn=build_optimizers_fn,
                               build_loss_fn=build_loss_fn,
                               build_metrics_processor_fn=build_metrics_processor_fn)
