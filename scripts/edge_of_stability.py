"""Full-batch edge of stability (issue 17, experiment 1): does lr * lambda_max(G) rise to Adam's
threshold (2 + 2 beta1) / (1 - beta1) = 38 and hover there (Cohen et al. 2022, arXiv 2207.14484)?

Grid: ``train_configs/repro/eos_fullbatch.toml`` (the same 32 x 64-token batch every step, Adam,
no weight decay, no clipping, 20 LR warm-up steps then a constant LR, lambda_max(G) tracked every
step by the warm-started tracker) x depth (flavors w64_depth4/8/16, d=64) x beta2 x peak LR. Each
run also gets a *cold* high-precision check every ``--cold-every`` steps: a fresh random start and
``--cold-hvps`` Lanczos HVPs (``scripts/instability_probe.py``; logged as ``cold_lambda_max``), to
see whether the few-HVP warm estimate follows the truth (the cold solve always uses exact autograd
HVPs). The warm tracker uses the config's finite-difference HVPs (two gradient passes each);
``--hvp autograd`` reruns a grid point with exact double-backward HVPs for the warm tracker too, into
``outputs/eos_autograd/`` and ``instability_eos_ratio_autograd.png`` (training is unchanged: the
tracker does not touch the update).

**Adam's bias correction.** The update is lr * m_hat / (sqrt(v_hat) + eps) with
m_hat = m / (1 - beta1^t): early on the momentum buffer is scaled up by 1 / (1 - beta1^t), so the
linearised iteration is that of a step lr / (1 - beta1^t), and the threshold on lr * lambda_max(G)
is 38 (1 - beta1^t) (0.88 x 38 at t = 20, the end of LR warm-up; > 0.99 x 38 from t = 44). The
report shows lr * lambda / 38 and this effective threshold; ``ratio_eff`` divides by it.

Runs go to ``outputs/eos/L<depth>_b2<beta2>_lr<lr>/`` (metrics.jsonl, train.log, run.json); a run
with a run.json is skipped, so the script is resumable. Usage:

    .venv/bin/python scripts/edge_of_stability.py --jobs 2 --nice 15         # run the grid, then report
    .venv/bin/python scripts/edge_of_stability.py --report-only               # tables + plots
    .venv/bin/python scripts/edge_of_stability.py --hvp autograd --depths 4 --lrs 1e-3 # exact warm HVPs
    .venv/bin/python scripts/edge_of_stability.py --depths 4 --beta2s 0.999 --lrs 1e-2 --steps 20 \\
        --out /tmp/eos_probe                                                  # a timing probe

The report (markdown on stdout, PNGs in docs/results/) is pasted into docs/results/instability.md.
Runs still in progress (metrics.jsonl but no run.json) are included and marked as running.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_runner import (ROOT, Run, crashed, finite, minutes, pyplot, read_records, relative,  # noqa: E402
                          run_pending, save_figure, sync_archive)

CONFIG = "train_configs/repro/eos_fullbatch.toml"
DEPTHS = [4, 8, 16]
BETA2S = [0.999, 0.95]
LRS = [1e-3, 3e-3, 1e-2, 3e-2]
STEPS = 500
BETA1 = 0.9
WARMUP = 20
HVPS = ("finite_difference", "autograd")
"""The warm tracker's HVP (``[curvature] hvp``); the first is the config's."""
THRESHOLD = (2 + 2 * BETA1) / (1 - BETA1)


def fmt(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def run_dir(out: Path, depth: int, beta2: float, lr: float) -> Path:
    return out / f"L{depth}_b2{beta2:g}_lr{fmt(lr)}"


def child_command(python: str, depth: int, beta2: float, lr: float, steps: int, folder: Path,
                  cold_every: int, cold_hvps: int, hvp: str = HVPS[0]) -> list[str]:
    return [python, "scripts/instability_probe.py", "--cold-every", str(cold_every),
            "--cold-hvps", str(cold_hvps), "--", "--config", CONFIG,
            "--model.flavor", f"w64_depth{depth}", "--optimizer.beta2", repr(beta2),
            "--optimizer.lr", repr(lr), "--training.steps", str(steps),
            "--job.dump_folder", relative(folder)] + (["--curvature.hvp", hvp] if hvp != HVPS[0] else [])


def grid_runs(python: str, grid: list[tuple[int, float, float]], out: Path, steps: int, cold_every: int,
              cold_hvps: int, hvp: str = HVPS[0]) -> list[Run]:
    """The grid's runs, shallow and low-LR first (the cheapest complete picture arrives earliest).
    The metadata's ``hvp`` is None for the config's HVP: runs made before ``--hvp`` existed have no
    such key (read as None), so they still match and are reused, while an autograd run is never
    taken for a finite-difference one, or the other way round."""
    return [Run(run_dir(out, d, b, lr),
                child_command(python, d, b, lr, steps, run_dir(out, d, b, lr), cold_every, cold_hvps, hvp),
                {"depth": d, "beta2": b, "lr": lr, "steps": steps, "hvp": hvp if hvp != HVPS[0] else None})
            for d, b, lr in sorted(grid, key=lambda x: (x[0], -x[1], x[2]))]


# ---------------------------------------------------------------------------------- analysis
def analyse(folder: Path) -> dict | None:
    import json

    sync_archive(folder)
    meta_path = folder / "run.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if crashed(folder, meta):
            return None
    elif (folder / "metrics.jsonl").exists():  # still running (or interrupted): reported as such
        meta = {"returncode": None, "elapsed_s": None}
    else:
        return None
    steps = read_records(folder)
    loss = [(r["step"], r["loss"]) for r in steps]
    lr_lambda = [(r["step"], r["lr_lambda"]) for r in steps if finite(r.get("lr_lambda"))]
    lr_of = {r["step"]: r["lr"] for r in steps}
    cold = [(r["step"], r["cold_lambda_max"], r.get("lambda_max"), r.get("cold_residual"))
            for r in steps if finite(r.get("cold_lambda_max"))]
    bad = [s for s, l in loss if not finite(l)]
    init_loss = loss[0][1] if loss else math.nan
    final = statistics.mean(l for _, l in loss[-10:]) if loss and not bad else math.nan
    last = loss[-1][0] if loss else 0
    running = meta["returncode"] is None
    diverged = bool(bad) or (not running and (meta["returncode"] != 0 or not final < init_loss))
    after = [(s, v / THRESHOLD) for s, v in lr_lambda if s > 2 * WARMUP]
    half = [v for s, v in after if s > last / 2]
    eff = [(s, v / (THRESHOLD * (1 - BETA1 ** s))) for s, v in lr_lambda]
    return {
        **meta, "loss": loss, "lr_lambda": lr_lambda, "lr": lr_of, "cold": cold, "diverged": diverged,
        "init_loss": init_loss, "final_loss": final, "last_step": last, "running": running,
        "first_cross": next((s for s, v in eff if v >= 1), None),
        "median_late": statistics.median(half) if half else math.nan,
        "frac_above": sum(v >= 1 for _, v in after) / len(after) if after else math.nan,
        "max_ratio": max((v for _, v in after), default=math.nan),
        "cold_err": statistics.median(abs(w - c) / abs(c) for _, c, w, _ in cold if finite(w) and c)
        if cold else math.nan,
    }


def g(x, spec: str = ".3g") -> str:
    return format(x, spec) if finite(x) else "n/a"


def table(results: dict) -> list[str]:
    lines = ["| depth | β2 | peak LR | steps run | diverged? | loss: init → final | first step with lr·λ ≥ 38(1−β1^t) "
             "| median lr·λ/38, 2nd half of the steps run | share of steps > 40 with lr·λ/38 ≥ 1 | max lr·λ/38 (step > 40) "
             "| warm vs cold λ: median rel. diff (n) | wall / CPU time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (depth, beta2, lr), r in sorted(results.items()):
        lines.append(
            f"| {depth} | {beta2:g} | {fmt(lr)} | {r['last_step']} "
            f"| {'yes' if r['diverged'] else 'not yet (running)' if r['running'] else 'no'} "
            f"| {g(r['init_loss'], '.2f')} → {g(r['final_loss'], '.3f')} | {r['first_cross'] or '-'} "
            f"| {g(r['median_late'])} | {g(100 * r['frac_above'], '.0f')} % | {g(r['max_ratio'])} "
            f"| {g(r['cold_err'], '.2g')} ({len(r['cold'])}) | {minutes(r)} |")
    return lines


def plot(results: dict, depths: list[int], beta2s: list[float], lrs: list[float], path: Path,
         what: str, hvp: str = HVPS[0]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(beta2s), len(depths), figsize=(5 * len(depths), 3.8 * len(beta2s)),
                             squeeze=False, sharey=True)
    colors = dict(zip(lrs, plt.cm.viridis([0.0, 0.33, 0.66, 0.9])))
    for i, beta2 in enumerate(beta2s):
        for j, depth in enumerate(depths):
            ax = axes[i][j]
            steps_max = 0
            for lr in lrs:
                r = results.get((depth, beta2, lr))
                if r is None:
                    continue
                if what == "ratio":
                    xs = [s for s, _ in r["lr_lambda"]]
                    ax.plot(xs, [v / THRESHOLD for _, v in r["lr_lambda"]], color=colors[lr], lw=0.8,
                            label=f"lr {fmt(lr)}")
                    ax.plot([s for s, *_ in r["cold"]], [r["lr"][s] * c / THRESHOLD for s, c, *_ in r["cold"]],
                            "o", mfc="none", color=colors[lr], ms=4)
                else:
                    ax.plot([s for s, _ in r["loss"]], [l for _, l in r["loss"]], color=colors[lr], lw=0.8,
                            label=f"lr {fmt(lr)}" + (" (diverged)" if r["diverged"] else ""))
                steps_max = max(steps_max, r["last_step"])
            if what == "ratio" and steps_max:
                t = range(1, steps_max + 1)
                ax.plot(t, [1 - BETA1 ** s for s in t], "k--", lw=1, label="38(1−β1^t)/38")
                ax.set_ylim(1e-2, 1e4)  # the spikes reach ~4e3
            ax.set_yscale("log")
            ax.set_title(f"L={depth}, β2={beta2:g}")
            ax.set_xlabel("step")
            if j == 0:
                ax.set_ylabel("lr·λmax(G) / 38" if what == "ratio" else "train loss (the fixed batch)")
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "not run yet", transform=ax.transAxes, ha="center")
    title = "Full-batch Adam, d=64: " + (f"lr·λmax(G)/38 (lines: warm-started tracker every step, "
                                          f"{hvp.replace('_', '-')} HVPs; circles: cold high-precision "
                                          "Lanczos, autograd HVPs)" if what == "ratio"
                                          else "training loss on the fixed batch")
    fig.suptitle("\n".join(textwrap.wrap(title, 60 * len(depths))))  # one line per ~5 inches of figure
    save_figure(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=DEPTHS)
    p.add_argument("--beta2s", type=float, nargs="+", default=BETA2S)
    p.add_argument("--lrs", type=float, nargs="+", default=LRS)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--cold-every", type=int, default=50)
    p.add_argument("--cold-hvps", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (each single-threaded)")
    p.add_argument("--nice", type=int, default=0, help="run the children under nice -n N")
    p.add_argument("--hvp", choices=HVPS, default=HVPS[0],
                   help="the warm tracker's HVP; autograd runs go to outputs/eos_autograd by default")
    p.add_argument("--out", default=None, help="run folder (default outputs/eos or outputs/eos_autograd)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    exact = args.hvp != HVPS[0]
    out = Path(args.out) if args.out else ROOT / "outputs" / ("eos_autograd" if exact else "eos")
    grid = [(d, b, lr) for b in args.beta2s for d in args.depths for lr in args.lrs]
    if not args.report_only:
        run_pending(grid_runs(args.python, grid, out, args.steps, args.cold_every, args.cold_hvps, args.hvp),
                    args.jobs, args.nice)
    results = {k: r for k in grid if (r := analyse(run_dir(out, *k))) is not None}
    if not results:
        print("no finished runs", file=sys.stderr)
        return 1
    outdir = ROOT / "docs" / "results"
    suffix = "_autograd" if exact else ""
    plot(results, args.depths, args.beta2s, args.lrs, outdir / f"instability_eos_ratio{suffix}.png", "ratio",
         args.hvp)
    if not exact:  # the training (and so the loss) is the same whichever HVP the tracker uses
        plot(results, args.depths, args.beta2s, args.lrs, outdir / "instability_eos_loss.png", "loss")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
