"""``ParallelDims``: the degrees of the ``[parallelism]`` section resolved against the world size, and
the device mesh built from them."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from titanwarm.config.sections import Parallelism


@dataclass
class ParallelDims:
    """Data-parallel replicate x data-parallel shard x tensor-parallel degrees (product = world).

    ``build_mesh`` creates a DeviceMesh whose named dims are the used ones among "dp_replicate",
    "dp_shard" and "tp" (outermost first; "dp_shard" is kept at size 1 under pure replication so that
    FSDP2 gets its 2-D HSDP mesh), plus a flattened "dp" mesh over all data-parallel ranks for data
    loading and metric averaging. A single process gets no mesh at all.
    """

    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int
    loss_parallel: bool = False
    mesh: DeviceMesh | None = field(default=None, repr=False)
    """The named mesh, set by ``build_mesh``."""
    dp_mesh: DeviceMesh | None = field(default=None, repr=False)
    """The flattened 1-D "dp" mesh over data-parallel ranks, set by ``build_mesh`` when data
    parallelism is on."""

    @classmethod
    def from_config(cls, cfg: Parallelism, world_size: int) -> ParallelDims:
        """Resolve ``data_parallel_shard_degree = -1`` to the ranks left over and check the product."""
        replicate, shard, tp = (cfg.data_parallel_replicate_degree, cfg.data_parallel_shard_degree,
                                cfg.tensor_parallel_degree)
        if replicate < 1 or tp < 1 or (shard < 1 and shard != -1):
            raise ValueError(f"parallel degrees must be >= 1 (shard may be -1): replicate={replicate}, "
                             f"shard={shard}, tp={tp}")
        if shard == -1:
            if world_size % (replicate * tp):
                raise ValueError(f"world size {world_size} is not divisible by data_parallel_replicate"
                                 f"_degree * tensor_parallel_degree = {replicate * tp}")
            shard = world_size // (replicate * tp)
        if replicate * shard * tp != world_size:
            raise ValueError(f"data_parallel_replicate_degree ({replicate}) * data_parallel_shard_degree "
                             f"({shard}) * tensor_parallel_degree ({tp}) = {replicate * shard * tp} "
                             f"!= world size {world_size}")
        return cls(dp_replicate=replicate, dp_shard=shard, tp=tp, world_size=world_size,
                   loss_parallel=cfg.loss_parallel and tp > 1)

    @property
    def dp_enabled(self) -> bool:
        """More than one data-parallel rank (FSDP2 or HSDP is applied)."""
        return self.dp_replicate * self.dp_shard > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def dp_mesh_dims(self) -> tuple[str, ...]:
        """The mesh dims FSDP2 runs on: ("dp_shard",) for FSDP, ("dp_replicate", "dp_shard") for HSDP."""
        if not self.dp_enabled:
            return ()
        return ("dp_replicate", "dp_shard") if self.dp_replicate > 1 else ("dp_shard",)

    def build_mesh(self, device_type: str) -> DeviceMesh | None:
        """Create (and keep in ``self.mesh``) the named mesh and its flattened "dp" dim."""
        dims = [*self.dp_mesh_dims, *(("tp",) if self.tp_enabled else ())]
        if not dims:
            return None
        sizes = {"dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard, "tp": self.tp}
        self.mesh = init_device_mesh(device_type, tuple(sizes[d] for d in dims),
                                     mesh_dim_names=tuple(dims))
        if self.dp_enabled:
            self.dp_mesh = self.mesh[self.dp_mesh_dims]._flatten("dp")
        return self.mesh

    @property
    def dp_rank(self) -> int:
        """This rank's index among the data-parallel ranks (which slice of each batch it reads)."""
        return self.dp_mesh.get_local_rank() if self.dp_mesh is not None else 0

    @property
    def dp_world(self) -> int:
        """Number of data-parallel ranks (distinct batch slices per step)."""
        return self.dp_replicate * self.dp_shard
