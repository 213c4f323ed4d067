"""Distributed parity of the curvature tracker: FSDP2 (2 procs), TP (2) and FSDP2xTP (4, 2x2)
give the single-process λmax of H and of G (after a few AdamW steps) on the same global batch,
with the autograd and the finite-difference HVP, and of G restricted by ``min_v_hat_ratio``.
Worker: tests/workers/curvature_parity.py. Models: the worker's ``mini`` transformer, and the
project's Llama 3 (``llama``: tinymodel shape, the project's own TP plan with sequence
parallelism and FSDP2 wrapping) for FSDP2 and TP."""

from __future__ import annotations

import json

import pytest

from tests.launch import torchrun
from tests.workers.curvature_parity import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single():
    """model name -> the single-process result (computed once per model)."""
    cache: dict[str, dict] = {}

    def get(model: str) -> dict:
        if model not in cache:
            cache[model] = run("single", model)
        return cache[model]

    return get


@pytest.mark.parametrize("model,layout,nproc", [("mini", "fsdp", 2), ("mini", "tp", 2),
                                                ("mini", "fsdp_tp", 4), ("llama", "fsdp", 2),
                                                ("llama", "tp", 2)])
def test_lambda_matches_single_process(model: str, layout: str, nproc: int, single, tmp_path) -> None:
    out = tmp_path / "result.json"
    torchrun(nproc, ["tests/workers/curvature_parity.py", "--layout", layout, "--model", model,
                     "--out", str(out)], timeout=240, rerun_on_native_abort=True)
    dist = json.loads(out.read_text())
    single = single(model)
    ref = single["autograd"]
    for hvp in ("autograd", "finite_difference"):
        for key in ("g", "h"):  # converged Lanczos (fp32): within 1%
            assert dist[hvp][key] == pytest.approx(ref[key], rel=1e-2), (hvp, key, dist, ref)
    # 3 un-converged power iterations: equal only if the start vector is layout-independent.
    # Asserted for the exact HVP only: after 3 finite-difference iterations the value is dominated
    # by the differences' fp32 rounding (single process: 1761 with finite differences vs 1413 exact
    # on the llama model), which differs with the reduction order of each layout.
    assert dist["autograd"]["g_power3"] == pytest.approx(ref["g_power3"], rel=1e-4)
    # the converged autograd values agree far better than the 1% contract
    assert dist["autograd"]["g"] == pytest.approx(ref["g"], rel=1e-5)
    # min_v_hat_ratio drops the same coordinates in every layout (global RMS), and drops some
    assert dist["autograd"]["g_measured"] == pytest.approx(ref["g_measured"], rel=1e-5)
    assert ref["g_measured"] < 0.999 * ref["g"]
