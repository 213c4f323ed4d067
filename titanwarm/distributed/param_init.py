"""Layout-independent parameter initialisation: the same weights on 1 process and under any
FSDP2 / TP / HSDP sharding, each rank drawing only the elements it keeps, on its own device.

Why not DTensor's own RNG: in torch 2.13 ``torch.distributed.tensor`` random ops are only supported on
CUDA-like meshes (``is_rng_supported_mesh`` is False on CPU, where each rank just draws from its own
generator), and even on CUDA the offset-based tracker's values depend on the placements. Instead,
element i of a parameter is a pure function of (seed, name, i) (``weight_init``: counter-based), and
a rank computes the global indices of its shard: for each tensor dimension, the indices it holds
along that dimension (DTensor's own slicing, ``distribute_tensor``, applied to a stride-0 expanded
``arange``, so that uneven, strided FSDP2 x TP and HSDP placements are sliced exactly as the
parameter is). Its shard is the product of those lists. Nothing full-sized is drawn or held; the
work per rank shrinks with the number of ranks (scripts/bench_init.py measures it).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from titanwarm.models.weight_init import InitRule, param_key

WRAPPER_PARTS = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")
"""Attribute names that activation-checkpoint, compile and FSDP1 wrappers put around a module."""


def canonical_name(name: str) -> str:
    """A parameter name without the parts that activation-checkpoint and compile wrappers add."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_PARTS)


@torch.no_grad()
def init_model(model: nn.Module, device: torch.device | str, seed: int) -> None:
    """Materialise ``model`` (built on the meta device, parallelised or not) on ``device`` and
    initialise it per ``model.init_plan()``, identically in every parallel layout.

    ``model`` must provide ``init_plan() -> {name: InitRule}`` (names as in the unwrapped model's
    ``named_parameters()``) and ``init_buffers()``.
    """
    _to_empty(model, device)
    plan = model.init_plan()
    for name, param in model.named_parameters():
        key = canonical_name(name)
        draw_param(param, plan[key], param_key(seed, key))
    model.init_buffers()


def materialize(model: nn.Module, device: torch.device | str) -> None:
    """Allocate ``model`` (built on the meta device) on ``device`` without initialising its
    parameters (they are about to be loaded from a checkpoint); buffers are computed."""
    _to_empty(model, device)
    model.init_buffers()


def _to_empty(model: nn.Module, device: torch.device | str) -> None:
    shared = _shared_parameters(model)
    model.to_empty(device=device)
    for owners in shared:  # to_empty gives each owner of a tied parameter its own copy: tie again
        param = getattr(*owners[0])
        for module, attr in owners[1:]:
            setattr(module, attr, param)


def local_indices(param: torch.Tensor) -> list[torch.Tensor] | None:
    """Per dimension, the global indices of this rank's shard of ``param`` along it (int64, on the
    parameter's device); None when the shard is empty."""
    local = param.to_local() if isinstance(param, DTensor) else param
    if local.numel() == 0:
        return None
    if not isinstance(param, DTensor):
        return [torch.arange(n, device=param.device) for n in param.shape]
    out = []
    for dim, size in enumerate(param.shape):
        view = [1] * param.dim()
        view[dim] = size
        ramp = torch.arange(size, device=local.device).view(view).expand(param.shape)
        mine = distribute_tensor(ramp, param.device_mesh, param.placements, src_data_rank=None).to_local()
        out.append(mine[tuple(slice(None) if d == dim else 0 for d in range(param.dim()))])
    return out


@torch.no_grad()
def draw_param(param: torch.Tensor, rule: InitRule, key: int) -> None:
    """Fill this rank's shard of ``param`` with ``rule``'s counter-based values for stream ``key``
    (the same values as ``rule.sample(param.shape, key)`` at those positions)."""
    local = param.to_local() if isinstance(param, DTensor) else param
    index = local_indices(param)
    if index is None:
        return
    if param.dim() == 1:
        rows, cols, n_cols = torch.zeros(1, dtype=torch.int64, device=local.device), index[0], param.shape[0]
        target = local.view(1, -1)
    elif param.dim() == 2:
        rows, cols, n_cols = index[0], index[1], param.shape[1]
        target = local
    else:
        raise ValueError(f"draw_param handles 1-D and 2-D parameters, not shape {tuple(param.shape)}")
    rule.fill_(target, key, rows, cols, n_cols)


@torch.no_grad()
def fill_param(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the full (unsharded, identical on every rank) tensor ``full`` into ``param``, keeping
    only this rank's slice when ``param`` is a DTensor."""
    if isinstance(param, DTensor):
        # src_data_rank=None: every rank holds the same full tensor and keeps its own slice
        # (Shard, _StridedShard for FSDP2 x TP, Replicate), with no communication.
        full = distribute_tensor(full.to(param.device), param.device_mesh, param.placements,
                                 src_data_rank=None)
    param.copy_(full)


def _shared_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """(module, attribute) owners of each parameter registered in more than one place."""
    owners: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for attr, param in module._parameters.items():
            if param is not None:
                owners[id(param)].append((module, attr))
    return [group for group in owners.values() if len(group) > 1]
