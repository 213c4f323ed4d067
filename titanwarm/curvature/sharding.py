"""How the tracker's passes get around FSDP2 and TP (used by ``hvp.py``).

**Data parallelism outside autograd.** ``fully_shard`` all-gathers parameters in forward
pre-hooks, outside autograd, so ``autograd.grad`` w.r.t. sharded parameters fails. The tracker
takes FSDP's forward hooks off during its passes (by the ids of the handles FSDP keeps on its
state; other hooks, e.g. TP's, stay; put back in their original order) and all-gathers each used
parameter itself (:func:`gather_full`, outside autograd, in the pass's compute dtype; locked
blocks, whose modules have ``skip = True``, are never gathered). Each rank then differentiates
*its own* mean loss twice with no data-parallel collective in the graph, and the HVP of the global
mean loss is the data-parallel mean of the per-rank HVPs (:func:`scatter_mean`, a reduce-scatter
to the parameter's shards; equal local batch sizes assumed). The layouts are read from FSDP's
per-parameter records (``FSDPParam``): private torch 2.13 attributes. Keeping the collectives
at these explicit points is what lets a failing rank stay in step (``agreement.py``).

**TP double backward.** In torch 2.13, ``DTensor.from_local``'s backward (used by the TP input
hooks, e.g. ColwiseParallel turning a replicated plain activation into a DTensor) redistributes a
``Partial`` gradient with a raw collective on the local tensor, *outside autograd* (a TODO in
``torch/distributed/tensor/_api.py``). Everything upstream of a TP module (embeddings, norms,
earlier blocks) then silently loses its second-order terms: measured HVP errors of 15-100%.
While the tracker builds a gradient with ``create_graph=True`` it swaps in a differentiable
version of that backward (``grad.redistribute(...).to_local()``, the same values; see
:func:`differentiable_from_local`), restoring the original afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate
from torch.distributed.tensor.placement_types import Placement

from titanwarm.curvature import vectors as V


@dataclass(frozen=True)
class FSDPLayout:
    """How FSDP2 shards one parameter and what its unsharded form looks like."""

    dp_ndim: int
    """Leading mesh dims of the sharded parameter that are data-parallel (shard/replicate)."""
    dp_size: int
    """Number of data-parallel ranks (product of those dims)."""
    tp_mesh: Any
    """DeviceMesh of the unsharded (TP) DTensor, or None for a plain unsharded tensor."""
    tp_placements: tuple[Placement, ...]
    """Placements of the unsharded DTensor on ``tp_mesh``."""
    param_dtype: torch.dtype | None
    """FSDP MixedPrecisionPolicy.param_dtype (compute dtype), None = the parameter's dtype."""


def _fsdp_states(modules: Sequence[nn.Module]) -> list[Any]:
    from torch.distributed.fsdp._fully_shard._fsdp_state import _get_module_fsdp_state

    states: dict[int, Any] = {}
    for part in modules:
        for m in part.modules():
            state = _get_module_fsdp_state(m)
            if state is not None:
                states[id(state)] = state
    return list(states.values())


def fsdp_layouts(modules: Sequence[nn.Module]) -> dict[int, FSDPLayout]:
    """``id(sharded parameter) -> FSDPLayout`` for every FSDP2-managed parameter."""
    out: dict[int, FSDPLayout] = {}
    for state in _fsdp_states(modules):
        for group in state._fsdp_param_groups:
            for fp in group.fsdp_params:
                mesh = fp.sharded_param.device_mesh
                tp_spec = fp._unsharded_dtensor_spec if fp.is_dtensor else None
                dp_ndim = mesh.ndim - (len(tp_spec.placements) if tp_spec is not None else 0)
                dtype = fp.mp_policy.param_dtype
                out[id(fp.sharded_param)] = FSDPLayout(
                    dp_ndim=dp_ndim,
                    dp_size=math.prod(mesh.size(d) for d in range(dp_ndim)),
                    tp_mesh=tp_spec.mesh if tp_spec is not None else None,
                    tp_placements=tuple(tp_spec.placements) if tp_spec is not None else (),
                    param_dtype=dtype if dtype != fp.sharded_param.dtype else None)
    return out


