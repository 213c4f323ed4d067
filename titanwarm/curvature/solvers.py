"""Matrix-free solvers for the largest (algebraic) eigenvalue of a symmetric operator.

``op`` maps a vector (list of tensors, see ``vectors.py``) to the operator applied to it; each
call is one HVP. Both solvers return the Rayleigh quotient of a unit vector, which never exceeds
λmax: an under-converged estimate is biased *low*. The residual ``||A u - λ u|| / |λ|`` is
returned so callers can see how far from converged the estimate is (some eigenvalue lies within
``||A u - λ u||`` of λ).

* :func:`power_iteration`: ``u <- normalise((A + σ I) u)``. Power iteration converges to the
  eigenvalue of largest *magnitude*; a negative eigenvalue with ``|λmin| > λmax`` would win. The
  shift σ ≥ 0 handles it: whenever the Rayleigh quotient λ satisfies ``λ + σ < 0`` (the iterate is
  dominated by a negative eigenvalue of ``A + σI``), σ is raised to ``-λ``, which moves that part
  of the spectrum to ≈ 0 and makes λmax + σ dominant. Every solve starts again from σ = 0.
* :func:`lanczos`: k HVPs build a Krylov basis from the start vector (full re-orthogonalisation,
  k stored vectors), the k x k tridiagonal T's top eigenpair gives the Ritz value/vector. Much
  faster than power iteration when λ2/λ1 ≈ 1, and the top Ritz value is the algebraically
  largest, so negative eigenvalues need no shift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from titanwarm.curvature import vectors as V
from titanwarm.curvature.agreement import Agreement, Unmeasurable

Operator = Callable[[V.Vector], V.Vector]
_TINY = 1e-30


@dataclass
class SolveResult:
    """Outcome of one eigen-solve."""

    eigenvalue: float
    """Rayleigh quotient (≤ λmax)."""
    vector: V.Vector
    """Unit vector to warm-start the next solve from."""
    residual: float
    """``||A u - λ u|| / |λ|`` for the vector whose Rayleigh quotient is ``eigenvalue``."""
    hvps: int
    """Operator applications used."""
    shift: float = 0.0
    """Power iteration's shift σ at the end (0 for Lanczos; for information)."""


def _normalized(u: V.Vector, agree: Agreement) -> V.Vector:
    out = V.clone(u)
    (sq,) = agree.reduce([V.local_dot(out, out)])
    if not sq > 0:  # also NaN; a non-finite reduced value already raised Unmeasurable
        raise ValueError(f"cannot normalise a vector of squared norm {sq}")
    V.scale_(out, sq ** -0.5)
    return out


def power_iteration(op: Operator, u0: V.Vector, max_hvps: int, tol: float,
                    agree: Agreement | None = None) -> SolveResult:
    """Shifted power iteration from ``u0``; stops after ``max_hvps`` HVPs or when the residual is
    below ``tol``. Reports the largest Rayleigh quotient among the iterates (each is a lower bound
    on λmax, so the largest is the tightest; while a negative eigenvalue dominates, the latest one
    can be far below it). The returned vector is one further (free) iteration
    ``normalise(A u + σ u)`` of the last iterate. The shift starts at 0 in every solve (a shift
    carried over from an earlier step, where a negative eigenvalue once dominated, slows every
    later solve: the convergence ratio is (λ2 + σ) / (λ1 + σ)).

    One reduction per HVP: ``<u, w>``, ``<w, w>`` and ``<u, u>`` together give λ, the residual
    ``||w - λu||`` and the next norm ``||w + σu||`` (measured with one more reduction when that
    cancels)."""
    if max_hvps < 1:
        raise ValueError("max_hvps must be >= 1")
    agree = agree or Agreement(V.local(u0)[0].device)
    u = _normalized(u0, agree)
    shift = 0.0
    best = (-float("inf"), float("inf"))  # (largest Rayleigh quotient seen, its residual)
    for i in range(1, max_hvps + 1):
        w = op(u)
        uw, ww, uu = agree.reduce([V.local_dot(u, w), V.local_dot(w, w), V.local_dot(u, u)])
        lam = uw / uu  # uu = 1 up to rounding, which must not compound over iterations
        residual = max(ww - 2 * lam * uw + lam * lam * uu, 0.0) ** 0.5 / max(abs(lam), _TINY)
        best = max(best, (lam, residual), key=lambda b: b[0])
        if lam + shift < 0:
            shift = -lam
        nn2 = ww + 2.0 * shift * uw + shift * shift * uu
        V.add_(w, u, shift)
        if nn2 < 1e-4 * (ww + shift * shift * uu):  # cancellation: measure the norm exactly
            (nn2,) = agree.reduce([V.local_dot(w, w)])
        if nn2 > _TINY:
            V.scale_(w, nn2 ** -0.5)
        else:
            w = u
        if residual < tol or i == max_hvps:
            return SolveResult(best[0], w, best[1], i, shift)
        u = w
    raise AssertionError("unreachable")


