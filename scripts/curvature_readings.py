"""Which curvature reading can you act on? The post-unlock transient, the held-out blow-up, and how
well each reading's lr * lambda_max(G) / threshold predicts the next loss spike.

The tracker-at-scale issue measured two misleading readings: the first λmax(G) after an unlock was
3-200x the run's median (new blocks have tiny second moments, so P^-1/2 is huge there), and a
held-out batch read 4-500x the training batch. This study runs architecture warm-up with the
run's own tracker every ``interval`` steps plus ``scripts/instability_probe.py --readings``
(the restricted readings of ``[curvature] min_param_steps`` / ``min_v_hat_ratio`` side by side) and
reports, per run and pooled:

1. **Unlock transient**: for every unlock, the first tracked reading after it divided by the median
   of the previous ``--window`` readings, for the full reading (``lambda_max``) and the mature one
   (``lambda_max_mature``: parameters with fewer than ``--young-steps`` Adam updates left out), and
   the full eigenvector's squared mass on the blocks just unlocked (``evec_mass/layers.<i>``).
2. **Held-out blow-up**: every ``--check-every`` steps, exact checks (``--check-hvps`` autograd
   Lanczos HVPs each): held-out / training-batch λ for the full G and for G restricted to
   coordinates with sqrt(v_hat) >= ``--v-hat-ratio`` x their tensor's RMS (held-out and training
   batch), and the held-out eigenvector's mass on the token embedding.
3. **Spike prediction**: the spike rule and coincidence test of ``scripts/depth_spikes.py``
   (overshoot event = >= 2 consecutive tracked steps with lr * λ >= 38 (1 - beta1^t); a spike is
   a hit when an event started 0-``--lag`` steps before it; hit rate, precision, circular-shift
   null) for each reading. Spikes are read on the training loss in the full-batch setting (the
   batch never changes) and on the held-out probe loss in the streaming one.

Settings (``SETTINGS``): ``fullbatch`` = ``train_configs/repro/eos_fullbatch.toml`` (d=64, depth 8,
the same 32 x 64 tokens every step, Adam, constant LR after 20 warm-up steps, tracker every step
with 2 finite-difference Lanczos HVPs) with half the blocks locked until step 20 and one block
unlocking every ``--unlock-every`` steps after; ``stream`` = ``train_configs/repro/lr_sensitivity.toml``
(d=128, depth 8, shuffled built-in corpus, 16 x 128 tokens, fan-in init, AdamW, cosine) with the
same schedule, tracker every 5 steps (3 Lanczos HVPs), mechanism probe every 5 steps.

Runs go to ``outputs/readings/<setting>/b2<beta2>_lr<lr>_s<seed>/`` (resumable). Usage:

    .venv/bin/python scripts/curvature_readings.py --setting fullbatch --lrs 3e-3 1e-2 --jobs 2 --nice 10
    .venv/bin/python scripts/curvature_readings.py --setting fullbatch --lrs 3e-3 1e-2 --report-only
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from depth_spikes import BETA1, THRESHOLD, coincidence, overshoot_events, spikes  # noqa: E402
from study_runner import (ROOT, Run, crashed, finite, minutes, pyplot, read_records, relative,  # noqa: E402
                          run_pending, save_figure)

SETTINGS = {
    "fullbatch": {"config": "train_configs/repro/eos_fullbatch.toml", "warmup": 20, "every": 1,
                  "overrides": ["--model.flavor", "w64_depth8"], "probe": [], "spike_key": "loss"},
    "stream": {"config": "train_configs/repro/lr_sensitivity.toml", "warmup": 20, "every": 5,
               "overrides": ["--model.flavor", "depth8", "--lr_scheduler.warmup_steps", "20",
                             "--training.shuffle", "true", "--curvature.interval", "5",
                             "--metrics.log_freq", "5", "--validation.enable", "false"],
               "probe": ["--probe-every", "5"], "spike_key": "probe_loss"},
}


def fmt(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def run_dir(out: Path, beta2: float, lr: float, seed: int) -> Path:
    return out / f"b2{beta2:g}_lr{fmt(lr)}_s{seed}"


def make_run(out: Path, python: str, setting: str, beta2: float, lr: float, seed: int, steps: int,
             unlock_every: int, young: int, ratio: float, check_every: int, check_hvps: int) -> Run:
    s = SETTINGS[setting]
    folder = run_dir(out, beta2, lr, seed)
    cmd = [python, "scripts/instability_probe.py", *s["probe"], "--readings", "--young-steps", str(young),
           "--v-hat-ratio", repr(ratio), "--check-every", str(check_every),
           "--check-hvps", str(check_hvps), "--",
           "--config", s["config"], *s["overrides"], "--optimizer.beta2", repr(beta2),
           "--optimizer.lr", repr(lr), "--training.steps", str(steps), "--job.seed", str(seed),
           "--training.shuffle_seed", str(seed),
           "--depth_schedule.enabled", "true", "--depth_schedule.initial_fraction", "0.5",
           "--depth_schedule.start", "warmup_end", "--depth_schedule.interval", str(unlock_every),
           "--depth_schedule.group_size", "1", "--depth_schedule.unlock_init", "noise",
           "--job.dump_folder", relative(folder)]
    return Run(folder, cmd, {"setting": setting, "beta2": beta2, "lr": lr, "seed": seed, "steps": steps,
                             "unlock_every": unlock_every, "young_steps": young, "v_hat_ratio": ratio,
                             "check_every": check_every, "check_hvps": check_hvps})


def analyse(folder: Path, setting: str, window: int) -> dict | None:
    import json

    if not (folder / "run.json").exists():
        return None
    meta = json.loads((folder / "run.json").read_text())
    if crashed(folder, meta):
        return None
    records = read_records(folder)
    unlocks = [(e["step"], e["layers"]) for e in read_records(folder, "unlock")]
    key = SETTINGS[setting]["spike_key"]
    series = [{"step": r["step"], "probe_loss": r[key]} for r in records if key in r]
    tracked = [r for r in records if finite(r.get("lambda_max"))]
    transient = []
    for step, layers in unlocks:
        after = next((r for r in tracked if r["step"] > step), None)
        before = [r for r in tracked if r["step"] <= step][-window:]
        if after is None or len(before) < 3:
            continue
        row = {"unlock": step, "layers": layers, "at": after["step"],
               "new_mass": sum(after.get(f"evec_mass/layers.{i}", 0.0) for i in layers)}
        for name in ("lambda_max", "lambda_max_mature"):
            prev = [r[name] for r in before if finite(r.get(name))]
            row[name] = after[name] / statistics.median(prev) if prev and finite(after.get(name)) else math.nan
        transient.append(row)
    keys = ("heldout_lambda_max", "heldout_lambda_max_measured", "check_lambda_max_measured")
    heldout = [tuple(r[k] / r["check_lambda_max"] for k in keys) + (r.get("heldout_embed_mass", math.nan),)
               for r in records if r.get("check_lambda_max") and all(finite(r.get(k)) for k in keys)]
    out = {"meta": meta, "records": records, "transient": transient, "heldout": heldout,
           "spikes": spikes(series, window), "diverged": meta["returncode"] != 0}
    for name, field in (("full", "lr_lambda"), ("mature", "lr_lambda_mature")):
        out[f"events_{name}"], out[f"tracked_{name}"] = overshoot_events(records, field)
    return out


def g(x: float, spec: str = ".3g") -> str:
    return format(x, spec) if finite(x) else "n/a"


def report(results: dict, lag: int, shuffles: int) -> list[str]:
    lines = ["**Unlock transient** (first tracked reading after an unlock / median of the previous readings):", "",
             "| run | unlocks | full λ: median / max ratio | mature λ: median / max ratio "
             "| full eigenvector's mass on the new block: median / max |", "|---|---|---|---|---|"]
    for k, r in sorted(results.items()):
        t = r["transient"]
        col = lambda name: [x[name] for x in t if finite(x[name])]  # noqa: E731
        med = lambda xs: f"{g(statistics.median(xs))} / {g(max(xs))}" if xs else "n/a"  # noqa: E731
        lines.append(f"| β2 {k[0]:g}, lr {fmt(k[1])}, seed {k[2]} | {len(t)} | {med(col('lambda_max'))} "
                     f"| {med(col('lambda_max_mature'))} | {med(col('new_mass'))} |")
    lines += ["", "**Held-out blow-up** (exact checks, same step and HVPs: λ / full-G λ on the training batch):", "",
              "| run | samples | full G: median / max | G on measured coordinates: median / max "
              "| training batch, measured / full: median | held-out eigenvector mass on tok_embeddings: median |",
              "|---|---|---|---|---|---|"]
    for k, r in sorted(results.items()):
        h = r["heldout"]
        if not h:
            continue
        cols = list(zip(*h))
        lines.append(f"| β2 {k[0]:g}, lr {fmt(k[1])}, seed {k[2]} | {len(h)} "
                     f"| {g(statistics.median(cols[0]))} / {g(max(cols[0]))} "
                     f"| {g(statistics.median(cols[1]))} / {g(max(cols[1]))} "
                     f"| {g(statistics.median([x for x in cols[2] if finite(x)] or [math.nan]))} "
                     f"| {g(statistics.median([x for x in cols[3] if finite(x)] or [math.nan]), '.2f')} |")
    lines += ["", f"**Spike prediction** (spike = hit when an overshoot event started 0–{lag} steps before; "
              "pooled over runs; null: circular shifts):", "",
              "| reading | runs | spikes | events | hit rate (hits) | precision | null hit rate: mean / 95th pct | p |",
              "|---|---|---|---|---|---|---|---|"]
    for name, label in (("full", "full G (lambda_max)"), ("mature", "mature G (min_param_steps)")):
        runs = [{"spikes": r["spikes"], "events": r[f"events_{name}"], "tracked": r[f"tracked_{name}"]}
                for r in results.values()]
        c = coincidence(runs, lag, shuffles)
        lines.append(f"| {label} | {len(runs)} | {c['spikes']} | {c['events']} | {g(c['hit_rate'], '.2f')} ({c['hits']}) "
                     f"| {g(c['precision'], '.2f')} | {g(c['null_mean'], '.2f')} / {g(c['null_95'], '.2f')} "
                     f"| {g(c['p'], '.3f')} |")
    lines += ["", "| run | diverged? | spikes (steps) | unlocks | wall / CPU time |", "|---|---|---|---|---|"]
    for k, r in sorted(results.items()):
        lines.append(f"| β2 {k[0]:g}, lr {fmt(k[1])}, seed {k[2]} | {'yes' if r['diverged'] else 'no'} "
                     f"| {len(r['spikes'])} ({', '.join(map(str, r['spikes'][:10]))}) "
                     f"| {', '.join(str(u['unlock']) for u in r['transient'])} | {minutes(r['meta'])} |")
    return lines


def plot(results: dict, path: Path, setting: str) -> None:
    plt = pyplot()
    keys = sorted(results)
    fig, axes = plt.subplots(len(keys), 1, figsize=(11, 2.6 * len(keys)), squeeze=False, sharex=True)
    key = SETTINGS[setting]["spike_key"]
    for ax, k in zip(axes[:, 0], keys):
        r = results[k]
        rec = r["records"]
        for field, color, label in (("lr_lambda", "k", "full"), ("lr_lambda_mature", "tab:blue", "mature")):
            pts = [(x["step"], x[field] / (THRESHOLD * (1 - BETA1 ** x["step"]))) for x in rec if finite(x.get(field))]
            ax.plot([s for s, _ in pts], [v for _, v in pts], color=color, lw=0.7, label=f"lr·λ/38(1−β1^t), {label}")
        ax.axhline(1, color="g", ls="--", lw=0.6)
        for u in r["transient"]:
            ax.axvline(u["unlock"], color="tab:orange", lw=0.6)
        for s in r["spikes"]:
            ax.axvline(s, color="r", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        pts = [(x["step"], x[key]) for x in rec if finite(x.get(key))]
        ax2.plot([s for s, _ in pts], [v for _, v in pts], color="tab:gray", lw=0.5)
        ax2.set_yscale("log")
        ax2.set_ylabel("training loss" if key == "loss" else "held-out loss", fontsize=7, color="tab:gray")
        ax.set_title(f"{setting}: β2 {k[0]:g}, lr {fmt(k[1])}, seed {k[2]} (orange: unlocks; red: spikes)", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    axes[-1][0].set_xlabel("step")
    save_figure(fig, path, dpi=90)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=list(SETTINGS), default="fullbatch")
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2])
    p.add_argument("--beta2s", type=float, nargs="+", default=[0.95, 0.999])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--unlock-every", type=int, default=40)
    p.add_argument("--young-steps", type=int, default=20)
    p.add_argument("--v-hat-ratio", type=float, default=1e-3)
    p.add_argument("--check-every", type=int, default=25, help="exact checks (training + held-out) every N steps")
    p.add_argument("--check-hvps", type=int, default=8)
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--lag", type=int, default=10)
    p.add_argument("--shuffles", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--out", default=None, help="default outputs/readings/<setting>")
    p.add_argument("--plot", default=None, help="default docs/results/curvature_readings_<setting>.png")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    out = Path(args.out) if args.out else ROOT / "outputs" / "readings" / args.setting
    keys = [(b, lr, s) for s in args.seeds for lr in args.lrs for b in args.beta2s]
    if not args.report_only:
        run_pending([make_run(out, args.python, args.setting, b, lr, s, args.steps, args.unlock_every,
                              args.young_steps, args.v_hat_ratio, args.check_every, args.check_hvps)
                     for b, lr, s in keys],
                    args.jobs, args.nice)
    results = {k: r for k in keys if (r := analyse(run_dir(out, *k), args.setting, args.window)) is not None}
    if not results:
        print("no finished runs", file=sys.stderr)
        return 1
    plot(results, Path(args.plot) if args.plot else ROOT / "docs" / "results" / f"curvature_readings_{args.setting}.png",
         args.setting)
    print("\n".join(report(results, args.lag, args.shuffles)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
