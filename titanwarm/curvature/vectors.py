"""Vectors in parameter space: lists of tensors laid out exactly like the parameters.

A vector is a ``list[torch.Tensor]`` with one entry per tracked parameter, each entry a plain
tensor or a DTensor with the parameter's mesh and placements (FSDP2 ``Shard(0)``, TP Colwise /
Rowwise, both). Nothing here gathers a full model: arithmetic runs on each rank's local shards
with ``torch._foreach_*`` kernels (one launch per operation for the whole vector, no DTensor
dispatch), and inner products are *local partial sums* that the caller reduces: every reduction
of a solver step goes into one ``all_reduce`` (:class:`titanwarm.curvature.agreement.Agreement`).

A local partial sum counts each element once over the world: an entry replicated on r ranks
(``Replicate`` placements, or a plain tensor in a multi-process run) is weighted by 1/r. Partial
sums are accumulated in float64.

Vectors are kept in the parameters' dtype, except that bf16/fp16 parameters get fp32 vectors.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.placement_types import _StridedShard

Vector = list[torch.Tensor]


def vector_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype a vector entry uses for a parameter of ``dtype`` (fp32 for 16-bit floats)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def local(a: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each entry's local shard (aliases the DTensor's storage: in-place ops write through)."""
    return [x.to_local() if isinstance(x, DTensor) else x for x in a]


def _weight(x: torch.Tensor) -> float:
    """1 / (number of ranks holding a copy of each local element of ``x``)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    if not isinstance(x, DTensor):
        return 1.0 / world
    # A mesh smaller than the world (e.g. the dp sub-mesh of a dp x tp job) has one copy per
    # other-dim coordinate holding the same values: still world / shards holders per element.
    mesh = x.device_mesh
    shards = math.prod(mesh.size(d) for d, p in enumerate(x.placements) if p.is_shard() or isinstance(p, _StridedShard))
    return shards / world


def local_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """This rank's share of the global inner product, a float64 0-d tensor (sum over ranks = dot)."""
    total = None
    for x, y, w in zip(local(a), local(b), (_weight(t) for t in a), strict=True):
        term = torch.dot(x.reshape(-1), y.reshape(-1)).double() * w
        total = term if total is None else total + term
    if total is None:
        raise ValueError("dot product of empty vectors")
    return total


def add_(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], alpha: float = 1.0) -> None:
    """``a += alpha * b`` in place."""
    torch._foreach_add_(local(a), local(b), alpha=alpha)


def scale_(a: Sequence[torch.Tensor], alpha: float) -> None:
    """``a *= alpha`` in place."""
    torch._foreach_mul_(local(a), alpha)


def mul(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> Vector:
    """Elementwise product (applying a diagonal matrix stored as a vector), a new vector."""
    out = clone(a)
    torch._foreach_mul_(local(out), local(b))
    return out


def clone(a: Sequence[torch.Tensor]) -> Vector:
    """A copy of ``a``."""
    return [x.detach().clone() for x in a]


def zeros_like_params(params: Sequence[torch.Tensor]) -> Vector:
    """Zero vector with the parameters' layout (fp32 for 16-bit parameters)."""
    return [torch.zeros_like(p, dtype=vector_dtype(p.dtype)).detach() for p in params]


def nbytes(a: Sequence[torch.Tensor]) -> int:
    """Bytes this rank holds for ``a``."""
    return sum(x.numel() * x.element_size() for x in local(a))


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
        loc = p.to_local() if isinstance(p, DTensor) else p
        gen = torch.Generator(device=loc.device)
        gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
        full = torch.randn(p.shape, generator=gen, device=loc.device,
                           dtype=vector_dtype(p.dtype))
        if isinstance(p, DTensor):
            mesh = p.device_mesh
            full = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
            full = full.redistribute(mesh, p.placements)
        out.append(full)
    return out


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Global inner product (one all-reduce over the world group; for scripts and tests, the
    solvers batch their reductions instead)."""
    value = local_dot(a, b)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
    return float(value)


def norm(a: Sequence[torch.Tensor]) -> float:
    """Global Euclidean norm."""
    return max(dot(a, a), 0.0) ** 0.5
