"""Curvature tracker drills under 2-process FSDP2 (gloo), one launch, one JSON per rank.

Scenarios (``run`` returns a dict; each rank writes ``<out>.<rank>.json``):

- ``bf16``: the project's Llama (tinymodel shape) under FSDP2 with a bf16 ``MixedPrecisionPolicy``
  vs an fp32 single-process reference built from the same seed (the same weights), λmax(H) by a
  converged Lanczos, for ``dtype=float32`` and ``dtype=None`` (the bf16 param dtype).
- ``failure``: the loss of the 2nd tracked step raises ``torch.OutOfMemoryError`` on rank 1
  only; the 3rd succeeds. Then an autograd failure (RuntimeError) on rank 1 only under
  ``hvp="auto"``: every rank falls back to finite differences.
- ``locked``: block 1 locked (``skip``, frozen): the parameters the tracker all-gathers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy

import titanwarm.curvature.hvp as hvp_module
from titanwarm.cli import exit_after_run
from titanwarm.curvature import CurvatureTracker
from titanwarm.distributed.parallelize import apply_fsdp
from titanwarm.models.llama3 import FLAVORS, Transformer
from tests.workers.curvature_parity import BATCH, SEQ, VOCAB, lm_loss


def build(seed: int = 0) -> Transformer:
    model = Transformer(dataclasses.replace(FLAVORS["tinymodel"], vocab_size=VOCAB, max_seq_len=SEQ))
    model.init_weights(seed)
    return model


def global_batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1))


def local_batch(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = global_batch()
    per = BATCH // world
    local = tokens[rank * per:(rank + 1) * per]
    return local[:, :-1], local[:, 1:]


def sharded(param_dtype: torch.dtype) -> Transformer:
    model = build()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("dp",))
    apply_fsdp(model, mesh, MixedPrecisionPolicy(param_dtype=param_dtype,
                                                 reduce_dtype=torch.float32), "default")
    return model


def lambda_h(model, batch, dtype=None, **kw) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tracker = CurvatureTracker(model, opt, method="lanczos", max_hvps=kw.pop("max_hvps", 30),
                               tol=1e-7, preconditioned=False, hvp="autograd", dtype=dtype, **kw)
    return tracker.step(lm_loss, batch).lambda_max


def scenario_bf16(rank: int, world: int) -> dict:
    x, y = global_batch()[:, :-1], global_batch()[:, 1:]
    ref = lambda_h(build(), (x, y))  # fp32, single process (computed on every rank alike)
    model = sharded(torch.bfloat16)
    batch = local_batch(rank, world)
    return {"ref": ref, "float32": lambda_h(model, batch, torch.float32),
            "param": lambda_h(model, batch, None)}


def scenario_failure(rank: int, world: int) -> dict:
    model = sharded(torch.float32)
    batch = local_batch(rank, world)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.zero_grad()
    lm_loss([model], batch).backward()
    opt.step()
    calls = {"n": 0}

    def failing_loss(parts, b):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 2:
            raise torch.OutOfMemoryError("injected: out of memory on rank 1")
        return lm_loss(parts, b)

    tracker = CurvatureTracker(model, opt, method="lanczos", max_hvps=4, tol=0.0, hvp="auto")
    out: dict = {"steps": []}
    for _ in range(3):
        est = tracker.step(failing_loss, batch)
        out["steps"].append(None if est is None else {"lambda": est.lambda_max, "hvp": est.hvp})
        out.setdefault("skips", []).append(tracker.last_skip)
    clean = CurvatureTracker(model, opt, method="lanczos", max_hvps=4, tol=0.0, hvp="auto")
    clean.step(lm_loss, batch)
    out["clean_second"] = clean.step(lm_loss, batch).lambda_max

    def no_double_backward(parts, b):
        loss = lm_loss(parts, b)
        if rank == 1 and torch.is_grad_enabled():
            # stand-in for a kernel without double backward, on one rank only
            return _NoDoubleBackward.apply(loss)
        return loss

    def overflowing_on_rank_1(parts, b):  # rank 1's HVP share overflows a float32 dot product
        loss = lm_loss(parts, b)
        return loss * 1e30 if rank == 1 else loss

    overflow = CurvatureTracker(model, opt, method="lanczos", max_hvps=4, tol=0.0, hvp="auto")
    est = overflow.step(overflowing_on_rank_1, batch)
    out["overflow"] = {"skipped": est is None, "skip": overflow.last_skip,
                       "then": overflow.step(lm_loss, batch).hvp}

    fallback = CurvatureTracker(model, opt, method="lanczos", max_hvps=4, tol=0.0, hvp="auto")
    est = fallback.step(no_double_backward, batch)
    out["fallback"] = {"hvp": None if est is None else est.hvp,
                       "lambda": None if est is None else est.lambda_max}
    return out


class _NoDoubleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():
            raise RuntimeError("injected: derivative for backward not implemented")
        return g


def scenario_locked(rank: int, world: int) -> dict:
    model = build()
    locked = model.layers["1"]
    locked.skip = True
    for p in locked.parameters():
        p.requires_grad_(False)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))
    apply_fsdp(model, mesh, MixedPrecisionPolicy(param_dtype=torch.float32,
                                                 reduce_dtype=torch.float32), "default")
    names = {id(p): n for n, p in model.named_parameters()}
    gathered: set[str] = set()
    original = hvp_module.SubstitutedLoss.gather

    def recording(self, value, p):  # every all-gather of the tracker goes through gather()
        gathered.add(names[id(p)])
        return original(self, value, p)

    hvp_module.SubstitutedLoss.gather = recording
    try:
        lam = lambda_h(model, local_batch(rank, world), max_hvps=3)
    finally:
        hvp_module.SubstitutedLoss.gather = original
    return {"gathered": sorted(gathered), "lambda": lam,
            "locked": sorted(n for n, p in model.named_parameters() if n.startswith("layers.1."))}


SCENARIOS = {"bf16": scenario_bf16, "failure": scenario_failure, "locked": scenario_locked}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        result = {name: SCENARIOS[name](rank, world) for name in args.scenarios.split(",")}
        with open(f"{args.out}.{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_after_run(0)  # no interpreter teardown: see titanwarm.cli.exit_after_run
