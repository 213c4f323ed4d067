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
  of the spectrum to ≈ 0 and makes λmax + σ dominant. σ is returned so the next call starts from it.
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
    """Power iteration's shift σ at the end (0 for Lanczos)."""


def power_iteration(op: Operator, u0: V.Vector, max_hvps: int, tol: float,
                    shift: float = 0.0) -> SolveResult:
    """Shifted power iteration from ``u0``; stops after ``max_hvps`` HVPs or when the residual is
    below ``tol``. Reports the largest Rayleigh quotient among the iterates (each is a lower bound
    on λmax, so the largest is the tightest; while a negative eigenvalue dominates, the latest one
    can be far below it). The returned vector is one further (free) iteration
    ``normalise(A u + σ u)`` of the last iterate."""
    if max_hvps < 1:
        raise ValueError("max_hvps must be >= 1")
    u = V.normalize(u0)
    best = (-float("inf"), float("inf"))  # (largest Rayleigh quotient seen, its residual)
    for i in range(1, max_hvps + 1):
        w = op(u)
        lam = float(V.dot(u, w))
        residual = V.norm(V.add(w, u, -lam)) / max(abs(lam), _TINY)
        best = max(best, (lam, residual), key=lambda b: b[0])
        if lam + shift < 0:
            shift = -lam
        if residual < tol or i == max_hvps:
            nxt = V.add(w, u, shift)
            try:
                nxt = V.normalize(nxt)
            except ValueError:
                nxt = u
            return SolveResult(best[0], nxt, best[1], i, shift)
        u = V.normalize(V.add(w, u, shift))
    raise AssertionError("unreachable")


def lanczos(op: Operator, u0: V.Vector, max_hvps: int, tol: float) -> SolveResult:
    """Lanczos with full re-orthogonalisation started from ``u0``; stops after ``max_hvps`` HVPs,
    when the Ritz residual ``|β_k y_k| / |θ|`` is below ``tol``, or on an invariant subspace."""
    if max_hvps < 1:
        raise ValueError("max_hvps must be >= 1")
    basis = [V.normalize(u0)]
    alphas: list[float] = []
    betas: list[float] = []
    while True:
        q = basis[-1]
        w = op(q)
        alpha = float(V.dot(q, w))
        alphas.append(alpha)
        w = V.add(w, q, -alpha)
        if len(basis) > 1:
            w = V.add(w, basis[-2], -betas[-1])
        for b in basis:  # full re-orthogonalisation
            w = V.add(w, b, -float(V.dot(b, w)))
        beta = V.norm(w)
        k = len(alphas)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        theta, y = float(evals[-1]), evecs[:, -1]
        residual = abs(beta * float(y[-1])) / max(abs(theta), _TINY)
        if residual < tol or k == max_hvps or beta <= _TINY * max(abs(theta), 1.0):
            ritz = V.scale(basis[0], float(y[0]))
            for j in range(1, k):
                ritz = V.add(ritz, basis[j], float(y[j]))
            return SolveResult(theta, V.normalize(ritz), residual, k)
        betas.append(beta)
        basis.append(V.scale(w, 1.0 / beta))
