"""How accurate is the warm-started ("hot") curvature tracker after k HVPs, against a cold start?

Trains a llama3 research flavor with the project's ``Trainer`` (single process, CPU fp32, built-in
corpus) and, after the optimizer step of every ``--interval``-th step (on that step's training
batch, as ``[curvature] batch = "train"`` does; ``--fixed-batch``: one held-out batch, as
``batch = "fixed"``), estimates λmax(G) (G = P^-1/2 H P^-1/2, Adam's
preconditioned Hessian) with:

* **hot start**: one ``CurvatureTracker`` per (method, k), ``warm_start=True``, ``max_hvps=k``,
  ``tol=0`` (exactly k HVPs). Each tracker's start vector is its own previous solve's vector (with
  the same k), transported by P_new^1/2 P_old^-1/2 (stored as z = P_old^-1/2 u): the chain a training run with that setting has.
* **cold start**: ``warm_start=False`` (a fresh random unit vector each tracked step), max(k) HVPs, tol 0.
  The estimate after fewer HVPs is read off the same solve (a power iterate / the Ritz value of the
  first k Lanczos vectors): exactly what a separate ``max_hvps=k`` solve from that vector returns.
* **reference**: a warm-started Lanczos tracker with up to ``--ref-hvps`` (100) HVPs and relative
  Ritz residual tolerance ``--ref-tol`` (1e-6); its HVP counts and residuals are printed.

Relative error = |λ_k - λ_ref| / λ_ref, median and p90 over the tracked steps after the first (at
the first tracked step every chain starts cold).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/curvature_accuracy.py   # 6-9 min on a shared core (8 tracked steps)
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch

from curvature_common import SHARED_NOTE, quantile, run_config, set_threads, tracker_loss_fn
from titanwarm.curvature import CurvatureTracker
from titanwarm.curvature import vectors as V
from titanwarm.trainer import Trainer

KS = (1, 2, 3, 5, 10, 20)
METHODS = ("power", "lanczos")


class Recorder:
    """Wraps the solver's operator and records (input, output) pairs, so that the estimate after
    the first k applications can be recomputed: power iteration's k-th Rayleigh quotient, or the
    top eigenvalue of Q_k^T A Q_k for Lanczos (Q_k = its first k orthonormal Krylov vectors)."""

    def __init__(self, op) -> None:
        self.op, self.ins, self.outs = op, [], []

    def __call__(self, x):
        y = self.op(x)
        self.ins.append(V.clone(x))  # copies: the solvers update their vectors in place
        self.outs.append(V.clone(y))
        return y

    def prefix_estimates(self, method: str) -> list[float]:
        if method == "power":  # inputs are unit vectors
            return [float(V.dot(x, y)) for x, y in zip(self.ins, self.outs)]
        n = len(self.ins)
        t = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for j in range(i, n):
                t[i, j] = t[j, i] = float(V.dot(self.ins[i], self.outs[j]))
        t = (t + t.T) / 2
        return [float(torch.linalg.eigvalsh(t[:k, :k])[-1]) for k in range(1, n + 1)]


class RecordingTracker(CurvatureTracker):
    """A tracker whose last solve's operator applications are kept (for the cold-start prefixes)."""

    def _solve(self, op, u0, agree):
        self.recorder = Recorder(op)
        return super()._solve(self.recorder, u0, agree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", default="depth8")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--interval", type=int, default=10, help="track every N steps (default = [curvature] interval)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--hvp", default="autograd", choices=["autograd", "finite_difference"])
    ap.add_argument("--ref-hvps", type=int, default=100)
    ap.add_argument("--ref-tol", type=float, default=1e-6)
    ap.add_argument("--fixed-batch", action="store_true",
                    help='measure on one held-out batch at every tracked step ([curvature] batch = "fixed") '
                    "instead of the step's training batch")
    ap.add_argument("--ks", default=",".join(map(str, KS)),
                    help="HVP budgets to report (comma-separated; the cold solve runs the largest)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="solvers to measure (comma-separated subset of power,lanczos)")
    ap.add_argument("--min-v-hat-ratio", type=float, default=0.0,
                    help="[curvature] min_v_hat_ratio of every tracker (0: the full G)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    ks = tuple(int(k) for k in args.ks.split(","))
    methods = tuple(m for m in args.methods.split(","))
    if not methods or any(m not in METHODS for m in methods):
        ap.error(f"--methods: a comma-separated subset of {','.join(METHODS)}")
    threads = set_threads(args.threads)
    dump = tempfile.mkdtemp(prefix="curv_acc_")
    cfg, _ = run_config(args.flavor, args.seq_len, args.batch, args.steps, dump, args.lr, args.warmup)
    trainer = Trainer(cfg)
    loss_fn = tracker_loss_fn(trainer)
    common = dict(hvp=args.hvp, seed=cfg.job.seed, min_v_hat_ratio=args.min_v_hat_ratio)
    hot = {(m, k): CurvatureTracker(trainer.model_parts, trainer.optimizer, method=m, max_hvps=k,
                                    tol=0.0, warm_start=True, **common)
           for m in methods for k in ks}
    cold = {m: RecordingTracker(trainer.model_parts, trainer.optimizer, method=m, max_hvps=max(ks),
                                tol=0.0, warm_start=False, **common) for m in methods}
    ref_tracker = CurvatureTracker(trainer.model_parts, trainer.optimizer, method="lanczos",
                                   max_hvps=args.ref_hvps, tol=args.ref_tol, warm_start=True, **common)
    fixed = next(iter(trainer.val_loader.batches(1))) if args.fixed_batch else None
    rows: list[dict] = []
    t_track = 0.0

    def track(tr: Trainer) -> None:
        nonlocal t_track
        if tr.step % args.interval:
            return
        t0 = time.perf_counter()
        batch = fixed if fixed is not None else tr.batch
        ref = ref_tracker.step(loss_fn, batch)
        row = {"step": tr.step, "lr": tr.lr, "ref": ref.lambda_max, "ref_hvps": ref.hvps,
               "ref_res": ref.residual}
        for (m, k), t in hot.items():
            row[("hot", m, k)] = t.step(loss_fn, batch).lambda_max
        for m, t in cold.items():
            t.step(loss_fn, batch)
            est = t.recorder.prefix_estimates(m)
            for k in ks:
                row[("cold", m, k)] = est[k - 1]
        rows.append(row)
        t_track += time.perf_counter() - t0
        hot_cells = "  ".join(f"hot {m} k={k} {row[('hot', m, k)]:10.4g}"
                              for m in methods for k in ks if k in (3, 5))
        print(f"step {tr.step:4d}  lr {tr.lr:.2e}  λmax(G) ref {ref.lambda_max:10.4g} "
              f"(lr·λ {tr.lr * ref.lambda_max:6.3g}; {ref.hvps} HVPs, residual {ref.residual:.1e})  "
              f"{hot_cells}", flush=True)

    trainer.add_hook("after_optimizer_step", track)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0

    stats = rows[1:]
    print(f"\n{args.flavor}, seq {args.seq_len}, batch {args.batch}, {args.steps} steps, AdamW lr "
          f"{args.lr:g} (warmup {args.warmup}), tracked every {args.interval} steps on "
          f"{'one fixed held-out' if fixed is not None else 'the training'} batch; hvp={args.hvp}, "
          f"min_v_hat_ratio={args.min_v_hat_ratio:g}, CPU fp32, {threads} thread(s).")
    print(f"reference: warm Lanczos, ≤{args.ref_hvps} HVPs, tol {args.ref_tol:g}: HVPs used "
          f"{min(r['ref_hvps'] for r in rows)}–{max(r['ref_hvps'] for r in rows)}, residual ≤ "
          f"{max(r['ref_res'] for r in rows):.1e}; λmax(G) range {min(r['ref'] for r in rows):.4g}–"
          f"{max(r['ref'] for r in rows):.4g}")
    print(f"relative error |λ_k − λ_ref| / λ_ref over {len(stats)} tracked steps "
          f"({stats[0]['step']}–{stats[-1]['step']}; the first tracked step, cold for every chain, excluded)\n")
    header = "| start | method | " + " | ".join(f"k={k}" for k in ks) + " |"
    print(header)
    print("|" + "---|" * (2 + len(ks)))
    for start in ("hot", "cold"):
        for m in methods:
            cells = []
            for k in ks:
                errs = [abs(r[(start, m, k)] - r["ref"]) / abs(r["ref"]) for r in stats]
                cells.append(f"{quantile(errs, 0.5):.1e} / {quantile(errs, 0.9):.1e}")
            print(f"| {start} | {m} | " + " | ".join(cells) + " |")
    print("\ncells: median / p90 relative error.")
    hot3 = min(quantile([abs(r[('hot', m, 3)] - r['ref']) / r['ref'] for r in stats], 0.5) for m in methods)
    kmax = max(ks)
    cold20 = min(quantile([abs(r[('cold', m, kmax)] - r['ref']) / r['ref'] for r in stats], 0.5) for m in methods)
    hot_best = min(methods, key=lambda m: quantile([abs(r[('hot', m, 3)] - r['ref']) / r['ref'] for r in stats], 0.5))
    print(f"target hot start ≤1% median error at 3 HVPs: best hot k=3 median {hot3:.1e} ({hot_best}) -> "
          f"{'met' if hot3 <= 1e-2 else 'NOT met'}; cold start at {kmax} HVPs still worse than hot at 3: "
          f"best cold k={kmax} median {cold20:.1e} -> {'yes' if cold20 > hot3 else 'no'}")
    print(f"wall {wall:.0f} s ({t_track:.0f} s in the estimates); {SHARED_NOTE}.")
    if any(not math.isfinite(r["ref"]) for r in rows):
        print("warning: non-finite reference values")


if __name__ == "__main__":
    main()
