"""λmax(G) (Adam's preconditioned Hessian) and lr·λ over the start of training, for several depths.

Trains llama3 research flavors (default depth4, depth8, depth16: dim 128, depth varies) with the
project's ``Trainer`` (single process, CPU fp32, built-in corpus) at one peak LR with linear LR
warmup then cosine decay, with ``[curvature]`` on: the trainer's own tracker hook, here with
``method = "lanczos"``, ``max_hvps`` 10 and ``tol`` 1e-4 so each point is close to converged
(warm-started from the previous tracked step). Reads ``lambda_max``/``lr_lambda`` from each run's
metrics.jsonl and writes a plot and a markdown table.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/curvature_vs_depth.py   # ~6 min per flavor on a shared core
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from curvature_common import REPO, SHARED_NOTE, quantile, run_config, set_threads
from titanwarm.trainer import Trainer

FLAVOR_PARAMS = {"depth4": 2.88, "depth8": 3.67, "depth16": 5.25}
"""Millions of parameters with the 8k tokenizer (only for --dumps re-reports)."""


def records(dump: Path) -> list[dict]:
    recs = [json.loads(x) for x in (dump / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "step" and "lambda_max" in r]


def run(flavor: str, args) -> tuple[list[dict], float, float]:
    if args.dumps:  # re-report finished runs (same order as --flavors)
        dump = Path(args.dumps.split(",")[args.flavors.split(",").index(flavor)])
        return records(dump), FLAVOR_PARAMS.get(flavor, float("nan")), float("nan")
    dump = Path(tempfile.mkdtemp(prefix=f"curv_depth_{flavor}_"))
    print(f"{flavor}: dump folder {dump}", flush=True)
    extra = ["--curvature.enabled", "true", "--curvature.interval", str(args.interval),
             "--curvature.method", args.method, "--curvature.max_hvps", str(args.max_hvps),
             "--curvature.tol", str(args.tol), "--metrics.log_freq", str(args.interval)]
    cfg, _ = run_config(flavor, args.seq_len, args.batch, args.steps, dump, args.lr, args.warmup,
                        extra=extra)
    tr = Trainer(cfg)
    t0 = time.perf_counter()
    tr.train()
    wall = time.perf_counter() - t0
    return records(dump), tr.n_params / 1e6, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavors", default="depth4,depth8,depth16")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--method", default="lanczos")
    ap.add_argument("--max-hvps", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "curvature_vs_depth"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dumps", default="", help="comma-separated dump folders of finished runs (one per "
                    "flavor): re-write the plot and table from their metrics.jsonl without training")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    flavors = args.flavors.split(",")
    results = {}
    for fl in flavors:
        results[fl] = run(fl, args)
        recs = results[fl][0]
        peak = max(recs, key=lambda r: r["lambda_max"])
        print(f"{fl}: {len(recs)} tracked steps, peak λmax(G) {peak['lambda_max']:.4g} at step "
              f"{peak['step']}, wall {results[fl][2]:.0f} s", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for fl in flavors:
        recs = results[fl][0]
        s = [r["step"] for r in recs]
        axes[0].plot(s, [r["lambda_max"] for r in recs], marker=".", label=fl)
        axes[1].plot(s, [r["lr_lambda"] for r in recs], marker=".", label=fl)
    thr = results[flavors[0]][0][0]["stability_threshold"]
    axes[1].axhline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:g}")
    for ax in axes:
        ax.axvline(args.warmup, color="grey", ls=":", lw=1, label="end of LR warmup")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("λmax(G)")
    axes[1].set_ylabel("lr · λmax(G)")
    axes[0].legend()
    axes[1].legend(fontsize=8)
    fig.suptitle(f"llama3 depth flavors, AdamW lr {args.lr:g} (warmup {args.warmup}), batch "
                 f"{args.batch}x{args.seq_len}, CPU fp32")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)

    argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--dumps" and (i == 0 or sys.argv[i] != "--dumps")]
    cmd = ("OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/curvature_vs_depth.py "
           + " ".join(shlex.quote(a) for a in argv)).strip()
    marks = sorted({r["step"] for r in results[flavors[0]][0]}
                   & {10, 20, 30, 50, 80, 100, 150, 200, 300, 400, 500})
    lines = [f"# Curvature vs depth", "",
             f"Command: `{cmd}`", "",
             f"llama3 flavors {', '.join(flavors)} (dim 128, 4 heads), AdamW lr {args.lr:g}, β=(0.9, 0.95), "
             f"wd 0.1, linear warmup {args.warmup} steps then cosine decay, {args.steps} steps, batch "
             f"{args.batch}×{args.seq_len} tokens, built-in corpus, seed 0, CPU fp32, {threads} thread(s). "
             f"λmax(G) by the trainer's `[curvature]` hook every {args.interval} steps: {args.method}, "
             f"max_hvps {args.max_hvps}, tol {args.tol:g}, warm start, on the step's training batch. "
             f"Plot: `{out.with_suffix('.png').name}`.", "",
             "λmax(G) at selected steps:", "",
             "| flavor | params (M) | " + " | ".join(f"step {s}" for s in marks)
             + f" | median λmax, steps ≤ {args.warmup} (warmup) | median λmax, later | peak λmax (step) "
             "| peak lr·λ (step) | max ratio lr·λ/38 | median / max residual |",
             "|" + "---|" * (len(marks) + 8)]
    for fl in flavors:
        recs, m, wall = results[fl]
        by = {r["step"]: r for r in recs}
        pk = max(recs, key=lambda r: r["lambda_max"])
        pl = max(recs, key=lambda r: r["lr_lambda"])
        cells = [f"{by[s]['lambda_max']:.3g}" for s in marks]
        early = [r["lambda_max"] for r in recs if r["step"] <= args.warmup]
        late = [r["lambda_max"] for r in recs if r["step"] > args.warmup]
        res = [r["tracker_residual"] for r in recs]
        lines.append(f"| {fl} | {m:.2f} | " + " | ".join(cells)
                     + f" | {quantile(early, 0.5):.3g} | {quantile(late, 0.5):.3g} "
                     f"| {pk['lambda_max']:.3g} ({pk['step']}) | {pl['lr_lambda']:.3g} ({pl['step']}) "
                     f"| {max(r['stability_ratio'] for r in recs):.2f} | "
                     f"{quantile(res, 0.5):.1e} / {max(res):.1e} |")
    walls = [results[fl][2] for fl in flavors]
    if all(w == w for w in walls):
        lines += ["", "Wall time per run (s): " + ", ".join(f"{fl} {w:.0f}" for fl, w in zip(flavors, walls))
                  + f"; {SHARED_NOTE}."]
    lines += [""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
