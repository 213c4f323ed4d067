"""The torchtitan 0.3.x glue: ``TitanwarmTrainer``, torchtitan's ``Trainer`` with warm-up and tracking.

torchtitan 0.3 jobs are Python: ``--module M --config FN`` names a function returning a
``Trainer.Config``, ``config.build()`` builds the trainer. ``TitanwarmTrainer.Config`` adds the
``depth_schedule`` and ``curvature`` sections (titanwarm's own dataclasses, so keys, defaults and
``--depth_schedule.X`` / ``--curvature.X`` overrides mean what they mean in titanwarm) and checks
them, with everything the adapter cannot support, when the config is made (before any compute).
``TitanwarmTrainer``:

- after torchtitan's ``__init__`` (model parallelised, optimizers, LR schedulers and checkpointer
  built) attaches the shared adapter (``adapter.py``): locks the blocks, registers the step
  post-hook, adds the lock and tracker states to ``checkpointer.states``, feeds the metrics into
  ``metrics_processor.log``;
- keeps the first ``[curvature] batch_size`` sequences of each training micro-batch as the data
  loader gave it; at a tracked step it runs ``post_dataloading_process`` (the class's own: a
  fork's processing, masks for the cut batch, context-parallel sharding) on that cut batch
  once, leaving ``ntokens_seen`` as training left it (the tracker's batch is not training data);
- gives the tracker torchtitan's own loss normalisation: ``loss_fn(pred, labels,
  global_valid_tokens)`` with the cut batch's valid-token count summed over the batch mesh (as
  ``train_step`` does), the LM head applied by hand when the loss is a ``ChunkedLossWrapper``
  (the model then returns hidden states), under ``train_context``.

A fork with its own ``Trainer`` subclass mixes in :class:`TitanwarmMixin` instead (see
docs/torchtitan.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from titanwarm.integrations.torchtitan.features import require

require("trainer")

from torchtitan.components.loss import IGNORE_INDEX  # noqa: E402
from torchtitan.distributed import utils as dist_utils  # noqa: E402
from torchtitan.models.common.attention import FlexAttention, VarlenAttention  # noqa: E402
from torchtitan.trainer import Trainer  # noqa: E402

from titanwarm.archwarm.config import DepthSchedule  # noqa: E402
from titanwarm.curvature import Curvature  # noqa: E402
from titanwarm.integrations.torchtitan.adapter import TitanwarmAdapter, check_config  # noqa: E402
from titanwarm.integrations.torchtitan.checkpoint_states import titanwarm_states  # noqa: E402
from titanwarm.integrations.torchtitan.metrics import wrap_metrics_processor  # noqa: E402

NO_DOUBLE_BACKWARD = (FlexAttention, VarlenAttention)
"""torchtitan inner attentions whose kernels have no double backward (no autograd HVPs)."""


def unsupported(config: Any) -> list[str]:
    """What the adapter cannot run in ``config`` (a ``TitanwarmTrainer.Config``), one line each."""
    ds, cv = config.depth_schedule, config.curvature
    if not ds.enabled and not cv.enabled:
        return []
    bad = []
    if config.parallelism.pipeline_parallel_degree > 1:
        bad.append("parallelism.pipeline_parallel_degree > 1: titanwarm's torchtitan adapter does "
                   "not support pipeline parallelism")
    if ds.enabled and not config.training.disable_cuda_graphs:
        bad.append("depth_schedule with CUDA graphs: a graph freezes which blocks run and which "
                   "parameters train at capture; set --training.disable_cuda_graphs")
    spec = config.model_spec
    if cv.enabled and cv.hvp == "autograd" and spec is not None:
        kinds = [m.__name__ for m in NO_DOUBLE_BACKWARD if any(spec.model.traverse(m.Config))]
        if kinds:
            bad.append(f'curvature.hvp = "autograd": {", ".join(kinds)} has no double backward; use '
                       'hvp = "finite_difference" (or "auto")')
    if spec is not None:
        try:
            check_config(ds, cv, len(spec.model.layers), int(config.lr_scheduler.warmup_steps),
                         config.training.steps, config.training.mixed_precision_param)
        except ValueError as e:
            bad.append(str(e))
    return bad


class TitanwarmMixin:
    """The warm-up and tracking glue for a torchtitan 0.3 ``Trainer`` (or a fork's subclass of
    it). Expects ``self.config`` to carry ``depth_schedule`` and ``curvature``; call
    :meth:`attach_titanwarm` at the end of ``__init__``."""

    titanwarm: TitanwarmAdapter | None = None

    def attach_titanwarm(self) -> TitanwarmAdapter | None:
        """Build the adapter on the built trainer (after its optimizers; None when both sections
        are off) and wire it to the checkpointer and the metrics processor."""
        cfg = self.config
        bad = unsupported(cfg)
        if bad:
            raise ValueError("; ".join(bad))
        ds, cv = cfg.depth_schedule, cfg.curvature
        if not ds.enabled and not cv.enabled:
            self.titanwarm = None
            return None
        adapter = TitanwarmAdapter(self.model_parts, self.optimizers, ds, cv,
                                   warmup_steps=int(cfg.lr_scheduler.warmup_steps),
                                   seed=cfg.debug.seed or 0, training_steps=cfg.training.steps,
                                   tracker_loss=self.titanwarm_tracker_loss,
                                   mixed_precision_param=cfg.training.mixed_precision_param)
        adapter.context = self.train_context
        adapter.prepare_batch = self.titanwarm_prepare_batch
        states = getattr(self.checkpointer, "states", None)  # absent when checkpointing is off
        if states is not None:
            states.update(titanwarm_states(self.optimizers))
        wrap_metrics_processor(self.metrics_processor)
        self.titanwarm = adapter
        return adapter

    def post_dataloading_process(self, input_dict: dict[str, torch.Tensor],
                                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        adapter = self.titanwarm
        if adapter is not None and adapter.wants_batch() and torch.is_grad_enabled():
            adapter.record_batch((dict(input_dict), labels))  # the adapter cuts it to batch_size
        return super().post_dataloading_process(input_dict, labels)

    def titanwarm_prepare_batch(self, batch: tuple) -> tuple:
        """The kept (cut) raw micro-batch as ``titanwarm_tracker_loss`` takes it:
        ``post_dataloading_process``'s output and the valid-token count (counted before context
        parallelism splits the labels, as ``train_step`` counts)."""
        input_dict, labels = batch
        valid = (labels != IGNORE_INDEX).sum()
        seen = self.ntokens_seen
        try:
            # the whole chain (a fork's override included); it keeps no batch while tracking
            inputs, labels, extra_kwargs = self.post_dataloading_process(dict(input_dict), labels)
        finally:
            self.ntokens_seen = seen
        return inputs, labels, extra_kwargs, valid

    def titanwarm_tracker_loss(self, parts: list[nn.Module], batch: tuple) -> torch.Tensor:
        """torchtitan's loss on a prepared micro-batch, normalised as ``train_step`` normalises
        it (by the batch's valid tokens summed over the batch mesh)."""
        inputs, labels, extra_kwargs, valid = batch
        pred = parts[0](inputs, **extra_kwargs)
        loss_fn = self.loss_fn
        head = getattr(loss_fn, "lm_head", None)
        if head is not None and getattr(parts[0], "_skip_lm_head", False):
            # ChunkedLossWrapper backpropagates inside its call (no double backward): the model
            # returned hidden states; apply the LM head and the wrapped per-chunk loss here.
            pred, loss_fn = head(pred), loss_fn.loss_fn
        dims = self.parallel_dims
        valid = valid.to(pred.device if isinstance(pred, torch.Tensor) else labels.device)
        if dims.dp_enabled:
            valid = dist_utils.dist_sum_tensor(valid, dims.get_mesh("batch"))
        loss_kwargs = {"positions": extra_kwargs["positions"]} if "positions" in extra_kwargs else {}
        loss, _ = loss_fn(pred, labels, valid, **loss_kwargs)
        return loss


class TitanwarmTrainer(TitanwarmMixin, Trainer):
    """torchtitan's ``Trainer`` with titanwarm's architecture warm-up and curvature tracking."""

    @dataclass(kw_only=True, slots=True)
    class Config(Trainer.Config):
        depth_schedule: DepthSchedule = field(default_factory=DepthSchedule)
        """Architecture warm-up: locked blocks and their unlock schedule (see
        titanwarm/archwarm/config.py and docs/torchtitan.md)."""
        curvature: Curvature = field(default_factory=Curvature)
        """Warm-started lambda_max tracking of Adam's preconditioned Hessian (see
        titanwarm/curvature/config.py)."""

        def __post_init__(self) -> None:
            Trainer.Config.__post_init__(self)  # slots=True: no zero-argument super() here
            bad = unsupported(self)
            if bad:
                raise ValueError("titanwarm: " + "; ".join(bad))

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.attach_titanwarm()


def with_titanwarm(base: Any, depth_schedule: DepthSchedule | None = None,
                   curvature: Curvature | None = None) -> TitanwarmTrainer.Config:
    """``base`` (any torchtitan ``Trainer.Config``, e.g. a recipe's) as a
    ``TitanwarmTrainer.Config`` with the two sections (default: both off)."""
    kept = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    return TitanwarmTrainer.Config(**kept, depth_schedule=depth_schedule or DepthSchedule(),
                                   curvature=curvature or Curvature())
