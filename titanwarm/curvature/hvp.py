"""Hessian-vector products of the global mean loss for plain, FSDP2, TP and FSDP2xTP models.

**Parameter substitution.** The tracker never calls the model directly: it wraps
``loss_fn(model_parts, batch)`` in a container module and runs it through
``torch.func.functional_call`` with every tracked parameter replaced by a tensor it controls (the
parameter itself for autograd HVPs, ``θ ± εv`` for finite differences). The same ``loss_fn``
therefore works for any layout; it must only call the modules in ``model_parts`` (not cached
copies of their weights).

**FSDP2 without its hooks.** ``fully_shard`` all-gathers parameters in forward pre-hooks, outside
autograd, so ``autograd.grad`` w.r.t. sharded parameters fails. During the tracker's passes the
FSDP forward pre/post hooks are taken off the modules (by the ids of the handles FSDP keeps on
its state, ``FSDPState._pre_forward_hook_handle`` / ``_post_forward_hook_handle``; other hooks,
e.g. TP's input/output redistribution, stay) and put back afterwards in their original order.
Each sharded DTensor parameter is instead substituted by what FSDP's unshard would produce,
built with differentiable DTensor ops: ``redistribute`` to ``Replicate`` over the data-parallel
mesh dims (an all-gather recorded in the graph), ``to_local(grad_placements=Partial())`` (so the
backward is a reduce-scatter *sum* over data-parallel ranks), a cast to FSDP's ``param_dtype``,
and for FSDP2xTP ``DTensor.from_local`` on the TP mesh with the TP placements. Each rank's loss is
the mean over its local batch; it is multiplied by ``1 / dp_size`` so that the summed gradient is
the gradient of the global mean loss (equal local batch sizes assumed). The layouts are read from
FSDP's per-parameter records (``FSDPParam``): these are private torch 2.13 attributes.

**TP double backward.** In torch 2.13, ``DTensor.from_local``'s backward (used by the TP input
hooks, e.g. ColwiseParallel turning a replicated plain activation into a DTensor) redistributes a
``Partial`` gradient with a raw collective on the local tensor, *outside autograd* (a TODO in
``torch/distributed/tensor/_api.py``). Everything upstream of a TP module (embeddings, norms,
earlier blocks) then silently loses its second-order terms: measured HVP errors of 15-100%.
While the tracker builds a gradient with ``create_graph=True`` it swaps in a differentiable
version of that backward (``grad.redistribute(...).to_local()``, the same values; see
:func:`differentiable_from_local`), restoring the original afterwards.

**Methods.** ``AutogradHVP``: one forward + ``autograd.grad(create_graph=True)``, then every HVP
is a second backward of ``<g, v>`` through the retained graph (so k HVPs cost one
forward/backward-with-graph plus k double backwards; the graph is freed after the step). The
forward runs under ``sdpa_kernel(SDPBackend.MATH)`` because fused SDPA kernels have no double
backward. ``FiniteDifferenceHVP``: central difference ``(g(θ+εx̂) - g(θ-εx̂)) / 2ε * ||x||``
(x̂ = x/||x||), ``ε = fd_eps * ||θ||`` over the tracked parameters (``fd_relative=True``) or
``ε = fd_eps``; two first-order gradients per HVP, any attention kernel. The perturbed parameters
are new tensors substituted functionally: the model's parameters are never modified, so they are
exactly as before. Neither method touches ``.grad``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate
from torch.distributed.tensor.placement_types import Placement
from torch.nn.attention import SDPBackend, sdpa_kernel

from titanwarm.curvature import vectors as V

LossFn = Callable[[list[nn.Module], Any], torch.Tensor]


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


def unsharded_view(leaf: torch.Tensor, layout: FSDPLayout) -> torch.Tensor:
    """What FSDP's unshard would present for ``leaf``, built with differentiable DTensor ops."""
    mesh, tp = leaf.device_mesh, list(leaf.placements[layout.dp_ndim:])
    full = leaf.redistribute(mesh, [Replicate()] * layout.dp_ndim + tp)
    local = full.to_local(grad_placements=[Partial()] * layout.dp_ndim + tp)
    if layout.param_dtype is not None:
        local = local.to(layout.param_dtype)
    if layout.tp_mesh is None:
        return local
    return DTensor.from_local(local, layout.tp_mesh, layout.tp_placements, run_check=False,
                              shape=leaf.shape, stride=leaf.stride())


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


class LossModule(nn.Module):
    """Container so that ``functional_call`` can substitute parameters of all model parts."""

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, loss_fn: LossFn, batch: Any) -> torch.Tensor:
        return loss_fn(list(self.parts), batch)


