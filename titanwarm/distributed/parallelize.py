"""Turn a plain Llama 3 ``Transformer`` into a parallel one, in torchtitan's order: tensor parallelism,
then activation checkpointing, then per-block ``torch.compile``, then FSDP2 (HSDP when replicated).

Everything is applied in place to a model still on the meta device; materialise and initialise it
afterwards with ``titanwarm.distributed.param_init.init_model``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                               SequenceParallel, loss_parallel, parallelize_module)

from titanwarm.distributed.init import resolve_device, resolve_param_dtype
from titanwarm.distributed.parallel_dims import ParallelDims

if TYPE_CHECKING:
    from titanwarm.config.sections import ActivationCheckpoint, JobConfig, Training
    from titanwarm.models.llama3.model import Transformer


def parallelize_llama(model: Transformer, parallel_dims: ParallelDims, cfg: JobConfig) -> Transformer:
    """Apply TP, activation checkpointing, compile and FSDP2 as ``cfg`` and ``parallel_dims`` ask.

    ``parallel_dims.build_mesh`` must have been called when more than one process runs. Under loss
    parallelism the logits come out as a DTensor sharded on the vocabulary: compute the loss and
    call backward inside ``loss_context(parallel_dims)``.
    """
    if parallel_dims.tp_enabled:
        apply_tp(model, parallel_dims.mesh["tp"], parallel_dims.loss_parallel)
    apply_activation_checkpointing(model, cfg.activation_checkpoint)
    if cfg.compile.enable:
        for block in model.layers.values():
            block.compile(backend=cfg.compile.backend, fullgraph=True)
    if parallel_dims.dp_enabled:
        apply_fsdp(model, parallel_dims.mesh[parallel_dims.dp_mesh_dims], mixed_precision(cfg.training),
                   cfg.parallelism.fsdp_reshard_after_forward)
    return model


def apply_tp(model: Transformer, tp_mesh: DeviceMesh, loss_parallel_enabled: bool) -> None:
    """Megatron-style plan with sequence parallelism.

    The residual stream between blocks is sharded on the sequence dim (Shard(1)); each norm runs on
    its sequence shard; attention and feed-forward inputs are all-gathered, wq/wk/wv/w1/w3 split
    their output features (heads) and wo/w2 their input features, reduce-scattering back to sequence
    shards. The embedding splits the vocabulary; the output projection splits it too and either
    all-gathers the logits or, with loss parallelism, leaves them sharded for the loss.
    """
    args = model.args
    tp = tp_mesh.size()
    if args.n_heads % tp or args.kv_heads % tp:
        raise ValueError(f"tensor_parallel_degree {tp} must divide n_heads {args.n_heads} and "
                         f"n_kv_heads {args.kv_heads}")
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1),
                                  output_layouts=Shard(-1) if loss_parallel_enabled else Replicate(),
                                  use_local_output=not loss_parallel_enabled),
    })
    if args.tie_embeddings:
        # Both plans shard the shared [vocab, dim] matrix on dim 0: let the two modules share it again.
        model.output.weight = model.tok_embeddings.weight
    block_plan = {
        "attention_norm": SequenceParallel(),
        "attention": PrepareModuleInput(input_layouts=(Shard(1), None),
                                        desired_input_layouts=(Replicate(), None)),
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
        "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        "feed_forward.w3": ColwiseParallel(),
    }
    if args.qk_norm:
        # QK-Norm weights (one head_dim vector shared by all heads) are replicated; each rank
        # normalises its own heads (dim 2 of [B, T, heads, head_dim]) and the weights' gradients,
        # partial over the heads, are summed over the TP ranks by DTensor.
        block_plan["attention.q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        block_plan["attention.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, block_plan)


def apply_activation_checkpointing(model: Transformer, ac: ActivationCheckpoint) -> None:
    """"full": recompute every block in backward; "selective": every ``selective_every``-th block
    (blocks selective_every-1, 2*selective_every-1, ...). Wrapped blocks keep their key in
    ``model.layers``; their parameter names gain a ``_checkpoint_wrapped_module.`` part."""
    if ac.mode == "none":
        return
    if ac.mode not in ("full", "selective"):
        raise ValueError(f"unknown activation_checkpoint.mode {ac.mode!r}")
    if ac.mode == "selective" and ac.selective_every < 1:
        raise ValueError(f"activation_checkpoint.selective_every must be >= 1, got {ac.selective_every}")
    every = 1 if ac.mode == "full" else ac.selective_every
    for index, key in enumerate(list(model.layers)):
        if (index + 1) % every == 0:
            model.layers[key] = checkpoint_wrapper(model.layers[key], preserve_rng_state=False)


def mixed_precision(training: Training) -> MixedPrecisionPolicy:
    """FSDP2 policy: ``mixed_precision_param`` compute (resolved by ``resolve_param_dtype``: "auto"
    is float32 on CPU) / ``mixed_precision_reduce`` gradient reduction, on any device (FSDP2's
    bf16 policy works on CPU/gloo). Sharded master weights stay float32."""
    param = resolve_param_dtype(training.mixed_precision_param, resolve_device(training.device))
    reduce = getattr(torch, training.mixed_precision_reduce) if param != torch.float32 else param
    return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=reduce)


def apply_fsdp(model: Transformer, dp_mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy,
               reshard_after_forward: str) -> None:
    """``fully_shard`` each block, then the root (embedding, final norm, output).

    A 2-D ``dp_mesh`` (dp_replicate, dp_shard) gives HSDP. ``reshard_after_forward``: "always",
    "never", or "default" (every block but the last, whose parameters backward needs first; the root
    keeps FSDP2's own default, which is not to reshard). The gradient divide factor is FSDP2's default
    (mean over data-parallel ranks); it is never overridden, since gloo has no PREMUL_SUM.
    """
    if reshard_after_forward not in ("default", "always", "never"):
        raise ValueError(f"unknown fsdp_reshard_after_forward {reshard_after_forward!r}")
    blocks = list(model.layers.values())
    for index, block in enumerate(blocks):
        reshard = {"always": True, "never": False}.get(reshard_after_forward, index < len(blocks) - 1)
        fully_shard(block, mesh=dp_mesh, mp_policy=mp_policy, reshard_after_forward=reshard)
    root_reshard = {"always": True, "never": False}.get(reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp_policy, reshard_after_forward=root_reshard)


def loss_context(parallel_dims: ParallelDims) -> contextlib.AbstractContextManager:
    """Context for the loss and its backward: ``loss_parallel()`` when the logits are vocab-sharded."""
    return loss_parallel() if parallel_dims.loss_parallel else contextlib.nullcontext()
