"""Wortsman-style LR sensitivity (issue 17, experiment 2): final loss vs peak LR for every arm.

Runs ``train_configs/repro/lr_sensitivity.toml`` (pre-norm Llama d=128, seq 128, 16 sequences per
step, 1,000 steps, 5% warm-up then cosine, AdamW (0.9, beta2), no weight decay, no clipping, no
z-loss, init 1/sqrt(fan_in), 1k tokenizer) through ``scripts/instability_probe.py`` (mechanism logs
every ``--probe-every`` steps) for every arm x depth x beta2 x LR x seed. The arms differ only by the
command-line overrides in ``ARMS``:

- ``baseline``; ``qk_norm``; ``softcap`` (attention 50, output logits 30, Gemma 2's values);
  ``qk_clip`` (tau 100, Kimi K2's);
- ``archwarm``: half the blocks active until the end of LR warm-up, then the locked half in 4
  groups, one every steps/20 steps (the paper: half depth until warm-up ends, then a group every
  500 steps; here all blocks are active by step warmup + 4 * steps/20 = 250 of 1,000);
- ``archwarm_qk_norm``: both.

Each run goes to ``<out>/<arm>/L<depth>_b2<beta2>_lr<lr>_s<seed>/``; a finished run (run.json) is
skipped, so it is resumable and can be run in slices. Per (arm, depth, beta2): final validation loss
vs LR, the LR-sensitivity metric (mean over the LR grid of min(loss, loss at init) - best loss,
Wortsman et al. 2023), the divergence fraction (runs stopped by non-finite losses, or whose final
loss is above the initial one) with the number of seeds, and the mechanism logs at the end of the
run; a second figure (``<plot>_curves.png``) draws the held-out probe loss vs step per LR, arms
overlaid. Usage:

    .venv/bin/python scripts/lr_sensitivity.py --jobs 2 --nice 15                   # everything
    .venv/bin/python scripts/lr_sensitivity.py --arms baseline archwarm --depths 16 --beta2s 0.95
    .venv/bin/python scripts/lr_sensitivity.py --report-only
    .venv/bin/python scripts/lr_sensitivity.py --arms baseline --depths 8 --lrs 1e-2 --steps 20 \\
        --out /tmp/lrs_probe                                                        # timing probe

**Data order.** Runs draw the built-in corpus in a seeded shuffled order (``[training] shuffle``),
seeded by the run's seed (``shuffle_seed`` = ``job.seed``), so every arm sees the same data order for
a given seed and data-driven loss jumps differ between seeds. Shuffled runs go to
``outputs/lrs_shuf`` (``DATA_TAG``), apart from the in-order runs made before the shuffle existed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_runner import (ROOT, Run, crashed, finite, minutes, pyplot, read_records, relative,  # noqa: E402
                          run_pending, save_figure, sync_archive)

CONFIG = "train_configs/repro/lr_sensitivity.toml"
DATA_OVERRIDES: list[str] = ["--training.shuffle", "true"]  # shuffle_seed follows the run's seed
DATA_TAG = "shuf"  # the shuffled runs get their own output folder
LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
DEPTHS = [8, 16]
BETA2S = [0.95, 0.999]
STEPS = 1000
PROBE_EVERY = 5  # fine enough for experiment 3's spike rule, so the baseline runs double as its calibration
QK_NORM = ["--stabilizers.qk_norm", "true"]


def archwarm(steps: int) -> list[str]:
    """Half depth until the end of LR warm-up, then 4 groups, one every steps/20 steps."""
    return ["--depth_schedule.enabled", "true", "--depth_schedule.initial_fraction", "0.5",
            "--depth_schedule.start", "warmup_end", "--depth_schedule.interval", str(max(1, steps // 20)),
            "--depth_schedule.group_size", "-1", "--depth_schedule.unlock_init", "noise"]


ARMS = {
    "baseline": lambda steps: [],
    "qk_norm": lambda steps: QK_NORM,
    "softcap": lambda steps: ["--stabilizers.attn_softcap", "50", "--stabilizers.logit_softcap", "30"],
    "qk_clip": lambda steps: ["--stabilizers.qk_clip", "true", "--stabilizers.qk_clip_tau", "100"],
    "archwarm": archwarm,
    "archwarm_qk_norm": lambda steps: archwarm(steps) + QK_NORM,
}
COLOURS = {a: f"C{i}" for i, a in enumerate(ARMS)}  # one colour per arm in every figure
LABELS = {"baseline": "baseline", "qk_norm": "QK-Norm", "softcap": "soft-cap (50 / 30)",
          "qk_clip": "QK-Clip (τ 100)", "archwarm": "arch. warm-up",
          "archwarm_qk_norm": "arch. warm-up + QK-Norm"}


def fmt(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+00", "")


def default_out(name: str) -> Path:
    return ROOT / "outputs" / (f"{name}_{DATA_TAG}" if DATA_TAG else name)


def run_dir(out: Path, arm: str, depth: int, beta2: float, lr: float, seed: int) -> Path:
    return out / arm / f"L{depth}_b2{beta2:g}_lr{fmt(lr)}_s{seed}"


def make_run(out: Path, python: str, arm: str, depth: int, beta2: float, lr: float, seed: int,
             steps: int, probe_every: int, extra: list[str] = ()) -> Run:
    """One run: the config, the arm's overrides, the grid point, the data overrides, and a
    description naming all of them (the run's banner and TensorBoard say which run it is)."""
    folder = run_dir(out, arm, depth, beta2, lr, seed)
    description = f"instability study: {LABELS[arm]}, L {depth}, beta2 {beta2:g}, LR {fmt(lr)}, seed {seed}"
    cmd = [python, "scripts/instability_probe.py", "--probe-every", str(probe_every), "--",
           "--config", CONFIG, *ARMS[arm](steps), *DATA_OVERRIDES, *extra, "--job.description", description,
           "--model.flavor", f"depth{depth}", "--optimizer.beta2", repr(beta2), "--optimizer.lr", repr(lr),
           "--job.seed", str(seed), "--training.shuffle_seed", str(seed), "--training.steps", str(steps),
           "--lr_scheduler.warmup_steps", str(max(1, steps // 20)), "--job.dump_folder", relative(folder)]
    return Run(folder, cmd, {"arm": arm, "depth": depth, "beta2": beta2, "lr": lr, "seed": seed,
                             "steps": steps, "probe_every": probe_every, "data": DATA_TAG or "in order"})


def analyse(folder: Path) -> dict | None:
    """Loss, divergence and mechanism summary of one finished run (None if not finished, or if it
    crashed: a non-zero exit without the trainer's stop on repeated non-finite losses is a bug,
    not a divergence, and is reported on stderr instead of counted)."""
    sync_archive(folder)
    if not (folder / "run.json").exists():
        return None
    meta = json.loads((folder / "run.json").read_text())
    if crashed(folder, meta):
        return None
    steps = read_records(folder)
    skips = read_records(folder, "skip")
    vals = [(r["step"], r["val_loss"]) for r in steps if "val_loss" in r]
    loss = [(r["step"], r["loss"]) for r in steps]
    init = vals[0][1] if vals else math.nan
    final = vals[-1][1] if vals and vals[-1][0] == meta["steps"] else math.nan
    diverged = meta["returncode"] != 0 or bool(skips) or not finite(final) or final > init
    probes = [r for r in steps if "probe_loss" in r]
    last = probes[-1] if probes else {}
    return {
        **meta, "records": steps, "loss": loss, "init_loss": init, "final_loss": final,
        "diverged": diverged, "probes": probes,
        "attn_logit_final": last.get("attn_logit_max", math.nan),
        "attn_logit_peak": max((r["attn_logit_max"] for r in probes if finite(r.get("attn_logit_max"))),
                               default=math.nan),
        "lse_peak": max((r["out_lse_max"] for r in probes if finite(r.get("out_lse_max"))), default=math.nan),
        "grad_rms_final": last.get("grad_rms", math.nan),
        "below_eps_final": last.get("grad_below_eps", math.nan),
    }


def sensitivity(losses: list[float], init: float) -> float:
    """Wortsman et al.'s LR sensitivity: mean over the grid of min(loss, init) - best (a diverged
    or missing point counts as the loss at init)."""
    capped = [min(l, init) if finite(l) else init for l in losses]
    return statistics.mean(capped) - min(capped)


def collect(out: Path, arms, depths, beta2s, lrs, seeds) -> dict:
    keys = [(a, d, b, lr, s) for a in arms for d in depths for b in beta2s for lr in lrs for s in seeds]
    return {k: r for k in keys if (r := analyse(run_dir(out, *k))) is not None}


def summary_table(results: dict, arms, depths, beta2s, lrs, seeds) -> list[str]:
    lines = ["| depth | β2 | arm | final val loss per LR (" + ", ".join(fmt(lr) for lr in lrs)
             + "); mean over seeds, × = all diverged, · = not run | LR sensitivity | diverged (runs) "
             "| best LR |", "|---|---|---|---|---|---|---|"]
    for d in depths:
        for b in beta2s:
            for a in arms:
                cells, point, ndiv, nrun, init = [], [], 0, 0, []
                for lr in lrs:
                    rs = [results[k] for s in seeds if (k := (a, d, b, lr, s)) in results]
                    nrun += len(rs)
                    ndiv += sum(r["diverged"] for r in rs)
                    init += [r["init_loss"] for r in rs if finite(r["init_loss"])]
                    ok = [r["final_loss"] for r in rs if not r["diverged"]]
                    point.append(statistics.mean(ok) if ok else (math.inf if rs else math.nan))
                    cells.append("·" if not rs else ("×" if not ok else f"{point[-1]:.3f}"))
                if not nrun:
                    continue
                complete = all(not math.isnan(x) for x in point)
                sens = sensitivity(point, statistics.mean(init)) if complete and init else math.nan
                best = min((x, lr) for x, lr in zip(point, lrs) if finite(x))[1] if any(
                    finite(x) for x in point) else None
                lines.append(f"| {d} | {b:g} | {LABELS[a]} | {' / '.join(cells)} "
                             f"| {'n/a (grid incomplete)' if math.isnan(sens) else f'{sens:.3f}'} "
                             f"| {ndiv}/{nrun} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''} per LR) "
                             f"| {fmt(best) if best else '-'} |")
    return lines


def mechanism_table(results: dict) -> list[str]:
    lines = ["| arm | depth | β2 | LR | seed | final val loss | max attn logit: final / peak | "
             "peak output logsumexp | grad RMS (final) | tensors with grad RMS < eps (final) | wall / CPU time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (a, d, b, lr, s), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0], kv[0][3])):
        lines.append(f"| {LABELS[a]} | {d} | {b:g} | {fmt(lr)} | {s} "
                     f"| {r['final_loss']:.3f}{' (diverged)' if r['diverged'] else ''} "
                     f"| {r['attn_logit_final']:.1f} / {r['attn_logit_peak']:.1f} | {r['lse_peak']:.1f} "
                     f"| {r['grad_rms_final']:.2e} | {100 * r['below_eps_final']:.0f}% | {minutes(r)} |")
    return lines


def panels(results: dict, depths, beta2s) -> list[tuple[int, float]]:
    """The (depth, beta2) pairs with at least one finished run, in grid order."""
    return [(d, b) for d in depths for b in beta2s if any(k[1:3] == (d, b) for k in results)]


def arm_legend(target, axes, arms, fontsize: int):
    """One legend on `target` naming each arm drawn in any of `axes` once, in the order of `arms`."""
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    order = [LABELS[a] for a in arms if LABELS[a] in handles]
    return target.legend([handles[label] for label in order], order, fontsize=fontsize)


def plot(results: dict, arms, depths, beta2s, lrs, seeds, path: Path) -> None:
    """Final val loss (top) and peak max attention logit (bottom) vs LR, a column per (depth, beta2);
    one legend naming every arm drawn in any panel."""
    cols = panels(results, depths, beta2s)
    plt = pyplot()
    fig, axes = plt.subplots(2, len(cols), figsize=(4.5 * len(cols), 7), squeeze=False)
    for col, (d, b) in enumerate(cols):
        top, bottom = axes[0][col], axes[1][col]
        for a in arms:
            xs, ys, att, lost = [], [], [], []
            for lr in lrs:
                rs = [results[k] for s in seeds if (k := (a, d, b, lr, s)) in results]
                if not rs:
                    continue
                ok = [r["final_loss"] for r in rs if not r["diverged"]]
                xs.append(lr)
                ys.append(statistics.mean(ok) if ok else math.nan)
                att.append(statistics.mean(r["attn_logit_peak"] for r in rs))
                if not ok:  # every seed diverged: drawn at the loss at init, as the metric counts it
                    lost.append((lr, statistics.mean(r["init_loss"] for r in rs)))
            if not xs:  # an arm not run in this panel gets no line, hence no legend entry
                continue
            top.plot(xs, ys, "o-", label=LABELS[a], ms=3, color=COLOURS[a])
            if lost:
                top.plot(*zip(*lost), "x", ms=8, mew=2, color=COLOURS[a])
            bottom.plot(xs, att, "o-", label=LABELS[a], ms=3, color=COLOURS[a])
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xlabel("peak LR")
        bottom.set_yscale("log")
        top.set_title(f"L={d}, β2={b:g}")
        top.set_ylabel("final val loss (× = diverged, at init loss)")
        bottom.set_ylabel("peak max attention logit")
    arm_legend(axes[0][0], axes[0], arms, fontsize=7)
    save_figure(fig, path)


def plot_curves(results: dict, arms, depths, beta2s, lrs, seeds, path: Path) -> None:
    """Held-out probe loss vs step, one panel per (depth, beta2) row and LR column, arms overlaid
    (every seed drawn), one legend for the figure."""
    rows = panels(results, depths, beta2s)
    cols = [lr for lr in lrs if any(k[3] == lr for k in results)]
    if not rows or not cols:
        return
    # y up to 1.3 x the largest initial probe loss: a diverging run's excursions (tens of nats)
    # would flatten every other panel; each panel names the peak it leaves off scale
    first = [r["probes"][0]["probe_loss"] for r in results.values()
             if r["probes"] and finite(r["probes"][0].get("probe_loss"))]
    top = 1.3 * max(first) if first else None
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.6 * len(cols), 2.8 * len(rows)),
                             squeeze=False, sharey=True)
    for i, (d, b) in enumerate(rows):
        for j, lr in enumerate(cols):
            ax = axes[i][j]
            for a in arms:
                for s in seeds:
                    r = results.get((a, d, b, lr, s))
                    if r is None:
                        continue
                    pts = [(p["step"], p["probe_loss"]) for p in r["probes"] if finite(p.get("probe_loss"))]
                    ax.plot([x for x, _ in pts], [y for _, y in pts], lw=0.7, color=COLOURS[a], label=LABELS[a])
            if not ax.lines:
                ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", fontsize=8)
            peak = max((y for line in ax.lines for y in line.get_ydata() if finite(y)), default=None)
            if top is not None and peak is not None and peak > top:
                ax.text(0.98, 0.95, f"peak {peak:.0f} off scale", transform=ax.transAxes, ha="right",
                        va="top", fontsize=7)
            ax.set_title(f"L={d}, β2={b:g}, LR {fmt(lr)}", fontsize=8)
            ax.set_xlabel("step", fontsize=7)
        axes[i][0].set_ylabel("held-out probe loss", fontsize=7)
    if top is not None:
        axes[0][0].set_ylim(top=top)
    arm_legend(axes[0][0], axes.flat, arms, fontsize=6)
    save_figure(fig, path, dpi=90)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--depths", type=int, nargs="+", default=DEPTHS)
    p.add_argument("--beta2s", type=float, nargs="+", default=BETA2S)
    p.add_argument("--lrs", type=float, nargs="+", default=LRS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--probe-every", type=int, default=PROBE_EVERY)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--out", default=str(default_out("lrs")))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--plot", default=str(ROOT / "docs" / "results" / "instability_lr_sensitivity.png"))
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    out = Path(args.out)
    if not args.report_only:
        runs = [make_run(out, args.python, a, d, b, lr, s, args.steps, args.probe_every)
                for s in args.seeds for d in args.depths for b in args.beta2s for lr in args.lrs
                for a in args.arms]
        run_pending(runs, args.jobs, args.nice)
    results = collect(out, args.arms, args.depths, args.beta2s, args.lrs, args.seeds)
    if not results:
        print("no finished runs", file=sys.stderr)
        return 1
    plot(results, args.arms, args.depths, args.beta2s, args.lrs, args.seeds, Path(args.plot))
    plot_curves(results, args.arms, args.depths, args.beta2s, sorted(args.lrs), args.seeds,
                Path(args.plot).with_name(Path(args.plot).stem + "_curves.png"))
    print("\n".join(summary_table(results, args.arms, args.depths, args.beta2s, args.lrs, args.seeds)))
    print()
    print("\n".join(mechanism_table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