class SubstitutedLoss:
    """The global mean loss as a function of the tracked parameters' values."""

    def __init__(self, module: LossModule, names: Sequence[str], loss_fn: LossFn,
                 batch: Any) -> None:
        self.parts = list(module.parts)
        self.module = module
        self.loss_fn, self.batch = loss_fn, batch
        self.named = dict(self.module.named_parameters())
        self.names = list(names)
        self.params = [self.named[n] for n in self.names]
        self.layouts = fsdp_layouts(self.parts)
        dp_sizes = {lay.dp_size for lay in self.layouts.values()}
        if len(dp_sizes) > 1:
            raise ValueError(f"parameters sharded over different data-parallel sizes {dp_sizes}")
        self.dp_size = dp_sizes.pop() if dp_sizes else 1

    def _view(self, p: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        layout = self.layouts.get(id(p))
        return value if layout is None else unsharded_view(value, layout)

    def loss(self, values: Sequence[torch.Tensor], math_sdpa: bool) -> torch.Tensor:
        """Scaled local loss (its dp-sum is the global mean) with ``values`` substituted."""
        tracked = {n: self._view(p, v) for n, p, v in zip(self.names, self.params, values)}
        for n, p in self.named.items():
            if n not in tracked and id(p) in self.layouts:  # frozen FSDP parameter
                tracked[n] = self._view(p, p.detach())
        ctx = sdpa_kernel(SDPBackend.MATH) if math_sdpa else contextlib.nullcontext()
        reshard_fsdp(self.parts)
        with fsdp_hooks_disabled(self.parts), ctx:
            loss = torch.func.functional_call(self.module, tracked, (self.loss_fn, self.batch))
        if isinstance(loss, DTensor):
            loss = loss.full_tensor()
        return loss / self.dp_size

    def grads(self, values: Sequence[torch.Tensor], create_graph: bool,
              math_sdpa: bool) -> list[torch.Tensor | None]:
        """Gradient of the global mean loss w.r.t. ``values`` (None where unused)."""
        loss = self.loss(values, math_sdpa)
        ctx = differentiable_from_local() if create_graph else contextlib.nullcontext()
        with ctx:
            return list(torch.autograd.grad(loss, values, create_graph=create_graph,
                                            allow_unused=True))


class AutogradHVP:
    """Exact HVPs by reverse-over-reverse differentiation through one retained graph."""

    name = "autograd"

    def __init__(self, fn: SubstitutedLoss) -> None:
        self.fn = fn
        self.calls = 0
        self._grads: list[torch.Tensor | None] | None = None

    def __call__(self, x: V.Vector) -> V.Vector:
        if self._grads is None:
            self._grads = self.fn.grads(self.fn.params, create_graph=True, math_sdpa=True)
        self.calls += 1
        idx = [i for i, g in enumerate(self._grads) if g is not None and g.requires_grad]
        out = V.zeros_like_params(self.fn.params)
        if not idx:
            return out
        s = V.dot([self._grads[i] for i in idx], [x[i].to(self._grads[i].dtype) for i in idx])
        hv = torch.autograd.grad(s, self.fn.params, retain_graph=True, allow_unused=True)
        for i, h in enumerate(hv):
            if h is not None:
                out[i] = V.as_layout(h.detach(), self.fn.params[i])
        return out

    def release(self) -> None:
        """Free the retained graph."""
        self._grads = None


class FiniteDifferenceHVP:
    """Central-difference HVPs from two first-order gradients (any kernel, any layout)."""

    name = "finite_difference"

    def __init__(self, fn: SubstitutedLoss, fd_eps: float, relative: bool) -> None:
        self.fn = fn
        self.calls = 0
        theta = [p.detach() for p in fn.params]
        self.eps = fd_eps * V.norm(theta) if relative else fd_eps
        if self.eps <= 0:
            raise ValueError(f"finite-difference step must be > 0, got {self.eps}")

    def _grads_at(self, x_hat: V.Vector, sign: float) -> list[torch.Tensor | None]:
        values = [(p.detach() + (sign * self.eps) * x.to(p.dtype)).requires_grad_()
                  for p, x in zip(self.fn.params, x_hat)]
        return self.fn.grads(values, create_graph=False, math_sdpa=False)

    def __call__(self, x: V.Vector) -> V.Vector:
        self.calls += 1
        nx = V.norm(x)
        out = V.zeros_like_params(self.fn.params)
        if nx == 0.0:
            return out
        x_hat = V.scale(x, 1.0 / nx)
        gp, gm = self._grads_at(x_hat, 1.0), self._grads_at(x_hat, -1.0)
        c = nx / (2.0 * self.eps)
        for i, (a, b) in enumerate(zip(gp, gm)):
            if a is not None and b is not None:
                p = self.fn.params[i]
                out[i] = (V.as_layout(a, p) - V.as_layout(b, p)) * c
        return out

    def release(self) -> None:
        """Nothing retained between HVPs."""


HVPOperator = AutogradHVP | FiniteDifferenceHVP
