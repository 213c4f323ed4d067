"""Accuracy of the finite-difference HVP against the exact (autograd) one, per step size.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/bench_fd_accuracy.py

Model: tests/workers/curvature_parity.Mini (2 blocks, dim 64, vocab 256), fp32, batch 8 x 64 tokens;
vectors: a random one and the top eigenvector of the Hessian (Lanczos, 40 HVPs). Prints the
relative error ||Hv_fd - Hv|| / ||Hv|| for eps = fd_eps * ||theta||. HVP cost: scripts/bench_tracker.py.
"""

from __future__ import annotations

import torch

from tests.workers.curvature_parity import Mini, lm_loss
from titanwarm.curvature import vectors as V
from titanwarm.curvature.hvp import AutogradHVP, FiniteDifferenceHVP, LossModule, SubstitutedLoss
from titanwarm.curvature.solvers import lanczos


def main() -> None:
    torch.manual_seed(0)
    model = Mini(vocab=256, dim=64, heads=4, layers=2)
    tokens = torch.randint(0, 256, (8, 65))
    batch = (tokens[:, :-1], tokens[:, 1:])
    module = LossModule([model])
    names = [n for n, _ in module.named_parameters()]
    fn = SubstitutedLoss(module, names, lm_loss, batch)
    x = V.random_like_params(fn.params, names, seed=0)

    exact_op = AutogradHVP(fn)
    top = lanczos(exact_op, x, 40, 1e-7).vector
    unit = V.clone(x)
    V.scale_(unit, 1.0 / V.norm(x))
    for label, v in (("random", unit), ("top eigvec", top)):
        ref = exact_op(v)
        row = []
        for eps in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2):
            approx = FiniteDifferenceHVP(fn, eps, relative=True)(v)
            V.add_(approx, ref, -1.0)
            row.append(f"{eps:g}: {V.norm(approx) / V.norm(ref):.1e}")
        print(f"FD error vs autograd ({label}, eps relative to ||θ||={V.norm(fn.params):.1f}): "
              + ", ".join(row))
    exact_op.release()


if __name__ == "__main__":
    main()
