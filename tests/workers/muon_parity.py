"""Muon/NuMuon parity worker: a few optimizer steps on sharded matrices vs. one process.

``torchrun ... muon_parity.py OUT LAYOUT...`` with LAYOUTs ``fsdp`` (2 ranks), ``tp`` (2) or
``fsdp_tp`` (4, a 2 x 2 mesh). Every rank builds the same module (matrices 5x8 — rows split unevenly
—, 12x6, 40x36, an AdamW output head and norm), shards it with torch's ``fully_shard`` /
``parallelize_module``, sets the same full gradients on every step (each rank keeps its piece), and
steps Muon and NuMuon (rank 0.1 through the Krylov path). Rank 0 runs the same on plain tensors and
writes the largest absolute difference of parameters and optimizer state to OUT (JSON).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from titanwarm.cli import exit_after_run
from titanwarm.config.sections import Optimizer
from titanwarm.optim import build_optimizer

STEPS = 3


class Net(nn.ModuleDict):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # never called: gradients are set
        raise NotImplementedError


def build() -> nn.Module:
    torch.manual_seed(0)
    m = Net({"a": nn.Linear(8, 5, bias=False), "b": nn.Linear(6, 12, bias=False),
                       "c": nn.Linear(36, 40, bias=False), "output": nn.Linear(8, 4)})
    m.norm = nn.Parameter(torch.ones(8))
    return m


def cfg(name: str) -> Optimizer:
    return Optimizer(name=name, lr=0.05, weight_decay=0.1, rank_fraction=0.1, krylov_oversample=2,
                     krylov_iters=1, implementation="for-loop")


def grads(model: nn.Module, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def run(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    opt = build_optimizer([model], cfg(name), total_steps=STEPS)
    for step in range(STEPS):
        for n, p in model.named_parameters():
            g = grads(model, step)[n]
            p.grad = (distribute_tensor(g, p.device_mesh, p.placements, src_data_rank=None)
                      if isinstance(p, DTensor) else g)
        opt.step()
    out = {}
    for n, p in model.named_parameters():
        out[n] = full(p.detach())
        for k, v in opt.state[p].items():
            if k != "step":
                out[f"{n}/{k}"] = full(v)
    return out


def main() -> None:
    path, layouts = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    result = {layout: one_layout(layout) for layout in layouts}
    if dist.get_rank() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    dist.destroy_process_group()


def one_layout(layout: str) -> dict:
    world = dist.get_world_size()
    result = {}
    for name in ("Muon", "NuMuon"):
        model = build()
        if layout == "fsdp":
            mesh = init_device_mesh("cpu", (world,))
            for key in ("a", "b", "c"):
                fully_shard(model[key], mesh=mesh)
            fully_shard(model, mesh=mesh)
        else:
            mesh = (init_device_mesh("cpu", (world,), mesh_dim_names=("tp",)) if layout == "tp" else
                    init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp")))
            plan = {"a": ColwiseParallel(), "b": RowwiseParallel(), "c": ColwiseParallel(),
                    "output": ColwiseParallel()}
            parallelize_module(model, mesh["tp"], plan)
            if layout == "fsdp_tp":
                for key in ("a", "b", "c"):
                    fully_shard(model[key], mesh=mesh["dp"])
                fully_shard(model, mesh=mesh["dp"])
        sharded = run(model, name)
        ref = run(build(), name)
        assert sharded.keys() == ref.keys(), (sorted(sharded), sorted(ref))
        result[name] = {k: float((sharded[k] - ref[k]).abs().max()) for k in ref}
        result[name + "_placements"] = {n: str(p.placements) for n, p in model.named_parameters()
                                        if isinstance(p, DTensor)}
    return result


if __name__ == "__main__":
    main()
    exit_after_run(0)  # no interpreter teardown: see titanwarm.cli.exit_after_run
