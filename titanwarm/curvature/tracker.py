"""``CurvatureTracker``: λmax of Adam's preconditioned Hessian (and of the Hessian) per step.

Usage (any ``nn.Module`` or list of model parts, plain / FSDP2 / TP / both, with a
``torch.optim.Adam``/``AdamW``)::

    tracker = CurvatureTracker(model_parts, optimizer, method="lanczos", max_hvps=5)
    est = tracker.step(loss_fn, batch)   # after optimizer.step(); loss_fn(model_parts, batch)
    print(est.lambda_max, est.lr_lambda, est.threshold, est.ratio, est.hvps, est.residual)

**Tracked parameters.** Only parameters with ``requires_grad=True`` that the optimizer holds
(and, for the preconditioned Hessian, that already have Adam state) span the Hessian; locked
blocks are outside it. ``min_param_steps = N`` also leaves out parameters with fewer than N Adam
updates (e.g. blocks unlocked less than N steps ago, whose tiny second moments make P^-1/2
huge); ``min_v_hat_ratio = r`` restricts G to the coordinates whose sqrt(v_hat) is at least r
times their tensor's RMS (D is zeroed elsewhere: e.g. embedding rows of tokens Adam has not seen
for many β2-lifetimes). docs/curvature.md ("Readings after unlocks and on held-out batches") has
the measurements behind both. When parameters become trainable the stored warm-start vector is extended
with zeros on them (the previous eigenvector restricted to the old block is still the best start
we have; the solver fills the new block in), and entries of parameters that left are dropped.

**Warm start.** Each solve starts from the previous step's vector. For ``G = D H D`` with
``D = P^-1/2`` (``P`` from Adam's second moment, see ``preconditioner.py``) the tracker stores
``z = D u`` and starts from ``D_new^-1 z`` (normalised): the transport ``P_new^1/2 P_old^-1/2 u``,
exact if H is unchanged and only P moved, with one stored vector and no stored P. ``warm_start=False`` starts every solve from a fresh random vector (seeded by
``seed`` and the call count). The very first start vector is random, deterministic and identical
whatever the parallel layout (``vectors.random_like_params``).

**Stability.** Adam with momentum β1 is stable while ``lr * λmax(G) < (2 + 2 β1) / (1 - β1)``
(38 at β1=0.9); for the plain Hessian (gradient descent) the threshold on ``lr * λmax(H)`` is 2.
``ratio = lr λ / threshold``; ``ratio >= 1`` means the step size exceeds the local stability
limit. Estimates are Rayleigh quotients (biased low); check ``residual``.

**HVP method.** ``"autograd"`` (exact, double backward through the eager modules),
``"finite_difference"`` or ``"auto"``: autograd, falling back to finite differences for the rest
of the run when the double backward fails on any rank (never in 16-bit compute, after an OOM or
on non-finite HVPs: then the step is skipped). See ``hvp.py``.

**Collective decisions.** Every skip and fallback is agreed by all ranks (``agreement.py``):
``step`` returns None on every rank together, with the reason in ``last_skip``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from titanwarm.curvature import vectors as V
from titanwarm.curvature.agreement import Agreement, MeasurementSkipped, Unmeasurable
from titanwarm.curvature.hvp import (AutogradHVP, FiniteDifferenceHVP, HVPOperator, LossFn,
                                     LossModule, SubstitutedLoss)
from titanwarm.curvature.preconditioner import (adam_hyper, adam_preconditioner, adam_steps,
                                                drop_unmeasured_, param_groups_of, scaling_diagonal,
                                                transport)
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

    ``dtype``: compute dtype of the HVP passes (None: the training forward's, e.g. FSDP's
    ``param_dtype``; ``torch.float32``: full precision whatever the training uses).
    """

    def __init__(self, model_parts: nn.Module | Sequence[nn.Module],
                 optimizer: torch.optim.Optimizer, method: str = "lanczos", max_hvps: int = 5,
                 tol: float = 1e-3, preconditioned: bool = True, warm_start: bool = True,
                 hvp: str = "auto", track_h: bool = False, seed: int = 0,
                 fd_eps: float = 1e-4, fd_relative: bool = True,
                 dtype: torch.dtype | None = None, min_param_steps: int = 0,
                 min_v_hat_ratio: float = 0.0) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if hvp not in HVP_METHODS:
            raise ValueError(f"hvp must be one of {HVP_METHODS}, got {hvp!r}")
        if max_hvps < 1:
            raise ValueError("max_hvps must be >= 1")
        if min_param_steps < 0 or min_v_hat_ratio < 0:
            raise ValueError("min_param_steps and min_v_hat_ratio must be >= 0")
        if min_v_hat_ratio and not preconditioned:
            raise ValueError("min_v_hat_ratio restricts G; it needs preconditioned=True")
        parts = [model_parts] if isinstance(model_parts, nn.Module) else list(model_parts)
        self.module = LossModule(parts)
        self.optimizer = optimizer
        self.method, self.max_hvps, self.tol = method, max_hvps, tol
        self.preconditioned, self.warm_start, self.track_h = preconditioned, warm_start, track_h
        self.hvp, self.seed, self.fd_eps, self.fd_relative = hvp, seed, fd_eps, fd_relative
        self.dtype = dtype
        self.min_param_steps, self.min_v_hat_ratio = min_param_steps, min_v_hat_ratio
        self._resolved_hvp: str | None = None if hvp == "auto" else hvp
        self._vectors: dict[str, dict[str, torch.Tensor]] = {}
        self._calls = 0
        self.last_skip: str | None = None
        """Why the last :meth:`step` measured nothing (same text on every rank), else None."""
        self.last_extra_bytes = 0
        """Peak extra memory of the last step on this rank (see :class:`MemoryMeter`)."""
        self.last_mass: dict[str, float] = {}
        """Squared mass of the last eigenvector per parameter group (see ``mass_groups``)."""

    def tracked(self) -> tuple[list[str], list[torch.Tensor]]:
        """Names and parameters spanning the tracked Hessian (see the module docstring)."""
        held = param_groups_of(self.optimizer)
        names, params = [], []
        for name, p in self.module.named_parameters():
            if not p.requires_grad or id(p) not in held:
                continue
            steps = adam_steps(self.optimizer, p)
            if (self.preconditioned or self.min_param_steps) and steps < max(1, self.min_param_steps):
                continue
            names.append(name)
            params.append(p)
        return names, params

    def step(self, loss_fn: LossFn, batch: Any) -> CurvatureEstimate | None:
        """Estimate λmax on ``batch``; None if nothing is tracked yet (e.g. preconditioned before
        the first optimizer step) or the measurement was skipped (``last_skip`` says why; every
        rank skips together). Leaves parameters and ``.grad`` untouched.

        Under ``hvp = "auto"`` a failed autograd solve (on any rank) switches every rank to finite
        differences for the rest of the run, unless the failure was an out-of-memory error or the
        passes compute in 16 bits (finite differences are noise there): then only this step is
        skipped. A step whose operator values are not finite (a diverging run) is skipped too,
        keeping the last good warm-start vector."""
        self.last_skip = None
        names, params = self.tracked()
        if not names:
            return None
        device = V.local(params)[0].device
        fn = SubstitutedLoss(self.module, names, loss_fn, batch, self.dtype)
        self._calls += 1
        kind = self._resolved_hvp or "autograd"
        try:
            est = self._estimate(fn, kind, device)
        except MeasurementSkipped as err:
            reason = str(err)
            if (self._resolved_hvp is None and not isinstance(err, Unmeasurable)
                    and "OutOfMemoryError" not in reason and not self._sixteen_bit(fn)):
                logger.warning("curvature: autograd HVP failed (%s); using finite differences",
                               reason)
                self._resolved_hvp = "finite_difference"
                return self.step(loss_fn, batch)
            self.last_skip = f"{kind} HVP: {reason}"
            logger.warning("curvature: measurement skipped on every rank (%s)", self.last_skip)
            return None
        if self._resolved_hvp is None:
            self._resolved_hvp = kind
        return est

    def _sixteen_bit(self, fn: SubstitutedLoss) -> bool:
        return any(fn.compute_dtype(p) in (torch.bfloat16, torch.float16) for p in fn.params)

    def _operator(self, fn: SubstitutedLoss, kind: str, agree: Agreement) -> HVPOperator:
        if kind == "autograd":
            return AutogradHVP(fn, agree)
        if self._sixteen_bit(fn):
            raise ValueError("finite-difference HVPs in 16-bit compute are noise; use the "
                             "autograd HVP or dtype float32")
        return FiniteDifferenceHVP(fn, self.fd_eps, self.fd_relative, agree)

    def _start(self, key: str, names: list[str], params: list[torch.Tensor],
               diag: V.Vector | None) -> V.Vector:
        """Warm start: the stored vector (z = D_old u for G, u for H) mapped into the current
        frame (u = D_new^-1 z for G), zero on parameters it does not cover; else random. Zero
        wherever ``D`` is (coordinates ``min_v_hat_ratio`` left out of G)."""
        stored = self._vectors.get(key, {})
        if self.warm_start and any(n in stored for n in names):
            u = [stored[n] if n in stored and stored[n].shape == p.shape else z
                 for n, p, z in zip(names, params, V.zeros_like_params(params))]
            if diag is not None:
                u = transport(u, diag)
        else:
            seed = self.seed if self.warm_start else self.seed + 7919 * self._calls
            u = V.random_like_params(params, names, seed + (1 if key == "h" else 0))
        if diag is not None and self.min_v_hat_ratio:  # start inside the restricted space
            for x, d in zip(V.local(u), V.local(diag), strict=True):
                x.masked_fill_(d == 0, 0.0)
        return u

    def _solve(self, op: Any, u0: V.Vector, agree: Agreement) -> SolveResult:
        if self.method == "lanczos":
            return lanczos(op, u0, self.max_hvps, self.tol, agree)
        return power_iteration(op, u0, self.max_hvps, self.tol, agree)

    def _estimate(self, fn: SubstitutedLoss, kind: str, device: torch.device) -> CurvatureEstimate:
        names, params = fn.names, fn.params
        hyper = adam_hyper(self.optimizer, params)
        agree = Agreement(device)
        meter = MemoryMeter(device)
        op = self._operator(fn, kind, agree)
        try:
            res_g = res_h = None
            if self.preconditioned:
                precond = adam_preconditioner(self.optimizer, params)
                diag = scaling_diagonal(precond, hyper.lr_ratio)
                if self.min_v_hat_ratio:
                    drop_unmeasured_(diag, precond, hyper.eps, self.min_v_hat_ratio, agree.reduce)
                del precond
                u0 = self._start("g", names, params, diag)

                def g_op(x: V.Vector) -> V.Vector:
                    out = op(V.mul(diag, x))
                    torch._foreach_mul_(V.local(out), V.local(diag))
                    meter.sample(op.held_bytes)
                    return out

                res_g = self._solve(g_op, u0, agree)
                mass = mass_by_group(names, res_g.vector, agree)
                torch._foreach_mul_(V.local(res_g.vector), V.local(diag))  # store z = D u
                del diag
            if self.track_h or not self.preconditioned:
                def h_op(x: V.Vector) -> V.Vector:
                    out = op(x)
                    meter.sample(op.held_bytes)
                    return out

                res_h = self._solve(h_op, self._start("h", names, params, None), agree)
                if res_g is None:
                    mass = mass_by_group(names, res_h.vector, agree)
        finally:
            op.release()
        self.last_extra_bytes = meter.peak
        self.last_mass = mass
        if res_g is not None:
            self._vectors["g"] = dict(zip(names, res_g.vector))
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
        """The warm-start vectors (one parameter-sized vector per tracked matrix: z = D u for G,
        u for H; tensors/DTensors keyed by parameter name) and the resolved HVP method."""
        return {"vectors": {k: dict(v) for k, v in self._vectors.items()},
                "hvp": self._resolved_hvp, "calls": self._calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._vectors = {k: dict(v) for k, v in state["vectors"].items()}
        self._resolved_hvp = state["hvp"] if self.hvp == "auto" else self.hvp
        self._calls = int(state["calls"])


def mass_group(name: str) -> str:
    """Reporting group of a parameter: "layers.<i>" for block parameters (through wrappers),
    else its top-level module ("tok_embeddings", "output", "norm", ...)."""
    parts = [p for p in name.split(".")[2:] if not p.startswith("_")]  # drop "parts.<k>."
    if parts and parts[0] == "layers" and len(parts) > 1:
        return f"layers.{parts[1]}"
    return parts[0] if parts else name


def mass_by_group(names: Sequence[str], u: V.Vector, agree: Agreement) -> dict[str, float]:
    """Squared mass of the unit vector ``u`` per :func:`mass_group` (sums to 1), one reduction."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(mass_group(n), []).append(i)
    keys = list(groups)
    partials = [V.local_dot([u[i] for i in groups[k]], [u[i] for i in groups[k]]) for k in keys]
    values = agree.reduce(partials)
    total = sum(values) or 1.0
    return {k: v / total for k, v in zip(keys, values)}


class MemoryMeter:
    """Peak extra memory of a tracked step on this rank, sampled after every HVP: CUDA allocator
    bytes above the step's start (graph, gathered parameters, vectors, all included); on other
    devices, where no allocator counts, the bytes the operator holds in gathered parameters
    (the graph not included)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.base = torch.cuda.memory_allocated(device) if self.cuda else 0
        self.peak = 0

    def sample(self, held_bytes: int) -> None:
        now = torch.cuda.memory_allocated(self.device) - self.base if self.cuda else held_bytes
        self.peak = max(self.peak, now)
