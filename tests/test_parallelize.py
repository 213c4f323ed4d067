"""Parallel layouts equal one process: FSDP2, HSDP, TP (with loss parallelism and tied weights) and
FSDP2 x TP on real torchrun process groups, plus activation checkpointing and compile; and the
single-process pieces (ParallelDims, clip_grad_norm_, all-reduce helpers)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from launch import torchrun
from workers.parallel_forward import CASES, run_case

from titanwarm.config.sections import Parallelism
from titanwarm.distributed.parallel_dims import ParallelDims
from titanwarm.distributed.utils import clip_grad_norm_

WORKER = str(Path(__file__).parent / "workers" / "parallel_forward.py")
TWO_PROCS = ["fsdp", "fsdp_tied", "fsdp_ac_full", "fsdp_ac_selective", "replicate", "tp",
             "tp_loss_parallel", "tp_tied", "tp_ac_full", "tp_compile", "fsdp_compile_ac"]
FOUR_PROCS = ["fsdp_tp", "fsdp_tp_tied_loss_parallel", "hsdp"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def parallel_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parallel")
    results = {}
    for nproc, names in ((2, TWO_PROCS), (4, FOUR_PROCS)):
        path = out / f"{nproc}.pt"
        torchrun(nproc, [WORKER, str(path), *names], rerun_on_native_abort=True)
        results.update(torch.load(path))
    return results


@pytest.fixture(scope="module")
def references() -> dict:
    return {False: run_case(CASES["reference"], 1), True: run_case(CASES["reference_tied"], 1)}


@pytest.mark.slow
@pytest.mark.parametrize("name", TWO_PROCS + FOUR_PROCS)
def test_layout_matches_single_process(name: str, parallel_results: dict, references: dict) -> None:
    got, ref = parallel_results[name], references[CASES[name].get("tie", False)]
    assert got["params"].keys() == ref["params"].keys()
    for key, value in ref["params"].items():  # deterministic init: bitwise equal in every layout
        assert torch.equal(got["params"][key], value), key
    assert rel(got["logits"], ref["logits"]) < 1e-5
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert got["norm"] == pytest.approx(ref["norm"], rel=1e-5)
    assert got["grads"].keys() == ref["grads"].keys()
    for key, value in ref["grads"].items():  # clipped gradients, so the clip factor is checked too
        assert rel(got["grads"][key], value) < 1e-5, key


@pytest.mark.parametrize("case", [dict(ac="full"), dict(ac="selective", every=2),
                                  dict(ac="selective", every=1), dict(ac="full", compile=True)])
def test_checkpointing_and_compile_keep_single_process_grads(case: dict, references: dict) -> None:
    got, ref = run_case(case, 1), references[False]
    assert rel(got["logits"], ref["logits"]) < 1e-6
    for key, value in ref["grads"].items():
        assert rel(got["grads"][key], value) < 1e-5, key


def dims(world: int, replicate: int = 1, shard: int = -1, tp: int = 1, lp: bool = False) -> ParallelDims:
    return ParallelDims.from_config(Parallelism(data_parallel_replicate_degree=replicate,
                                                data_parallel_shard_degree=shard,
                                                tensor_parallel_degree=tp, loss_parallel=lp), world)


def test_parallel_dims_resolve_and_validate() -> None:
    d = dims(8, replicate=2, tp=2, lp=True)
    assert (d.dp_replicate, d.dp_shard, d.tp, d.dp_world) == (2, 2, 2, 4)
    assert d.dp_enabled and d.tp_enabled and d.loss_parallel
    assert d.dp_mesh_dims == ("dp_replicate", "dp_shard")
    assert dims(4, tp=4).dp_mesh_dims == () and not dims(4, tp=4).dp_enabled
    assert not dims(2, shard=2, lp=True).loss_parallel  # loss parallelism needs TP
    single = dims(1)
    assert single.build_mesh("cpu") is None and (single.dp_rank, single.dp_world) == (0, 1)
    with pytest.raises(ValueError, match="!= world size"):
        dims(4, shard=3)
    with pytest.raises(ValueError, match="not divisible"):
        dims(6, tp=4)
    with pytest.raises(ValueError, match=">= 1"):
        dims(4, tp=0)


def test_clip_grad_norm_matches_torch_on_plain_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(5, 3)) for _ in range(3)]
    twins = [torch.nn.Parameter(torch.zeros(5, 3)) for _ in range(3)]
    for p, q in zip(params, twins):
        p.grad = torch.randn(5, 3, generator=gen)
        q.grad = p.grad.clone()
    expected = torch.nn.utils.clip_grad_norm_(twins, 0.5)
    total = clip_grad_norm_(params, 0.5)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    for p, q in zip(params, twins):
        torch.testing.assert_close(p.grad, q.grad)
    assert math.isclose(clip_grad_norm_(params, 0.0).item(), 0.5, rel_tol=1e-5)  # 0: norm only


@pytest.mark.slow
def test_scalar_all_reduce_across_two_ranks() -> None:
    """The one scalar all-reduce helper (and the fault guard's skip/stop decision built on it)
    really combines the ranks' values: rank r contributes r+1, 10r, [r, 2r], loss r and a stop
    signal on the last rank only."""
    out = torchrun(2, ["tests/workers/scalar_reduce.py"], timeout=120, rerun_on_native_abort=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert float(values["mean_float"]) == 1.5
    assert float(values["max_float"]) == 10.0
    assert values["mean_tensor"] == "[0.5, 1.0]"
    assert values["fault"] == "[0.5, True]"