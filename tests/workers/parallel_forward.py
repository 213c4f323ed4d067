"""torchrun worker for tests/test_parallelize.py: one forward/backward of ``tinymodel`` per layout.

``python -m torch.distributed.run --nproc_per_node=N tests/workers/parallel_forward.py OUT CASE...``
runs each named case (a parallel layout, see ``CASES``) with the same seed and batch, and rank 0
saves ``{case: result}`` to OUT, where a result holds the full initial parameters, the full logits,
the loss, the total gradient norm and the full clipped gradients (all gathered over the ranks).
``run_case`` with world size 1 gives the single-process reference.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from titanwarm.cli import exit_after_run
from titanwarm.config.sections import JobConfig
from titanwarm.distributed.init import init_distributed
from titanwarm.distributed.parallel_dims import ParallelDims
from titanwarm.distributed.parallelize import loss_context, parallelize_llama
from titanwarm.distributed.param_init import canonical_name, init_model
from titanwarm.distributed.utils import all_reduce_max, all_reduce_mean, clip_grad_norm_
from titanwarm.models.llama3 import FLAVORS, Transformer

VOCAB, BATCH, SEQ, SEED, MAX_NORM = 256, 4, 16, 7, 0.05

CASES: dict[str, dict] = {
    "fsdp": dict(shard=2),
    "fsdp_tied": dict(shard=2, tie=True),
    "fsdp_ac_full": dict(shard=2, ac="full"),
    "fsdp_ac_selective": dict(shard=2, ac="selective", every=2),
    "replicate": dict(replicate=2, shard=1),
    "tp": dict(tp=2),
    "tp_loss_parallel": dict(tp=2, loss_parallel=True),
    "tp_tied": dict(tp=2, tie=True),
    "tp_ac_full": dict(tp=2, ac="full"),
    "tp_compile": dict(tp=2, compile=True, backend="eager"),
    "fsdp_compile_ac": dict(shard=2, ac="full", compile=True),
    "fsdp_tp": dict(shard=2, tp=2),
    "fsdp_tp_tied_loss_parallel": dict(shard=2, tp=2, tie=True, loss_parallel=True),
    "hsdp": dict(replicate=2, shard=2),
    "reference": dict(),
    "reference_tied": dict(tie=True),
}


def config(case: dict) -> JobConfig:
    cfg = JobConfig()
    cfg.training.device = "cpu"
    cfg.parallelism.data_parallel_replicate_degree = case.get("replicate", 1)
    cfg.parallelism.data_parallel_shard_degree = case.get("shard", 1)
    cfg.parallelism.tensor_parallel_degree = case.get("tp", 1)
    cfg.parallelism.loss_parallel = case.get("loss_parallel", False)
    cfg.activation_checkpoint.mode = case.get("ac", "none")
    cfg.activation_checkpoint.selective_every = case.get("every", 2)
    cfg.compile.enable = case.get("compile", False)
    cfg.compile.backend = case.get("backend", "aot_eager")  # aot_eager: traces like inductor, no C++ compiler
    return cfg


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def run_case(case: dict, world_size: int) -> dict:
    """Build, parallelise, init, run one step's forward/backward/clip; everything gathered in full."""
    cfg = config(case)
    dims = ParallelDims.from_config(cfg.parallelism, world_size)
    dims.build_mesh("cpu")
    args = dataclasses.replace(FLAVORS["tinymodel"], vocab_size=VOCAB, max_seq_len=SEQ,
                               tie_embeddings=case.get("tie", False))
    with torch.device("meta"):
        model = Transformer(args)
    parallelize_llama(model, dims, cfg)
    init_model(model, "cpu", SEED)
    params = {canonical_name(n): full(p) for n, p in model.named_parameters()}

    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1))
    rows = BATCH // dims.dp_world
    local = tokens[dims.dp_rank * rows:(dims.dp_rank + 1) * rows]
    logits = model(local[:, :-1])
    with loss_context(dims):
        loss = F.cross_entropy(logits.flatten(0, 1), local[:, 1:].flatten())
        loss.backward()
    logits, loss = full(logits), full(loss)
    if dims.dp_enabled:
        gathered = [torch.empty_like(logits) for _ in range(dims.dp_world)]
        dist.all_gather(gathered, logits, group=dims.dp_mesh.get_group())
        logits = torch.cat(gathered)
    loss = all_reduce_mean(loss.item(), dims.dp_mesh)
    norm = clip_grad_norm_(model.parameters(), MAX_NORM)
    grads = {canonical_name(n): full(p.grad) for n, p in model.named_parameters()}
    return dict(params=params, logits=logits, loss=loss, norm=norm.item(), grads=grads)


def main(out: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    world_size = init_distributed("cpu")
    assert all_reduce_max(float(dist.get_rank())) == world_size - 1
    assert all_reduce_mean(torch.tensor(float(dist.get_rank()))).item() == (world_size - 1) / 2
    run_cases(run_case, CASES, names, world_size, out)


def run_cases(run_case, cases: dict, names: list[str], world_size: int, out: str) -> None:
    """Worker body shared with the stabiliser parity worker: run each named case on this
    already-initialised process group, save the results from rank 0, tear the group down."""
    results = {name: run_case(cases[name], world_size) for name in names}
    if dist.get_rank() == 0:
        torch.save(results, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
    exit_after_run(0)  # no interpreter teardown: see titanwarm.cli.exit_after_run
