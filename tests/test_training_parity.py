"""Distributed parity of whole training runs through ``train.py``: the same global batch and seed
give the same per-step losses on 1 process, FSDP2 on 2, TP on 2 and FSDP2 x TP on 4 (fp32, rel 1e-5),
with and without architecture warm-up (two unlock events inside the run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch import REPO, torchrun

GLOBAL_BATCH = 4
STEPS = 6
BASE = ["--model.flavor", "depth4", "--training.steps", str(STEPS), "--training.seq_len", "32",
        "--training.global_batch_size", str(GLOBAL_BATCH), "--lr_scheduler.warmup_steps", "2",
        "--optimizer.lr", "3e-3", "--metrics.log_freq", "1", "--metrics.enable_tensorboard", "false",
        "--metrics.report", "false",
        "--validation.enable", "false", "--training.device", "cpu"]
ARCHWARM = ["--depth_schedule.enabled", "true", "--depth_schedule.initial_layers", "2",
            "--depth_schedule.start", "2", "--depth_schedule.interval", "2",
            "--depth_schedule.group_size", "1", "--depth_schedule.unlock_init", "noise"]
LAYOUTS = {  # name: (processes, data-parallel degree, extra args)
    "fsdp2": (2, 2, []),
    "tp2": (2, 1, ["--parallelism.tensor_parallel_degree", "2"]),
    "fsdp2xtp2": (4, 2, ["--parallelism.tensor_parallel_degree", "2"]),
}


def step_records(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "step"]


def run(tmp: Path, name: str, nproc: int, dp: int, extra: list[str]) -> list[dict]:
    folder = tmp / name
    args = ["train.py", *BASE, "--training.local_batch_size", str(GLOBAL_BATCH // dp),
            "--job.dump_folder", str(folder), *extra]
    if nproc == 1:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-4000:]
    else:
        torchrun(nproc, args)
    return step_records(folder)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, list[dict]]:
    tmp = tmp_path_factory.mktemp("single")
    return {"plain": run(tmp, "plain", 1, 1, []), "archwarm": run(tmp, "archwarm", 1, 1, ARCHWARM)}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["plain", "archwarm"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_losses_match_single_process(references, tmp_path, layout, variant):
    nproc, dp, extra = LAYOUTS[layout]
    got = run(tmp_path, layout, nproc, dp, extra + (ARCHWARM if variant == "archwarm" else []))
    want = references[variant]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5), (layout, g["step"])
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4), (layout, g["step"])
    if variant == "archwarm":
        assert [r["active_layers"] for r in got] == [2, 2, 3, 3, 4, 4]  # unlocks after steps 2 and 4
    assert want[-1]["loss"] < want[0]["loss"]
