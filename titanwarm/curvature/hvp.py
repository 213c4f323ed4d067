"""Hessian-vector products of the global mean loss for plain, FSDP2, TP and FSDP2xTP models.

**Parameter substitution.** The tracker never calls the model directly: it wraps
``loss_fn(model_parts, batch)`` in a container module and runs it through
``torch.func.functional_call`` with every used parameter replaced by a tensor it controls (a fresh
autograd leaf for autograd HVPs, ``θ ± εv`` for finite differences). The same ``loss_fn``
therefore works for any layout; it must only call the modules in ``model_parts``.

**Eager, twice differentiable passes** (:func:`eager_pass`). Compiled modules run their original
eager code for the tracker's passes only (AOTAutograd has no double backward; the training steps
stay compiled), fused SDPA is replaced by the math kernel (no double backward for flash/efficient
attention), and modules that record training statistics (QK-Clip's ``record_max_logit``) do not
record.

**Data parallelism and TP** (``sharding.py``): FSDP2's forward hooks are taken off during the
tracker's passes and each used parameter is all-gathered by the tracker itself, outside autograd,
in the pass's compute dtype (locked blocks, whose modules have ``skip = True``, never); each rank
differentiates its own mean loss twice and the HVP of the global mean loss is the data-parallel
mean of the per-rank HVPs (a reduce-scatter to the shards). ``DTensor.from_local``'s backward is
made differentiable while a gradient is built with ``create_graph=True`` (TP). Keeping the
collectives at these explicit points is what lets a failing rank stay in step (``agreement.py``).

**Methods.** ``AutogradHVP``: one forward + ``autograd.grad(create_graph=True)``, then every HVP
is a second backward of ``<g, v>`` through the retained graph (so k HVPs cost one
forward/backward-with-graph plus k double backwards; the graph is freed after the step).
``FiniteDifferenceHVP``: central difference ``(g(θ+εx̂) - g(θ-εx̂)) / 2ε * ||x||``
(x̂ = x/||x||), ``ε = fd_eps * ||θ||`` over the tracked parameters (``fd_relative=True``) or
``ε = fd_eps``; two first-order gradients per HVP; refused in 16-bit compute, where θ ± εx̂ round
to the same weights. The model's parameters are never modified and ``.grad`` is never touched.

Public entry point (stable): ``AutogradHVP(SubstitutedLoss(LossModule(parts), names, loss_fn,
batch, dtype=None))`` is a callable mapping a vector laid out like the parameters ``names`` to
the HVP of the global mean loss; call ``release()`` when done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.nn.attention import SDPBackend, sdpa_kernel

from titanwarm.curvature import vectors as V
from titanwarm.curvature.agreement import Agreement
from titanwarm.curvature.sharding import (differentiable_from_local, fsdp_hooks_disabled,
                                          fsdp_layouts, gather_full, reshard_fsdp, scatter_mean)

LossFn = Callable[[list[nn.Module], Any], torch.Tensor]


class LossModule(nn.Module):
    """Container so that ``functional_call`` can substitute parameters of all model parts."""

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, loss_fn: LossFn, batch: Any) -> torch.Tensor:
        return loss_fn(list(self.parts), batch)


def locked_param_ids(parts: Sequence[nn.Module]) -> set[int]:
    """Parameters of modules the forward leaves out (``skip = True``: locked blocks)."""
    return {id(p) for part in parts for m in part.modules() if getattr(m, "skip", False) is True
            for p in m.parameters()}


@contextlib.contextmanager
def eager_pass(parts: Sequence[nn.Module]) -> Iterator[None]:
    """The tracker's passes: the original modules, twice differentiable, side-effect free.

    Compiled modules (``nn.Module.compile``) run their eager ``_call_impl`` (AOTAutograd has no
    double backward), fused SDPA is replaced by the math kernel, FSDP2's forward hooks are off
    (parameters are substituted), and modules that record statistics in training forwards
    (``record_max_logit``: QK-Clip's per-head max logits) do not record. All restored on exit."""
    saved: list[tuple[nn.Module, str, Any]] = []
    for part in parts:
        for m in part.modules():
            if getattr(m, "_compiled_call_impl", None) is not None:
                saved.append((m, "_compiled_call_impl", m._compiled_call_impl))
                m._compiled_call_impl = None
            if getattr(m, "record_max_logit", False):
                saved.append((m, "record_max_logit", True))
                m.record_max_logit = False
    try:
        reshard_fsdp(parts)
        with fsdp_hooks_disabled(parts), sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for m, attr, value in reversed(saved):
            setattr(m, attr, value)


def _graph_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Differentiable ``sum_i <a_i, b_i>`` of full (plain) or TP DTensor entries, a plain 0-d
    tensor (TP entries reduce over the TP mesh inside the graph)."""
    plain: torch.Tensor | None = None
    per_mesh: dict[Any, torch.Tensor] = {}
    for x, y in zip(a, b, strict=True):
        term = (x * y).sum()
        if isinstance(term, DTensor):
            key = term.device_mesh
            per_mesh[key] = term if key not in per_mesh else per_mesh[key] + term
        else:
            plain = term if plain is None else plain + term
    for term in per_mesh.values():
        value = term.full_tensor()
        plain = value if plain is None else plain + value
    if plain is None:
        raise ValueError("dot product of empty vectors")
    return plain


def failure_reason(err: BaseException) -> str:
    """``"ExceptionType: first line"`` (what the skip event records)."""
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}"[:300]


class SubstitutedLoss:
    """This rank's mean loss as a function of the tracked parameters' full (gathered) values.

    Data-parallel sharding is undone *outside* autograd: :meth:`gather` all-gathers a sharded
    tensor, every pass (forward, gradient, double backward) then runs on this rank alone, and
    :meth:`scatter` averages a per-rank result over the data-parallel ranks and shards it like
    the parameter. The collectives of a tracked step are therefore only at these two points and
    in the solvers' reductions, so a rank that fails in its local compute can keep issuing them
    (see ``agreement.py``). Parameters of locked blocks (``skip = True``) are never gathered;
    parameters that are frozen but used are gathered without gradient.

    ``dtype``: the compute dtype of the passes; None = what the training forward uses (FSDP's
    ``param_dtype``, else the parameter's dtype).
    """

    def __init__(self, module: LossModule, names: Sequence[str], loss_fn: LossFn,
                 batch: Any, dtype: torch.dtype | None = None) -> None:
        self.parts = list(module.parts)
        self.module = module
        self.loss_fn, self.batch = loss_fn, batch
        self.named = dict(self.module.named_parameters())
        self.names = list(names)
        self.params = [self.named[n] for n in self.names]
        self.layouts = fsdp_layouts(self.parts)
        self.dtype = dtype
        dp_sizes = {lay.dp_size for lay in self.layouts.values()}
        if len(dp_sizes) > 1:
            raise ValueError(f"parameters sharded over different data-parallel sizes {dp_sizes}")
        self.dp_size = dp_sizes.pop() if dp_sizes else 1
        tracked = set(self.names)
        locked = locked_param_ids(self.parts)
        self.frozen = [n for n, p in self.named.items()
                       if n not in tracked and id(p) in self.layouts and id(p) not in locked]
        """Names of the frozen parameters the forward uses (gathered without gradient)."""

    def compute_dtype(self, p: torch.Tensor) -> torch.dtype:
        """The dtype ``p`` takes in the passes."""
        if self.dtype is not None and p.is_floating_point():
            return self.dtype
        layout = self.layouts.get(id(p))
        return layout.param_dtype if layout is not None and layout.param_dtype else p.dtype

    def gather(self, value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``value`` (laid out like ``p``) as the passes see it: full, compute dtype, no grad."""
        layout = self.layouts.get(id(p))
        full = gather_full(value, layout) if layout is not None else value.detach()
        return full.to(self.compute_dtype(p))

    def scatter(self, h: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
        """Data-parallel mean of a per-rank pass result ``h`` (None: zero), laid out like ``p``."""
        layout = self.layouts.get(id(p))
        if layout is None:
            return V.zeros_like_params([p])[0] if h is None else V.as_layout(h.detach(), p)
        if h is None:  # zeros of the gathered shape: the collective must still run
            shape = p.shape
            if layout.tp_mesh is not None:
                shape, _ = compute_local_shape_and_global_offset(p.shape, layout.tp_mesh,
                                                                 layout.tp_placements)
            h = torch.zeros(shape, dtype=V.vector_dtype(p.dtype), device=V.local([p])[0].device)
        return scatter_mean(h, p, layout)

    def leaves(self, values: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Gathered tracked values (default: the parameters) as fresh autograd leaves."""
        values = self.params if values is None else values
        return [self.gather(v, p).requires_grad_() for v, p in zip(values, self.params)]

    def frozen_values(self) -> dict[str, torch.Tensor]:
        """Gathered frozen (used) parameters."""
        return {n: self.gather(self.named[n].detach(), self.named[n]) for n in self.frozen}

    def loss(self, leaves: Sequence[torch.Tensor], frozen: dict[str, torch.Tensor]) -> torch.Tensor:
        """This rank's mean loss with ``leaves`` (and ``frozen``) substituted; local compute."""
        values = dict(frozen)
        values.update(zip(self.names, leaves))
        with eager_pass(self.parts):
            loss = torch.func.functional_call(self.module, values, (self.loss_fn, self.batch))
        if isinstance(loss, DTensor):
            loss = loss.full_tensor()
        return loss

    def grads(self, leaves: Sequence[torch.Tensor], frozen: dict[str, torch.Tensor],
              create_graph: bool) -> list[torch.Tensor | None]:
        """Gradient of this rank's loss w.r.t. ``leaves`` (None where unused); local compute."""
        loss = self.loss(leaves, frozen)
        ctx = differentiable_from_local() if create_graph else contextlib.nullcontext()
        with ctx:
            return list(torch.autograd.grad(loss, leaves, create_graph=create_graph,
                                            allow_unused=True))


class AutogradHVP:
    """Exact HVPs by reverse-over-reverse differentiation through one retained graph.

    Per HVP: ``x`` is gathered (collective), ``<g, x>`` is differentiated once more through the
    graph built by the first call (local), and the result is averaged over data-parallel ranks
    and sharded (collective). A failure in the local part is recorded on ``agree`` and the
    collectives still run (with zeros), so that every rank reaches the next agreement point."""

    name = "autograd"

    def __init__(self, fn: SubstitutedLoss, agree: Agreement | None = None) -> None:
        self.fn = fn
        self.agree = agree if agree is not None else Agreement(V.local(fn.params)[0].device)
        self.calls = 0
        self.held_bytes = 0
        """Bytes of the gathered parameters this operator holds (its graph comes on top)."""
        self._leaves: list[torch.Tensor] | None = None
        self._grads: list[torch.Tensor | None] | None = None

    def __call__(self, x: V.Vector) -> V.Vector:
        self.calls += 1
        if self._leaves is None:
            self._leaves = self.fn.leaves()
            self._frozen = self.fn.frozen_values()
            self.held_bytes = sum(V.nbytes([t]) for t in [*self._leaves, *self._frozen.values()])
        xs = [self.fn.gather(xi, p) for xi, p in zip(x, self.fn.params)]
        hv: list[torch.Tensor | None] = [None] * len(xs)
        if self.agree.reason is None:
            try:
                hv = self._local(xs)
            except (RuntimeError, NotImplementedError) as err:  # OutOfMemoryError included
                self.release()
                self.agree.fail(failure_reason(err))
        del xs
        return [self.fn.scatter(h, p) for h, p in zip(hv, self.fn.params)]

    def _local(self, xs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        if self._grads is None:
            self._grads = self.fn.grads(self._leaves, self._frozen, create_graph=True)
        idx = [i for i, g in enumerate(self._grads) if g is not None and g.requires_grad]
        if not idx:
            return [None] * len(xs)
        s = _graph_dot([self._grads[i] for i in idx], [xs[i].to(self._grads[i].dtype) for i in idx])
        with differentiable_from_local():
            hv = torch.autograd.grad(s, self._leaves, retain_graph=True, allow_unused=True)
        return [None if h is None else h.detach() for h in hv]

    def release(self) -> None:
        """Free the retained graph and the gathered parameters."""
        self._grads = None
        self._leaves = None
        self._frozen = {}


class FiniteDifferenceHVP:
    """Central-difference HVPs from two first-order gradients (any kernel, any layout)."""

    name = "finite_difference"

    def __init__(self, fn: SubstitutedLoss, fd_eps: float, relative: bool,
                 agree: Agreement | None = None) -> None:
        self.fn = fn
        self.agree = agree if agree is not None else Agreement(V.local(fn.params)[0].device)
        self.calls = 0
        self.held_bytes = 0
        theta = [p.detach() for p in fn.params]
        self.eps = fd_eps * self.agree.reduce([V.local_dot(theta, theta)])[0] ** 0.5 \
            if relative else fd_eps
        if self.eps <= 0:
            raise ValueError(f"finite-difference step must be > 0, got {self.eps}")

    def __call__(self, x: V.Vector) -> V.Vector:
        self.calls += 1
        (nx2,) = self.agree.reduce([V.local_dot(x, x)])
        nx = nx2 ** 0.5
        if nx == 0.0:
            return V.zeros_like_params(self.fn.params)
        theta = self.fn.leaves()
        frozen = self.fn.frozen_values()
        self.held_bytes = sum(V.nbytes([t]) for t in [*theta, *frozen.values()])
        xs = [self.fn.gather(xi, p) for xi, p in zip(x, self.fn.params)]
        diff: list[torch.Tensor | None] = [None] * len(xs)
        if self.agree.reason is None:
            try:
                step = self.eps / nx
                plus = [(t.detach() + step * xi).requires_grad_() for t, xi in zip(theta, xs)]
                gp = self.fn.grads(plus, frozen, create_graph=False)
                del plus
                minus = [(t.detach() - step * xi).requires_grad_() for t, xi in zip(theta, xs)]
                gm = self.fn.grads(minus, frozen, create_graph=False)
                del minus
                c = nx / (2.0 * self.eps)
                diff = [None if a is None or b is None else (a - b) * c
                        for a, b in zip(gp, gm)]
            except (RuntimeError, NotImplementedError) as err:
                self.agree.fail(failure_reason(err))
        del theta, xs, frozen
        return [self.fn.scatter(h, p) for h, p in zip(diff, self.fn.params)]

    def release(self) -> None:
        """Nothing retained between HVPs."""


HVPOperator = AutogradHVP | FiniteDifferenceHVP
