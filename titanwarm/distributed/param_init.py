"""Layout-independent parameter initialisation: the same weights on 1 process and under any
FSDP2 / TP / HSDP sharding.

Why not DTensor's own RNG: in torch 2.13 ``torch.distributed.tensor`` random ops are only supported on
CUDA-like meshes (``is_rng_supported_mesh`` is False on CPU, where each rank just draws from its own
generator), and even on CUDA the offset-based tracker's values depend on the placements. So every
parameter is instead drawn in full from a CPU generator seeded by ``(seed, parameter name)``
(``weight_init.param_generator``), and each rank keeps its own shard of it.

Memory trade-off: each rank materialises one full parameter at a time in float32 on the CPU (and,
for a CUDA mesh, transiently on its GPU before slicing); the peak is the largest matrix (the
embedding: vocab_size * dim * 4 bytes, about 1 GiB for the 1B flavor, 4 GiB for 70B), never the whole
model. The price is time: every rank generates every parameter on the CPU, so initialising 8B/70B
takes minutes.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from titanwarm.models.weight_init import param_generator

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
    shared = _shared_parameters(model)
    model.to_empty(device=device)
    for owners in shared:  # to_empty gives each owner of a tied parameter its own copy: tie again
        param = getattr(*owners[0])
        for module, attr in owners[1:]:
            setattr(module, attr, param)
    plan = model.init_plan()
    for name, param in model.named_parameters():
        key = canonical_name(name)
        fill_param(param, plan[key].sample(param.shape, param_generator(seed, key)))
    model.init_buffers()


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
