"""Cost and accuracy of the curvature HVP methods on one CPU process (numbers in docs/curvature.md).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python tests/workers/curvature_bench.py

Model: tests/workers/curvature_parity.Mini (2 blocks, dim 64, vocab 256; ~0.23M params), fp32,
batch 8 x 64 tokens. Times are medians over repeats, relative to one forward+backward.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from tests.workers.curvature_parity import Mini, lm_loss
from titanwarm.curvature import vectors as V
from titanwarm.curvature.hvp import AutogradHVP, FiniteDifferenceHVP, LossModule, SubstitutedLoss
from titanwarm.curvature.solvers import lanczos


def median_time(fn: Callable[[], object], repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    model = Mini(vocab=256, dim=64, heads=4, layers=2)
    tokens = torch.randint(0, 256, (8, 65))
    batch = (tokens[:, :-1], tokens[:, 1:])
    module = LossModule([model])
    names = [n for n, _ in module.named_parameters()]
    fn = SubstitutedLoss(module, names, lm_loss, batch)
    n_params = sum(p.numel() for p in model.parameters())
    x = V.random_like_params(fn.params, names, seed=0)

    def fwd_bwd() -> None:
        model.zero_grad()
        lm_loss([model], batch).backward()

    t_fb = median_time(fwd_bwd)

    def autograd_k(k: int) -> Callable[[], None]:
        def go() -> None:
            op = AutogradHVP(fn)
            for _ in range(k):
                op(x)
            op.release()
        return go

    t1, t5 = median_time(autograd_k(1)), median_time(autograd_k(5))
    fd = FiniteDifferenceHVP(fn, 1e-3, relative=True)
    t_fd = median_time(lambda: fd(x))
    print(f"params {n_params}, forward+backward {t_fb * 1e3:.1f} ms")
    print(f"autograd: 1 HVP (incl. forward + graph) {t1 / t_fb:.2f}x, 5 HVPs {t5 / t_fb:.2f}x "
          f"(marginal {(t5 - t1) / 4 / t_fb:.2f}x per HVP)")
    print(f"finite difference: {t_fd / t_fb:.2f}x per HVP, 5 HVPs {5 * t_fd / t_fb:.2f}x")

    exact_op = AutogradHVP(fn)
    top = lanczos(exact_op, x, 40, 1e-7).vector
    for label, v in (("random", V.normalize(x)), ("top eigvec", top)):
        ref = exact_op(v)
        row = []
        for eps in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2):
            approx = FiniteDifferenceHVP(fn, eps, relative=True)(v)
            row.append(f"{eps:g}: {V.norm(V.add(approx, ref, -1.0)) / V.norm(ref):.1e}")
        print(f"FD error vs autograd ({label}, eps relative to ||θ||={V.norm(fn.params):.1f}): "
              + ", ".join(row))
    exact_op.release()


if __name__ == "__main__":
    main()
