"""Adam's diagonal preconditioner, its restriction to measured coordinates, and the warm-start
transport between steps.

For a ``torch.optim.Adam``/``AdamW`` the update is ``lr * m_hat / P`` with
``P = sqrt(v_hat) + eps`` and ``v_hat = exp_avg_sq / (1 - beta2**step)`` (``max_exp_avg_sq`` with
``amsgrad``). The curvature Adam sees is ``G = P^-1/2 H P^-1/2``, whose λmax is compared with the
momentum threshold ``(2 + 2 beta1) / (1 - beta1)`` on ``lr * λ``.

If parameter groups have different learning rates, the ratio ``lr_i / lr`` (``lr`` = largest lr
of the tracked groups) is folded into the diagonal: ``D_i = sqrt(lr_i / lr) * P_i^-1/2``, so that
``lr * λmax(D H D)`` is the step-size-scaled curvature of the actual update.

Everything is elementwise on the optimizer state, which has the parameters' layout (DTensor
shards under FSDP2/TP); nothing is gathered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from titanwarm.curvature.vectors import Vector, local, local_dot, vector_dtype


@dataclass
class AdamHyper:
    """Hyper-parameters of the parameter groups holding the tracked parameters."""

    lr: float
    """Largest learning rate among those groups (the ``lr`` of ``lr * λ``)."""
    beta1: float
    """Largest beta1 among those groups (the most conservative threshold)."""
    lr_ratio: list[float]
    """Per tracked parameter, ``lr_i / lr``."""
    eps: list[float]
    """Per tracked parameter, its group's Adam ``eps``."""


def param_groups_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    """``id(param) -> its param_group`` for every parameter the optimizer holds."""
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def adam_hyper(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> AdamHyper:
    """Learning rate and beta1 read from the optimizer's param_groups (current values, so an LR
    schedule is followed)."""
    groups = param_groups_of(optimizer)
    lrs = [float(groups[id(p)]["lr"]) for p in params]
    lr = max(lrs) if lrs else 0.0
    betas = [float(groups[id(p)].get("betas", (0.0, 0.0))[0]) for p in params]
    return AdamHyper(lr=lr, beta1=max(betas) if betas else 0.0,
                     lr_ratio=[x / lr if lr > 0 else 1.0 for x in lrs],
                     eps=[float(groups[id(p)].get("eps", 0.0)) for p in params])


def adam_steps(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> int:
    """How many Adam updates ``p`` has had (0: no second-moment estimate yet)."""
    state = optimizer.state.get(p, {})
    return int(float(state["step"])) if "exp_avg_sq" in state else 0


def adam_preconditioner(optimizer: torch.optim.Optimizer,
                        params: Sequence[torch.Tensor]) -> Vector:
    """``P = sqrt(v_hat) + eps`` per parameter, same layout as the parameter (vector dtype)."""
    groups = param_groups_of(optimizer)
    out: Vector = []
    for p in params:
        group, state = groups[id(p)], optimizer.state[p]
        beta2 = float(group["betas"][1])
        step = float(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
        v = v.detach().to(vector_dtype(p.dtype))
        out.append((v / (1.0 - beta2**step)).sqrt() + float(group["eps"]))
    return out


def scaling_diagonal(precond: Sequence[torch.Tensor], lr_ratio: Sequence[float]) -> Vector:
    """``D = sqrt(lr_i / lr) * P^-1/2``, the diagonal of ``G = D H D``."""
    return [(r / p).sqrt() for p, r in zip(precond, lr_ratio, strict=True)]


def drop_unmeasured_(diag: Sequence[torch.Tensor], precond: Sequence[torch.Tensor],
                     eps: Sequence[float], ratio: float, reduce) -> None:
    """Zero ``D`` (in place) where ``sqrt(v_hat) < ratio * RMS(sqrt(v_hat))`` of the coordinate's
    tensor: G is then restricted to the coordinates Adam has measured. ``reduce`` sums a list of
    per-rank partial tensors over ranks (``Agreement.reduce``); the RMS is global, so every layout
    drops the same coordinates."""
    roots = [p - e for p, e in zip(precond, eps, strict=True)]  # sqrt(v_hat), same layout as D
    sums = reduce([local_dot([r], [r]) for r in roots])
    for d, r, full, total in zip(local(diag), local(roots), roots, sums, strict=True):
        d.masked_fill_(r < ratio * math.sqrt(total / full.numel()), 0.0)  # numel: global


def transport(z: Sequence[torch.Tensor], diag: Sequence[torch.Tensor]) -> Vector:
    """Warm start for ``G = D H D`` from the stored ``z = D_old u_old``: ``D_new^-1 z`` (not
    normalised) = ``P_new^1/2 P_old^-1/2 u_old`` for an unchanged lr ratio, exact when only P
    moved. Zero entries (parameters that just became tracked) stay zero. Where ``D`` is zero
    (coordinates left out of G) the result is not finite: the caller zeroes those entries. Only
    ``z`` needs to be kept between steps, not P_old."""
    out = [x.detach().clone() for x in z]
    torch._foreach_div_(local(out), local(diag))
    return out
