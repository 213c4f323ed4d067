"""Cost of the curvature tracker on the project's Llama: one HVP vs one training forward+backward,
per ``hvp`` method, and the whole-run overhead of ``[curvature]`` at its default settings.

1. Per-HVP cost. A ``Trainer`` (llama3 ``--flavor``, single process, CPU fp32, built-in corpus) takes
   a few steps (so Adam state exists), then on one training batch we time (all items in turn,
   ``--repeats`` rounds, the fastest of each kept): the training forward+backward (``forward_loss`` + ``backward``, fused SDPA, as in a step); for
   ``autograd``: the graph build (forward under math SDPA + ``autograd.grad(create_graph=True)``)
   and each further HVP (a second backward through the retained graph); for
   ``finite_difference``: one HVP (two first-order gradients); and a whole ``tracker.step``
   (Lanczos, ``tol=0``) with 3 and 5 autograd HVPs and with 5 finite-difference HVPs. All on the
   same batch (``--batch`` sequences), so the ratios are per batch.
2. Whole-run overhead. ``Trainer.train()`` for ``--run-steps`` steps without and with
   ``--curvature.enabled true --curvature.interval 10`` (everything else default: Lanczos,
   max_hvps 5, tol 1e-3, hvp auto -> autograd, dtype float32, the default ``batch_size``
   sub-batch), alternated ``--rounds`` times; the fastest wall time of each is compared.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/bench_tracker.py     # ~3-4 min on a shared core
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from curvature_common import SHARED_NOTE, run_config, set_threads, tracker_loss_fn
from titanwarm.curvature import Curvature, CurvatureTracker
from titanwarm.curvature import vectors as V
from titanwarm.curvature.hvp import AutogradHVP, FiniteDifferenceHVP, SubstitutedLoss
from titanwarm.trainer import Trainer


def interleaved_min(fns: dict, rounds: int) -> dict:
    """Time every callable once per round, in turn, for ``rounds`` rounds after one warm-up round;
    keep each one's fastest time (robust to other jobs on a shared machine, and every item sees
    the same load over time)."""
    best = {name: float("inf") for name in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r:
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def per_hvp(args) -> list[tuple[str, float]]:
    dump = tempfile.mkdtemp(prefix="bench_hvp_")
    cfg, _ = run_config(args.flavor, args.seq_len, args.batch, 1000, dump)
    tr = Trainer(cfg)
    for _ in range(3):
        tr.step += 1
        tr.train_step()
    batch = tr.batch
    loss_fn = tracker_loss_fn(tr)

    def fwd_bwd() -> None:
        tr.optimizer.zero_grad(set_to_none=True)
        tr.forward_loss(*batch).backward()
        tr.optimizer.zero_grad(set_to_none=True)

    probe = CurvatureTracker(tr.model_parts, tr.optimizer)
    names, params = probe.tracked()
    fn = SubstitutedLoss(probe.module, names, loss_fn, batch)
    x = V.random_like_params(params, names, seed=0)

    def ag(k: int):
        def go() -> None:
            op = AutogradHVP(fn)
            for _ in range(k):
                op(x)
            op.release()
        return go

    fd = FiniteDifferenceHVP(fn, 1e-4, relative=True)
    trackers = {(hvp, k): CurvatureTracker(tr.model_parts, tr.optimizer, max_hvps=k, tol=0.0,
                                           hvp=hvp)
                for hvp, k in (("autograd", 3), ("autograd", 5), ("finite_difference", 5))}
    best = interleaved_min({"fb": fwd_bwd, "ag1": ag(1), "ag5": ag(5), "fd": lambda: fd(x),
                            "tr_ag3": lambda: trackers["autograd", 3].step(loss_fn, batch),
                            "tr_ag": lambda: trackers["autograd", 5].step(loss_fn, batch),
                            "tr_fd": lambda: trackers["finite_difference", 5].step(loss_fn, batch)},
                           args.repeats)
    t_fb = best["fb"]
    rows = [("training forward+backward (fused SDPA)", t_fb),
            ("autograd: graph build + 1st HVP", best["ag1"]),
            ("autograd: each further HVP (marginal, from 5 vs 1)", (best["ag5"] - best["ag1"]) / 4),
            ("autograd: 5 HVPs in all", best["ag5"]),
            ("finite_difference: 1 HVP", best["fd"]),
            ("finite_difference: 5 HVPs (5 x 1)", 5 * best["fd"]),
            ("tracker.step, autograd, 3 HVPs (Lanczos), incl. P and vector work", best["tr_ag3"]),
            ("tracker.step, autograd, 5 HVPs (Lanczos), incl. P and vector work", best["tr_ag"]),
            ("tracker.step, finite_difference, 5 HVPs (Lanczos), incl. P and vector work",
             best["tr_fd"])]
    return rows, t_fb, sum(p.numel() for p in params)


def whole_run(args) -> tuple[dict, list[float]]:
    best = {"off": float("inf"), "on": float("inf")}
    hvps: list[float] = []
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            dump = Path(tempfile.mkdtemp(prefix=f"bench_run_{mode}_"))
            extra = (["--curvature.enabled", "true", "--curvature.interval", "10"]
                     if mode == "on" else [])
            cfg, _ = run_config(args.flavor, args.seq_len, args.batch, args.run_steps, dump, extra=extra)
            tr = Trainer(cfg)
            t0 = time.perf_counter()
            tr.train()
            best[mode] = min(best[mode], time.perf_counter() - t0)
            if mode == "on":
                recs = [json.loads(x) for x in (dump / "metrics.jsonl").read_text().splitlines()]
                hvps = [r["hvps"] for r in recs if r.get("kind") == "step" and "hvps" in r]
    return best, hvps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", default="depth8")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    ap.add_argument("--run-steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    rows, t_fb, n = per_hvp(args)
    print(f"llama3/{args.flavor}, {n / 1e6:.2f}M tracked params, batch {args.batch} x {args.seq_len} "
          f"tokens, CPU fp32, {threads} thread(s); fastest of {args.repeats} interleaved rounds\n")
    print("| what | time (ms) | × training fwd+bwd |\n|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t * 1e3:.0f} | {t / t_fb:.2f} |")
    best, hvps = whole_run(args)
    added = 100 * (best["on"] / best["off"] - 1)
    print(f"\nwhole run, {args.run_steps} steps, fastest of {args.rounds} alternated runs each:\n")
    print("| run | wall (s) | added |\n|---|---|---|")
    print(f"| no [curvature] | {best['off']:.1f} | |")
    print(f"| [curvature] enabled, interval 10 (Lanczos, max_hvps 5, tol 1e-3, autograd, batch_size "
          f"{Curvature().batch_size}) | "
          f"{best['on']:.1f} | {added:+.0f}% |")
    if hvps:
        print(f"\nHVPs per tracked step: {', '.join(str(int(h)) for h in hvps)} "
              f"({len(hvps)} tracked steps; fewer than 5 = the tol 1e-3 early stop)")
    print(f"targets: marginal HVP ≤ 1.8× a fwd+bwd; tracked step with 3 HVPs ≤ 8×; tracking every "
          f"10 steps ≤ +10% of a run. {SHARED_NOTE}.")


if __name__ == "__main__":
    main()
