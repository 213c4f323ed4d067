"""Parameter-init time of the 1B shape on CPU: the previous scheme (every rank draws every full
parameter from a CPU generator, then keeps its slice) vs the counter-based one (each rank draws only
the elements it keeps). Prints a table.

Measured on two matrices of a 1B block (attention.wq 2048x2048 and feed_forward.w1 8192x2048, 21M
truncated normals, as every 1B matrix is: its embedding is tied to the output projection), then
scaled by parameter count to the whole model (1.24e9). "rank 0 of 8" is a fake 8-rank process group with FSDP2's
Shard(0) layout in one process: what each of 8 ranks does.

    OMP_NUM_THREADS=1 python scripts/bench_init.py   # torchrun gives each rank 1 thread
"""

from __future__ import annotations

import hashlib
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.testing._internal.distributed.fake_pg import FakeStore

from titanwarm.distributed.param_init import draw_param
from titanwarm.models.llama3 import FLAVORS, Transformer
from titanwarm.models.weight_init import param_key


def previous_draw(param: torch.Tensor, std: float, name: str, seed: int = 0) -> None:
    """The scheme before the counter-based one (the baseline being measured): a CPU generator
    seeded by sha256(seed/name) draws the full truncated normal, each rank keeps its slice."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    full = torch.nn.init.trunc_normal_(torch.empty(param.shape), 0.0, std, -3 * std, 3 * std, generator=gen)
    if isinstance(param, torch.distributed.tensor.DTensor):
        full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(full)


def block_shapes() -> tuple[dict, dict, int]:
    with torch.device("meta"):
        model = Transformer(FLAVORS["1B"])
    plan = model.init_plan()
    shapes = {n: p.shape for n, p in model.named_parameters()
              if n in ("layers.0.attention.wq.weight", "layers.0.feed_forward.w1.weight")}
    total = sum(p.numel() for p in model.parameters())
    return shapes, {n: plan[n] for n in shapes}, total


def time_block(shapes, rules, placements_mesh) -> tuple[float, float]:
    """(previous, counter-based) seconds to initialise the block's matrices."""
    out = []
    for scheme in ("previous", "counter"):
        params = {}
        for name, shape in shapes.items():
            t = torch.empty(shape)
            params[name] = (distribute_tensor(t, placements_mesh, [Shard(0)], src_data_rank=None)
                            if placements_mesh is not None else t)
        t0 = time.perf_counter()
        with torch.no_grad():
            for name, p in params.items():
                if scheme == "previous":
                    previous_draw(p, rules[name].std, name)
                else:
                    draw_param(p, rules[name], param_key(0, name))
        out.append(time.perf_counter() - t0)
    return out[0], out[1]


def main() -> None:
    shapes, rules, total = block_shapes()
    block = sum(s.numel() for s in shapes.values())
    rows = [("1 process", *time_block(shapes, rules, None))]
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=8)
    rows.append(("rank 0 of 8 (FSDP2)", *time_block(shapes, rules, init_device_mesh("cpu", (8,)))))
    dist.destroy_process_group()
    scale = total / block
    print(f"1B flavor: {total / 1e9:.3f}e9 parameters; measured on {block / 1e6:.1f}M of them, "
          f"threads {torch.get_num_threads()}")
    print(f"| layout | previous: measured s | counter: measured s | previous: whole model s (scaled) "
          f"| counter: whole model s (scaled) | speed-up |")
    print("|---|---|---|---|---|---|")
    for label, old, new in rows:
        print(f"| {label} | {old:.2f} | {new:.2f} | {old * scale:.0f} | {new * scale:.0f} | {old / new:.1f}x |")


if __name__ == "__main__":
    main()
