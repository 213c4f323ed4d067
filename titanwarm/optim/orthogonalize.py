"""The matrix updates of Muon and NuMuon, on one whole matrix (no parallelism here).

- ``newton_schulz``: Muon's quintic Newton-Schulz iteration, the same arithmetic as
  ``torch.optim.Muon`` in torch 2.13 (bf16, tall matrices transposed, ``X / max(||X||_F, eps)``, then
  ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``). It maps every singular value above ~1.6e-3 of
  the Frobenius norm into [0.68, 1.21] (five steps, default coefficients) and keeps the singular
  vectors: an approximate ``U V^T``.
- ``topk_directions``: NuMuon's direction ``U_k V_k^T`` (the top-k singular directions of the
  momentum, unit singular values), by a randomized block Krylov method warm-started from the
  previous step's ``V_k``.
- ``rank_fraction_at``: NuMuon's rank schedule r(t); ``k_t = ceil(r(t) * min(m, n))``.
- ``update_scale``: the factor Muon multiplies the learning rate with for an ``m x n`` matrix.

Choices made where the NuMuon paper's reimplementations differ (see docs/muon.md): the Krylov space
is ``[A Ω, (A A^T) A Ω, ..., (A A^T)^q A Ω]`` orthonormalised block by block (QR after every block,
each new block re-orthogonalised against the previous ones twice), the top-k come from an SVD of
``Q^T A``; it runs in float32; when the Krylov space would hold all ``min(m, n)`` directions an exact
SVD is used instead (same result, cheaper); the columns beyond the warm start are Gaussian from a
generator seeded by (seed, step, matrix ordinal), so a resumed run draws the same numbers.
"""

from __future__ import annotations

import math

import torch

UPDATE_SCALES = ("match_rms_adamw", "original", "none")
RANK_SCHEDULES = ("constant", "linear", "cosine")


def newton_schulz(x: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """Approximate orthogonalisation ``U V^T`` of the 2-D ``x`` (returned in bfloat16)."""
    a, b, c = coefficients
    y = x.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:
        y = y.T
    y = y / y.norm().clamp(min=eps)
    for _ in range(steps):
        gram = y @ y.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        y = torch.addmm(y, poly, y, beta=a)
    return y.T if tall else y


def update_scale(kind: str, shape: torch.Size | tuple[int, int]) -> float:
    """LR multiplier of an ``m x n`` matrix: "match_rms_adamw" 0.2·sqrt(max(m, n)) (Moonlight:
    the update's RMS matches AdamW's, so AdamW's lr and decay carry over), "original"
    sqrt(max(1, m/n)) (Keller Jordan's Muon), "none" 1."""
    m, n = shape[0], shape[1]
    if kind == "match_rms_adamw":
        return 0.2 * math.sqrt(max(m, n))
    if kind == "original":
        return math.sqrt(max(1.0, m / n))
    return 1.0


def rank_fraction_at(step: int, total_steps: int, start: float, final: float, hold: float,
                     schedule: str) -> float:
    """r(t) for optimizer step ``step`` (1-based) of ``total_steps``: ``start`` for the first
    ``hold`` fraction of training, then ``schedule`` ("constant" keeps ``start``, "linear" or
    "cosine") down to ``final`` at the last step."""
    if schedule == "constant":
        return start
    begin = hold * total_steps
    if step <= begin:
        return start
    p = min(1.0, (step - begin) / max(1.0, total_steps - begin))
    shape = 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return final + (start - final) * shape


def rank_at(fraction: float, shape: torch.Size | tuple[int, int]) -> int:
    """``k = ceil(fraction * min(m, n))``, at least 1."""
    full = min(shape[0], shape[1])
    return max(1, min(full, math.ceil(fraction * full - 1e-9)))


def _orthonormal(z: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(z, mode="reduced").Q


def topk_directions(a: torch.Tensor, k: int, warm: torch.Tensor | None, oversample: int,
                    iters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U_k V_k^T, V_k)`` for the top-``k`` singular directions of ``a`` (m x n), in float32.

    ``warm`` (n x k', k' any) are the previous step's right singular vectors; its first ``min(k',
    k + oversample)`` columns start the Krylov block, Gaussian columns fill the rest. ``iters``
    further blocks ``(A A^T)^i A Ω`` are added. ``V_k`` is returned for the next warm start.
    """
    a = a.float()
    m, n = a.shape
    full = min(m, n)
    block = min(k + oversample, full)
    if block * (iters + 1) >= full:
        u, _, vh = torch.linalg.svd(a, full_matrices=False)
    else:
        omega = torch.randn(n, block, generator=generator, device=a.device, dtype=a.dtype)
        if warm is not None:
            take = min(warm.shape[1], block)
            omega[:, :take] = warm[:, :take].to(a)
        blocks = [_orthonormal(a @ omega)]
        for _ in range(iters):
            z = a @ (a.T @ blocks[-1])
            basis = torch.cat(blocks, dim=1)
            for _ in range(2):
                z = z - basis @ (basis.T @ z)
            blocks.append(_orthonormal(z))
        q = torch.cat(blocks, dim=1)
        ub, _, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
        u = q @ ub
    u_k, v_k = u[:, :k], vh[:k].T
    return u_k @ v_k.T, v_k.contiguous()
