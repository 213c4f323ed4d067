"""Vectors in parameter space: lists of tensors laid out exactly like the parameters.

A vector is a ``list[torch.Tensor]`` with one entry per tracked parameter, each entry a plain
tensor or a DTensor with the parameter's mesh and placements (FSDP2 ``Shard(0)``, TP Colwise /
Rowwise, both). Nothing here gathers a full model: elementwise operations stay local to each
shard, and inner products reduce over the mesh through DTensor (one ``full_tensor()`` per mesh,
after summing every parameter's partial contribution on that mesh). :func:`dot` is
differentiable, which the autograd HVP uses.

Vectors are kept in the parameters' dtype, except that bf16/fp16 parameters get fp32 vectors.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch.distributed.tensor import DTensor, Replicate

Vector = list[torch.Tensor]


def vector_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype a vector entry uses for a parameter of ``dtype`` (fp32 for 16-bit floats)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global inner product ``sum_i <a_i, b_i>`` as a plain 0-d tensor (differentiable).

    DTensor entries on the same mesh are summed as (partial) DTensor scalars first, so each mesh
    costs one reduction whatever the number of parameters."""
    per_mesh: dict[object, torch.Tensor] = {}
    plain: torch.Tensor | None = None
    for x, y in zip(a, b, strict=True):
        term = (x * y).sum()
        if isinstance(term, DTensor):
            key = term.device_mesh
            per_mesh[key] = term if key not in per_mesh else per_mesh[key] + term
        else:
            plain = term if plain is None else plain + term
    total = plain
    for term in per_mesh.values():
        value = term.full_tensor()
        total = value if total is None else total + value
    if total is None:
        raise ValueError("dot product of empty vectors")
    return total


def norm(a: Sequence[torch.Tensor]) -> float:
    """Global Euclidean norm as a Python float."""
    return float(dot(a, a).detach().clamp_min(0).sqrt())


def add(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], alpha: float = 1.0) -> Vector:
    """``a + alpha * b``."""
    return [x + alpha * y for x, y in zip(a, b, strict=True)]


def scale(a: Sequence[torch.Tensor], alpha: float) -> Vector:
    """``alpha * a``."""
    return [alpha * x for x in a]


def mul(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> Vector:
    """Elementwise product (applying a diagonal matrix stored as a vector)."""
    return [x * y for x, y in zip(a, b, strict=True)]


def normalize(a: Sequence[torch.Tensor]) -> Vector:
    """``a / ||a||``; raises on a zero vector."""
    n = norm(a)
    if n == 0.0 or n != n:
        raise ValueError(f"cannot normalise a vector of norm {n}")
    return scale(a, 1.0 / n)


def zeros_like_params(params: Sequence[torch.Tensor]) -> Vector:
    """Zero vector with the parameters' layout (fp32 for 16-bit parameters)."""
    return [torch.zeros_like(p, dtype=vector_dtype(p.dtype)).detach() for p in params]


def as_layout(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` with ``like``'s placements (redistributes e.g. a Partial gradient) and vector dtype."""
    if isinstance(x, DTensor) and isinstance(like, DTensor) and x.placements != like.placements:
        x = x.redistribute(like.device_mesh, like.placements)
    return x.to(vector_dtype(like.dtype))


def random_like_params(params: Sequence[torch.Tensor], names: Sequence[str], seed: int) -> Vector:
    """Standard-normal vector, identical whatever the parallel layout.

    Each parameter gets its own generator seeded from ``seed`` and a CRC32 of its name; the full
    (global) shape is drawn on the parameter's device, then a DTensor keeps only its local slice
    (``Replicate -> placements`` is a local chunk, no communication). Peak extra memory is one
    full parameter, one parameter at a time. The same device type on every rank gives the same
    numbers; CPU and CUDA generators differ."""
    out: Vector = []
    for p, name in zip(params, names, strict=True):
        local = p.to_local() if isinstance(p, DTensor) else p
        gen = torch.Generator(device=local.device)
        gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
        full = torch.randn(p.shape, generator=gen, device=local.device,
                           dtype=vector_dtype(p.dtype))
        if isinstance(p, DTensor):
            mesh = p.device_mesh
            full = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
            full = full.redistribute(mesh, p.placements)
        out.append(full)
    return out
