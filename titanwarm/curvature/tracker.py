"""``CurvatureTracker``: λmax of Adam's preconditioned Hessian (and of the Hessian) per step.

Usage (any ``nn.Module`` or list of model parts, plain / FSDP2 / TP / both, with a
``torch.optim.Adam``/``AdamW``)::

    tracker = CurvatureTracker(model_parts, optimizer, method="lanczos", max_hvps=5)
    est = tracker.step(loss_fn, batch)   # after optimizer.step(); loss_fn(model_parts, batch)
    print(est.lambda_max, est.lr_lambda, est.threshold, est.ratio, est.hvps, est.residual)

**Tracked parameters.** Only parameters with ``requires_grad=True`` that the optimizer holds
(and, for the preconditioned Hessian, that already have Adam state) span the Hessian; locked
blocks are outside it. When parameters become trainable the stored warm-start vector is extended
with zeros on them (the previous eigenvector restricted to the old block is still the best start
we have; the solver fills the new block in), and entries of parameters that left are dropped.

**Warm start.** Each solve starts from the previous step's vector. For ``G = D H D`` with
``D = P^-1/2`` (``P`` from Adam's second moment, see ``preconditioner.py``), the vector is first
transported by ``P_new^1/2 P_old^-1/2`` and renormalised, which is exact if H is unchanged and
only P moved. ``warm_start=False`` starts every solve from a fresh random vector (seeded by
``seed`` and the call count). The very first start vector is random, deterministic and identical
whatever the parallel layout (``vectors.random_like_params``).

**Stability.** Adam with momentum β1 is stable while ``lr * λmax(G) < (2 + 2 β1) / (1 - β1)``
(38 at β1=0.9); for the plain Hessian (gradient descent) the threshold on ``lr * λmax(H)`` is 2.
``ratio = lr λ / threshold``; ``ratio >= 1`` means the step size exceeds the local stability
limit. Estimates are Rayleigh quotients (biased low); check ``residual``.

**HVP method.** ``"autograd"`` (exact, double backward), ``"finite_difference"`` or ``"auto"``:
autograd, falling back to finite differences for the rest of the run when the double backward
raises (e.g. an attention kernel without double backward that ignores ``sdpa_kernel``, or
re-entrant activation checkpointing). See ``hvp.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from titanwarm.curvature import vectors as V
from titanwarm.curvature.hvp import (AutogradHVP, FiniteDifferenceHVP, HVPOperator, LossFn,
                                     LossModule, SubstitutedLoss)
from titanwarm.curvature.preconditioner import (adam_hyper, adam_preconditioner, has_adam_state,
                                                param_groups_of, scaling_diagonal, transport)
from titanwarm.curvature.solvers import SolveResult, lanczos, power_iteration

logger = logging.getLogger(__name__)

METHODS = ("power", "lanczos")
HVP_METHODS = ("auto", "autograd", "finite_difference")


@dataclass
class CurvatureEstimate:
    """One tracked step. ``lambda_max`` is λmax(G) when preconditioned, else λmax(H)."""

    lambda_max: float
    """Estimated largest eigenvalue (a Rayleigh quotient: ≤ the true λmax)."""
    lr_lambda: float
    """``lr * lambda_max`` (lr = largest learning rate of the tracked parameters' groups)."""
    threshold: float
    """Stability threshold on ``lr_lambda``: (2+2β1)/(1-β1) for G, 2 for H."""
    ratio: float
    """``lr_lambda / threshold``; ≥ 1 means beyond the stability edge."""
    hvps: int
    """HVPs used in this step (both solves when ``track_h``)."""
    residual: float
    """``||A u - λ u|| / |λ|`` of the returned estimate."""
    preconditioned: bool
    """Whether ``lambda_max`` is for G = P^-1/2 H P^-1/2."""
    hvp: str
    """HVP method actually used ("autograd" or "finite_difference")."""
    lr: float
    """The learning rate used in ``lr_lambda``."""
    lambda_max_h: float | None = None
    """λmax(H) when ``track_h`` (or when not preconditioned), else None."""
    residual_h: float | None = None
    """Residual of ``lambda_max_h``."""


class CurvatureTracker:
    """Warm-started λmax tracking of G (Adam-preconditioned Hessian) and/or H.

    ``loss_fn(model_parts, batch)`` must return the scalar loss (mean over the rank's local
    batch) computed by calling the modules in ``model_parts``; the tracker calls it with the
    tracked parameters substituted (``torch.func.functional_call``), so one ``loss_fn`` serves
    plain, FSDP2 and TP models. Under FSDP2 the result is the Hessian of the global mean loss.
    """

    def __init__(self, model_parts: nn.Module | Sequence[nn.Module],
                 optimizer: torch.optim.Optimizer, method: str = "lanczos", max_hvps: int = 5,
                 tol: float = 1e-3, preconditioned: bool = True, warm_start: bool = True,
                 hvp: str = "auto", track_h: bool = False, seed: int = 0,
                 fd_eps: float = 1e-4, fd_relative: bool = True) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if hvp not in HVP_METHODS:
            raise ValueError(f"hvp must be one of {HVP_METHODS}, got {hvp!r}")
        if max_hvps < 1:
            raise ValueError("max_hvps must be >= 1")
        parts = [model_parts] if isinstance(model_parts, nn.Module) else list(model_parts)
        self.module = LossModule(parts)
        self.optimizer = optimizer
        self.method, self.max_hvps, self.tol = method, max_hvps, tol
        self.preconditioned, self.warm_start, self.track_h = preconditioned, warm_start, track_h
        self.hvp, self.seed, self.fd_eps, self.fd_relative = hvp, seed, fd_eps, fd_relative
        self._resolved_hvp: str | None = None if hvp == "auto" else hvp
        self._vectors: dict[str, dict[str, torch.Tensor]] = {}
        self._precond: dict[str, torch.Tensor] = {}
        self._shift: dict[str, float] = {}
        self._calls = 0

    def tracked(self) -> tuple[list[str], list[torch.Tensor]]:
        """Names and parameters spanning the tracked Hessian (see the module docstring)."""
        held = param_groups_of(self.optimizer)
        names, params = [], []
        for name, p in self.module.named_parameters():
            if not p.requires_grad or id(p) not in held:
                continue
            if self.preconditioned and not has_adam_state(self.optimizer, p):
                continue
            names.append(name)
            params.append(p)
        return names, params

    def step(self, loss_fn: LossFn, batch: Any) -> CurvatureEstimate | None:
        """Estimate λmax on ``batch``; None if nothing is tracked yet (e.g. preconditioned before
        the first optimizer step). Leaves parameters and ``.grad`` untouched."""
        names, params = self.tracked()
        if not names:
            return None
        fn = SubstitutedLoss(self.module, names, loss_fn, batch)
        self._calls += 1
        if self._resolved_hvp is None:
            try:
                est = self._estimate(fn, "autograd")
            except (RuntimeError, NotImplementedError) as err:
                logger.warning("curvature: autograd HVP failed (%s); using finite differences",
                               str(err).splitlines()[0] if str(err) else type(err).__name__)
                self._resolved_hvp = "finite_difference"
                return self._estimate(fn, "finite_difference")
            self._resolved_hvp = "autograd"
            return est
        return self._estimate(fn, self._resolved_hvp)

    def _operator(self, fn: SubstitutedLoss, kind: str) -> HVPOperator:
        if kind == "autograd":
            return AutogradHVP(fn)
        return FiniteDifferenceHVP(fn, self.fd_eps, self.fd_relative)

    def _start(self, key: str, names: list[str], params: list[torch.Tensor],
               p_new: V.Vector | None) -> V.Vector:
        stored = self._vectors.get(key, {})
        if self.warm_start and any(n in stored for n in names):
            u = [stored[n] if n in stored and stored[n].shape == p.shape else z
                 for n, p, z in zip(names, params, V.zeros_like_params(params))]
            if p_new is not None:
                u = transport(u, [self._precond.get(n) for n in names], p_new)
            if V.norm(u) > 0:
                return u
        seed = self.seed if self.warm_start else self.seed + 7919 * self._calls
        return V.random_like_params(params, names, seed + (1 if key == "h" else 0))

    def _solve(self, key: str, op: Any, u0: V.Vector) -> SolveResult:
        if self.method == "lanczos":
            return lanczos(op, u0, self.max_hvps, self.tol)
        shift = self._shift.get(key, 0.0) if self.warm_start else 0.0
        res = power_iteration(op, u0, self.max_hvps, self.tol, shift)
        self._shift[key] = res.shift
        return res

    def _estimate(self, fn: SubstitutedLoss, kind: str) -> CurvatureEstimate:
        names, params = fn.names, fn.params
        hyper = adam_hyper(self.optimizer, params)
        op = self._operator(fn, kind)
        try:
            res_g = res_h = None
            if self.preconditioned:
                precond = adam_preconditioner(self.optimizer, params)
                diag = scaling_diagonal(precond, hyper.lr_ratio)
                u0 = self._start("g", names, params, precond)
                res_g = self._solve("g", lambda x: V.mul(diag, op(V.mul(diag, x))), u0)
            if self.track_h or not self.preconditioned:
                res_h = self._solve("h", op, self._start("h", names, params, None))
        finally:
            op.release()
        if res_g is not None:
            self._vectors["g"] = dict(zip(names, res_g.vector))
            self._precond = dict(zip(names, precond))
            threshold = (2.0 + 2.0 * hyper.beta1) / (1.0 - hyper.beta1)
            main = res_g
        else:
            threshold = 2.0
            main = res_h
        if res_h is not None:
            self._vectors["h"] = dict(zip(names, res_h.vector))
        lr_lambda = hyper.lr * main.eigenvalue
        return CurvatureEstimate(
            lambda_max=main.eigenvalue, lr_lambda=lr_lambda, threshold=threshold,
            ratio=lr_lambda / threshold, hvps=op.calls, residual=main.residual,
            preconditioned=self.preconditioned, hvp=kind, lr=hyper.lr,
            lambda_max_h=res_h.eigenvalue if res_h is not None else None,
            residual_h=res_h.residual if res_h is not None else None)

    def state_dict(self) -> dict[str, Any]:
        """Warm-start vectors and the previous P (tensors/DTensors keyed by parameter name), the
        power-iteration shifts and the resolved HVP method."""
        return {"vectors": {k: dict(v) for k, v in self._vectors.items()},
                "precond": dict(self._precond), "shift": dict(self._shift),
                "hvp": self._resolved_hvp, "calls": self._calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._vectors = {k: dict(v) for k, v in state["vectors"].items()}
        self._precond = dict(state["precond"])
        self._shift = dict(state["shift"])
        self._resolved_hvp = state["hvp"] if self.hvp == "auto" else self.hvp
        self._calls = int(state["calls"])