def reshard_fsdp(modules: Sequence[nn.Module]) -> None:
    """Put every FSDP2 module in its sharded state (public ``FSDPModule.reshard``)."""
    from torch.distributed.fsdp import FSDPModule

    for part in modules:
        for m in part.modules():
            if isinstance(m, FSDPModule):
                m.reshard()


@contextlib.contextmanager
def fsdp_hooks_disabled(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Take FSDP2's forward pre/post hooks off every FSDP module (only those hooks), restore the
    hook dicts exactly (same order) on exit."""
    saved: list[tuple[dict, list]] = []
    try:
        for state in _fsdp_states(modules):
            ids = set()
            for handle in (state._pre_forward_hook_handle, state._post_forward_hook_handle):
                for h in getattr(handle, "handles", (handle,)):
                    ids.add(h.id)
            for m in state._modules:
                for hooks in (m._forward_pre_hooks, m._forward_hooks):
                    saved.append((hooks, list(hooks.items())))
                    for i in ids:
                        hooks.pop(i, None)
        yield
    finally:
        for hooks, items in saved:
            hooks.clear()
            hooks.update(items)


def gather_full(value: torch.Tensor, layout: FSDPLayout) -> torch.Tensor:
    """What FSDP's unshard presents for ``value`` (sharded like its parameter): the full tensor on
    this rank, a TP DTensor under FSDP2xTP; outside autograd, in ``value``'s dtype (collective)."""
    with torch.no_grad():
        mesh, tp = value.device_mesh, list(value.placements[layout.dp_ndim:])
        full = value.redistribute(mesh, [Replicate()] * layout.dp_ndim + tp).to_local()
        if layout.tp_mesh is None:
            return full
        return DTensor.from_local(full, layout.tp_mesh, layout.tp_placements, run_check=False,
                                  shape=value.shape, stride=value.stride())


def scatter_mean(h: torch.Tensor, like: torch.Tensor, layout: FSDPLayout) -> torch.Tensor:
    """The mean over data-parallel ranks of a per-rank full tensor ``h`` (plain, or TP DTensor),
    sharded like the parameter ``like`` (a reduce-scatter), in ``like``'s vector dtype."""
    with torch.no_grad():
        if isinstance(h, DTensor):
            h = h.redistribute(layout.tp_mesh, layout.tp_placements).to_local()
        h = h.to(V.vector_dtype(like.dtype))
        tp = list(like.placements[layout.dp_ndim:])
        out = DTensor.from_local(h, like.device_mesh, [Partial()] * layout.dp_ndim + tp,
                                 run_check=False, shape=like.shape, stride=like.stride())
        out = out.redistribute(like.device_mesh, like.placements)
        return out / layout.dp_size


def _from_local_backward(ctx: Any, grad_output: DTensor | None) -> tuple[Any, ...]:
    """``_FromTorchTensor.backward`` with the Partial->Replicate reduction kept in autograd."""
    from torch.distributed.tensor._api import _normalize_placements_for_grad

    nones = (None,) * _FROM_LOCAL_NARGS
    if grad_output is None:
        return (None, *nones)
    placements = ctx.grad_placements
    if placements is None:
        placements = _normalize_placements_for_grad(ctx.forward_input_placements)
    if tuple(grad_output.placements) != tuple(placements):
        grad_output = grad_output.redistribute(ctx.forward_input_device_mesh, placements)
    return (grad_output.to_local(), *nones)


_FROM_LOCAL_NARGS = 6  # non-tensor inputs of _FromTorchTensor.forward after ``input``


@contextlib.contextmanager
def differentiable_from_local() -> Iterator[None]:
    """Make ``DTensor.from_local``'s backward differentiable (see the module docstring)."""
    from torch.distributed.tensor._api import _FromTorchTensor

    original = _FromTorchTensor.__dict__["backward"]
    _FromTorchTensor.backward = staticmethod(_from_local_backward)
    try:
        yield
    finally:
        _FromTorchTensor.backward = original
