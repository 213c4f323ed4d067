"""Muon/NuMuon under FSDP2 (2 ranks), TP (2) and FSDP2 x TP (4, incl. FSDP's _StridedShard over TP)
on real torchrun process groups: parameters and optimizer state after 3 steps equal one process.

Tolerance: 1e-6 absolute (measured: 0.0 — each matrix is orthogonalised whole, by the same
operations, on its owner rank; the momentum and AdamW are elementwise on the shards). Matrices:
5x8 (rows split 3/2 over 2 ranks, unevenly over 4), 12x6 (TP row-wise: columns split), 40x36
(NuMuon through the Krylov path), plus an AdamW output head, bias and norm.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import torchrun

WORKER = str(Path(__file__).parent / "workers" / "muon_parity.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("muon")
    found = {}
    for nproc, layouts in ((2, ["fsdp", "tp"]), (4, ["fsdp_tp"])):
        torchrun(nproc, [WORKER, str(out / f"{nproc}.json"), *layouts], rerun_on_native_abort=True)
        found.update(json.loads((out / f"{nproc}.json").read_text()))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["fsdp", "tp", "fsdp_tp"])
def test_sharded_updates_equal_single_process(results, layout):
    result = results[layout]
    for name in ("Muon", "NuMuon"):
        diffs = result[name]
        assert {"a.weight/momentum_buffer", "output.weight/exp_avg_sq"} <= diffs.keys()
        if name == "NuMuon":
            assert "c.weight/basis" in diffs
        worst = max(diffs, key=diffs.get)
        assert diffs[worst] <= 1e-6, (name, worst, diffs[worst])
    assert "Shard(dim=0)" in result["Muon_placements"]["a.weight"]