def lanczos(op: Operator, u0: V.Vector, max_hvps: int, tol: float,
            agree: Agreement | None = None) -> SolveResult:
    """Lanczos with full re-orthogonalisation started from ``u0``; stops after ``max_hvps`` HVPs,
    when the Ritz residual ``|β_k y_k| / |θ|`` is below ``tol``, or on an invariant subspace.

    One reduction per HVP: the projections ``c_j = <q_j, w>`` on every basis vector (α is the last
    one) and ``<w, w>`` are summed together; ``w -= Σ c_j q_j`` (classical Gram-Schmidt, which
    also removes the β q_{k-1} term) and ``β² = <w,w> - Σ c_j²``. When that cancels badly
    (β² < 1e-4 <w,w>) β is recomputed with one more reduction."""
    if max_hvps < 1:
        raise ValueError("max_hvps must be >= 1")
    agree = agree or Agreement(V.local(u0)[0].device)
    basis = [_normalized(u0, agree)]
    alphas: list[float] = []
    betas: list[float] = []
    while True:
        w = op(basis[-1])
        sums = agree.reduce([*(V.local_dot(b, w) for b in basis), V.local_dot(w, w)])
        coeffs, ww = sums[:-1], sums[-1]
        alphas.append(coeffs[-1])
        _subtract(w, basis, coeffs)
        beta2 = ww - sum(c * c for c in coeffs)
        if beta2 < 1e-4 * ww:
            _subtract(w, basis, agree.reduce([V.local_dot(b, w) for b in basis]))
            (beta2,) = agree.reduce([V.local_dot(w, w)])
        beta = max(beta2, 0.0) ** 0.5
        k = len(alphas)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        try:  # t is built from reduced values: the same on every rank, so is the outcome
            evals, evecs = torch.linalg.eigh(t)
        except torch.linalg.LinAlgError as err:
            raise Unmeasurable(f"Lanczos tridiagonal eigenproblem failed ({err})") from err
        theta, y = float(evals[-1]), evecs[:, -1]
        residual = abs(beta * float(y[-1])) / max(abs(theta), _TINY)
        if residual < tol or k == max_hvps or beta <= _TINY * max(abs(theta), 1.0):
            del w
            ritz = V.clone(basis[0])
            V.scale_(ritz, float(y[0]))
            for j in range(1, k):
                V.add_(ritz, basis[j], float(y[j]))
            del basis
            return SolveResult(theta, _normalized(ritz, agree), residual, k)
        betas.append(beta)
        V.scale_(w, 1.0 / beta)
        basis.append(w)


def _subtract(w: V.Vector, basis: list[V.Vector], coeffs: list[float]) -> None:
    """``w -= Σ c_j q_j`` in place."""
    for b, c in zip(basis, coeffs, strict=True):
        V.add_(w, b, -c)
