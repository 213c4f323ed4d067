"""NuMuon through train.py with architecture warm-up, the curvature tracker and checkpoints.

The reference run (2 processes, FSDP2) checkpoints at step 4, right after block 1 unlocked (after
step 4's update, so it is in the optimizer with no state yet) and NuMuon's Krylov state exists for
block 0. Resuming from that checkpoint on 2 processes gives bit-identical losses, matrix curvature
numbers and final weights; on 1 process (resharding) the losses agree to 1e-5 relative (reduction
order differs).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_checkpoint import INTERVAL, base_args, copy_run, exported, losses, ok, records, run

NUMUON = ["--optimizer.name", "NuMuon", "--optimizer.rank_fraction", "0.2",
          "--optimizer.krylov_oversample", "2", "--optimizer.krylov_iters", "1",
          "--depth_schedule.enabled", "true", "--depth_schedule.start", str(INTERVAL),
          "--curvature.enabled", "true", "--curvature.interval", "2"]
STEPS = INTERVAL + 2  # two steps after the resume: the unlocked block's first update, a tracked step
KEYS = ("lambda_max", "matrix_lambda_max_h", "update_curvature", "second_order_ratio")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    dump = tmp_path_factory.mktemp("numuon") / "straight"
    ok(run(2, base_args(dump, steps=STEPS, world=2) + NUMUON))
    return dump


def tracked(dump) -> dict[int, tuple]:
    return {r["step"]: tuple(r[k] for k in KEYS) for r in records(dump) if "update_curvature" in r}


@pytest.mark.slow
def test_resume_right_after_unlock_is_bit_exact(reference, tmp_path):
    assert [r["step"] for r in records(reference, "unlock")] == [INTERVAL]
    ref_tracked = tracked(reference)
    assert sorted(ref_tracked) == list(range(2, STEPS + 1, 2))
    assert all(math.isfinite(v) for vals in ref_tracked.values() for v in vals)
    dump = copy_run(reference, tmp_path / "resumed", steps=[INTERVAL])
    proc = ok(run(2, base_args(dump, steps=STEPS, world=2) + NUMUON))
    assert f"resumed from step {INTERVAL}" in proc.stdout
    got, ref = losses(dump), losses(reference)
    assert sorted(got) == list(range(INTERVAL + 1, STEPS + 1))
    assert got == {s: ref[s] for s in got}
    assert tracked(dump) == {s: v for s, v in ref_tracked.items() if s > INTERVAL}
    a, b = exported(reference, tmp_path), exported(dump, tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_resharded_to_one_process(reference, tmp_path):
    dump = copy_run(reference, tmp_path / "one", steps=[INTERVAL])
    proc = ok(run(1, base_args(dump, steps=STEPS, world=1) + NUMUON))
    assert f"resumed from step {INTERVAL}" in proc.stdout
    got, ref = losses(dump), losses(reference)
    for s in got:
        assert math.isclose(got[s], ref[s], rel_tol=1e-5), (s, got[s], ref[s])
