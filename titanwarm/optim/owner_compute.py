"""Whole-matrix work on owner ranks for sharded (DTensor) matrices: gather, compute, scatter back.

Newton-Schulz (or a top-k SVD) of a *shard* is not the shard of the whole matrix's result (DeepSpeed
#7807 measured 0.60 relative error), so every sharded matrix is assembled whole on one owner rank:

1. owners: matrices sorted by cost ``m n min(m, n)`` (largest first, ties by order) go greedily to
   the least-loaded rank: the same assignment on every rank, a function of the shapes only;
2. gather: every rank sends its local piece (padded to the largest piece) to the owner
   (``dist.gather``, all matrices in flight at once); the owner writes each piece into the full
   matrix through an index map;
3. the owner computes ``fn(i, full) -> (direction, extra)``;
4. scatter: the owner cuts the direction into every rank's piece (``dist.scatter``); ``extra``
   (NuMuon's basis, small) is broadcast so that every rank holds it.

Index maps: a rank's local piece of a DTensor is what ``distribute_tensor(full, mesh, placements,
src_data_rank=None)`` keeps locally, for any placements (Shard, uneven rows, TP's column or row
split, FSDP2 over TP's ``_StridedShard``, replicated dimensions). The first time a matrix is seen each
rank lays out ``arange(numel)`` that way and gathers its piece of indices to the owner, which keeps
them (int64, about one index per element it owns); later steps move values only. Replicated mesh
dimensions send the same values more than once (harmless, not optimal).

The collectives run over the default process group, so the parameters' device mesh must span every
rank (true for every titanwarm layout: dp_replicate x dp_shard x tp = world size). The cost per
matrix is one gather and one scatter of its elements (plus the basis broadcast for NuMuon), as in
Dion, modded-nanogpt and torchtitan's DistMuon; unlike DistMuon's packed all-to-all this issues one
collective per matrix and direction.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

Result = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class ShardedMatrix:
    """One matrix to process: the DTensor parameter (its layout), this rank's piece of the input,
    the dtype of the direction and the shape of the broadcast extra (None: no extra)."""

    param: DTensor
    local: torch.Tensor
    out_dtype: torch.dtype
    extra_shape: tuple[int, int] | None


def assign_owners(costs: list[float], world: int) -> list[int]:
    """Greedy cost balancing: largest first, to the least-loaded rank (lowest rank on ties)."""
    owners = [0] * len(costs)
    heap = [(0.0, r) for r in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(heap)
        owners[i] = r
        heapq.heappush(heap, (load + costs[i], r))
    return owners


@dataclass
class _Layout:
    owner: int
    pad: int
    """Largest local piece over ranks (every message is padded to it)."""
    maps: list[torch.Tensor] | None
    """On the owner: rank -> flat indices of its piece in the full matrix."""


class OwnerCompute:
    """Runs ``fn`` on whole matrices at their owners; caches the index maps per matrix."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[int, int], _Layout] = {}

    def _layout(self, p: DTensor, owner: int, rank: int, world: int) -> _Layout:
        key = (id(p), owner)
        if key not in self._layouts:
            local = p.to_local()
            idx = torch.arange(p.numel(), device=local.device).view(p.shape)
            mine = distribute_tensor(idx, p.device_mesh, p.placements, src_data_rank=None).to_local()
            if tuple(mine.shape) != tuple(local.shape):
                raise RuntimeError(f"unexpected local layout of a {tuple(p.shape)} matrix with "
                                   f"placements {p.placements}")
            sizes = [torch.zeros((), dtype=torch.int64, device=local.device) for _ in range(world)]
            dist.all_gather(sizes, torch.tensor(mine.numel(), device=local.device))
            sizes = [int(s) for s in sizes]
            pad = max(sizes)
            send = torch.full((pad,), -1, dtype=torch.int64, device=local.device)
            send[:mine.numel()] = mine.flatten()
            recv = [torch.empty_like(send) for _ in range(world)] if rank == owner else None
            dist.gather(send, recv, dst=owner)
            maps = [r[:n] for r, n in zip(recv, sizes)] if recv is not None else None
            self._layouts[key] = _Layout(owner, pad, maps)
        return self._layouts[key]

    def run(self, items: list[ShardedMatrix], fn: Callable[[int, torch.Tensor], Result]) -> list[Result]:
        """``(local piece of the direction, extra)`` per item, computed whole by each item's owner."""
        rank, world = dist.get_rank(), dist.get_world_size()
        for it in items:
            if it.param.device_mesh.size() != world:
                raise RuntimeError("Muon/NuMuon need the parameters' device mesh to span all "
                                   f"{world} ranks; got a mesh of {it.param.device_mesh.size()}")
        owners = assign_owners([float(it.param.shape[0] * it.param.shape[1] * min(it.param.shape))
                                for it in items], world)
        layouts = [self._layout(it.param, o, rank, world) for it, o in zip(items, owners)]

        # 2. gather the inputs to the owners
        recvs, works = [], []
        for it, lay in zip(items, layouts):
            send = it.local.new_zeros(lay.pad)
            send[:it.local.numel()] = it.local.flatten()
            recv = [torch.empty_like(send) for _ in range(world)] if rank == lay.owner else None
            works.append(dist.gather(send, recv, dst=lay.owner, async_op=True))
            recvs.append(recv)
        for w in works:
            w.wait()

        # 3. compute on the owners; 4. scatter the directions back, broadcast the extras
        outs, extras, works = [], [], []
        for i, (it, lay, recv) in enumerate(zip(items, layouts, recvs)):
            out = torch.empty(lay.pad, dtype=it.out_dtype, device=it.local.device)
            pieces, extra = None, None
            if rank == lay.owner:
                full = it.local.new_empty(it.param.numel())
                for m, r in zip(lay.maps, recv):
                    full[m] = r[:m.numel()]
                direction, extra = fn(i, full.view(it.param.shape))
                flat = direction.to(it.out_dtype).flatten()
                pieces = [torch.cat([flat[m], flat.new_zeros(lay.pad - m.numel())]) for m in lay.maps]
            works.append(dist.scatter(out, pieces, src=lay.owner, async_op=True))
            if it.extra_shape is not None:
                if extra is None:
                    extra = torch.empty(it.extra_shape, dtype=torch.float32, device=it.local.device)
                works.append(dist.broadcast(extra, src=lay.owner, async_op=True))
            outs.append(out)
            extras.append(extra)
        for w in works:
            w.wait()
        return [(out[:it.local.numel()].view(it.local.shape), extra)
                for it, out, extra in zip(items, outs, extras)]
