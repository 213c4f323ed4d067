"""The paper's setting in miniature (issue 17, experiment 3): depth-induced spikes, every arm, and
whether spikes coincide with lr * lambda_max(G) crossing Adam's threshold.

Same config and arms as ``scripts/lr_sensitivity.py`` (``train_configs/repro/lr_sensitivity.toml``,
its ``ARMS``), with the curvature tracker and the mechanism probe every ``--every`` steps.

1. ``--phase calibrate``: the baseline at depth 8 and 16, one seed, over ``--lrs``. Pick the LR
   where L=16 spikes or diverges during or right after LR warm-up and L=8 does not (the paper's
   depth ablation); the report prints both depths' spikes per LR. These are experiment 2's baseline
   runs (``outputs/lrs_shuf``, probe every 5 steps, tracker every 50), shared with
   ``lr_sensitivity.py``: the calibration needs the held-out spikes, not lambda, so it costs nothing
   beyond experiment 2 (its overshoot-event column is coarse, from the 50-step tracker).
2. ``--phase compare --lr X``: every arm at that LR, depth 16, ``--seeds`` (>= 3; 5 near the
   boundary), each arm seeing the same data order per seed (the seeded shuffle, ``DATA_OVERRIDES`` in
   lr_sensitivity.py: shuffle_seed = the run's seed).

**Spike rule** (on ``probe_loss``, the loss on one fixed held-out batch, so the data order cannot
make a spike): a probe value v_i is a spike when it is non-finite or
v_i > median(previous W probes) + max(0.1 nat, 5 * MAD(previous W probes)), W = ``--window`` (20
probes = 100 steps at --every 5), with at least 5 previous probes.

**Coincidence test.** An *overshoot event* is a tracked step where
lr * lambda_max(G) >= 38 (1 - beta1^t) (the bias-corrected threshold, see edge_of_stability.py)
for at least two consecutive tracked steps, counted at its first step. A spike is a *hit* when an
event started 0-``--lag`` steps before it; hit rate = hits / spikes, precision = events followed
by a spike within the lag / events. The null shifts each run's event train circularly by a random
offset (``--shuffles`` draws, same offset for all events of a run); p = share of draws with a
pooled hit rate >= the observed one. Beside it, per arm: the share of tracked steps after LR
warm-up at or past the threshold and their median ratio, since a run that sits past the edge
for most of its steps has few overshoot *onsets* to count.

The run table also gives each run's held-out peak (nats, step) and, when the peak reached
``--recovered-below`` nats, the first probe after it below that (the recovery from a blow-up);
the arm table the mean ± sample std of the final validation loss over the runs that did not
diverge.

Compare runs go to ``outputs/spikes_shuf/compare/<arm>/L<depth>_b2<beta2>_lr<lr>_s<seed>/`` (resumable). Usage:

    .venv/bin/python scripts/depth_spikes.py --phase calibrate --jobs 2 --nice 15
    .venv/bin/python scripts/depth_spikes.py --phase compare --lr 1e-1 --seeds 0 1 2 --jobs 2 --nice 15
    .venv/bin/python scripts/depth_spikes.py --phase compare --lr 1e-1 --seeds 0 1 2 --report-only
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lr_sensitivity import (ARMS, LABELS, PROBE_EVERY, analyse, default_out, fmt, make_run,  # noqa: E402
                            run_dir)
from study_runner import ROOT, finite, minutes, pyplot, run_pending, save_figure  # noqa: E402

BETA1 = 0.9
THRESHOLD = (2 + 2 * BETA1) / (1 - BETA1)


def spikes(probes: list[dict], window: int, floor: float = 0.1, k_mad: float = 5.0) -> list[int]:
    """Steps of the probe series that are spikes under the rule in the module docstring."""
    out, history = [], []
    for r in probes:
        v = r["probe_loss"]
        if not finite(v):
            out.append(r["step"])
            continue
        prev = history[-window:]
        if len(prev) >= 5:
            med = statistics.median(prev)
            mad = statistics.median(abs(x - med) for x in prev)
            if v > med + max(floor, k_mad * mad):
                out.append(r["step"])
        history.append(v)
    return out


def threshold_ratios(records: list[dict], key: str = "lr_lambda") -> list[tuple[int, float]]:
    """(step, ratio) for every tracked step: the ``key`` reading (lr * λ) over the bias-corrected
    threshold 38 (1 - beta1^t); >= 1 is past Adam's edge."""
    return [(r["step"], r[key] / (THRESHOLD * (1 - BETA1 ** r["step"])))
            for r in records if finite(r.get(key))]


def overshoot_events(records: list[dict], key: str = "lr_lambda") -> tuple[list[int], list[int]]:
    """(event steps, tracked steps): first steps of runs of >= 2 consecutive tracked steps whose
    ``key`` (an lr * λ reading) is at or above the bias-corrected threshold."""
    tracked = threshold_ratios(records, key)
    events = []
    for i in range(len(tracked) - 1):
        above, nxt = tracked[i][1] >= 1, tracked[i + 1][1] >= 1
        before = i > 0 and tracked[i - 1][1] >= 1
        if above and nxt and not before:
            events.append(tracked[i][0])
    return events, [s for s, _ in tracked]


def coincidence(runs: list[dict], lag: int, shuffles: int, seed: int = 0) -> dict:
    """Pooled hit rate / precision over runs, and the circular-shift null of the hit rate."""
    def count(pairs):
        hits = sum(any(0 <= s - e <= lag for e in ev) for sp, ev, _ in pairs for s in sp)
        caught = sum(any(0 <= s - e <= lag for s in sp) for sp, ev, _ in pairs for e in ev)
        return hits, caught

    pairs = [(r["spikes"], r["events"], r["tracked"]) for r in runs]
    n_spikes = sum(len(sp) for sp, _, _ in pairs)
    n_events = sum(len(ev) for _, ev, _ in pairs)
    hits, caught = count(pairs)
    rng = random.Random(seed)
    null = []
    for _ in range(shuffles):
        shifted = []
        for sp, ev, tracked in pairs:
            if not tracked:
                shifted.append((sp, ev, tracked))
                continue
            period = tracked[-1] - tracked[0] + (tracked[1] - tracked[0] if len(tracked) > 1 else 1)
            off = rng.randrange(period)
            shifted.append((sp, [tracked[0] + (e - tracked[0] + off) % period for e in ev], tracked))
        null.append(count(shifted)[0] / n_spikes if n_spikes else math.nan)
    rate = hits / n_spikes if n_spikes else math.nan
    return {"spikes": n_spikes, "events": n_events, "hits": hits, "hit_rate": rate,
            "precision": caught / n_events if n_events else math.nan,
            "null_mean": statistics.mean(null) if null else math.nan,
            "null_95": sorted(null)[int(0.95 * len(null))] if null else math.nan,
            "p": (1 + sum(x >= rate for x in null)) / (1 + len(null)) if n_spikes else math.nan}


def enrich(r: dict, window: int, warmup: int, recovered_below: float) -> dict:
    r["spikes"] = spikes(r["probes"], window)
    held_out = [(p["step"], p["probe_loss"]) for p in r["probes"] if finite(p["probe_loss"])]
    r["probe_peak_step"], r["probe_peak"] = max(held_out, key=lambda sv: sv[1], default=(None, math.nan))
    r["recovered_at"] = next((st for st, v in held_out if st > r["probe_peak_step"] and v < recovered_below),
                             None) if r["probe_peak"] >= recovered_below else None  # no blow-up: none
    r["events"], r["tracked"] = overshoot_events(r["records"])
    r["early_spikes"] = [s for s in r["spikes"] if s <= 3 * warmup]
    r["ratios_after_warmup"] = [v for s, v in threshold_ratios(r["records"]) if s > warmup]
    return r


def run_table(results: dict, recovered_below: float) -> list[str]:
    lines = ["| arm | depth | LR | seed | diverged? | final val loss | spikes (steps) | spikes ≤ 3× warm-up "
             f"| overshoot events | peak attn logit | held-out peak, nats (step) | back under {recovered_below:g} "
             "nats from step | wall / CPU time |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (a, d, b, lr, s), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][3], kv[0][0], kv[0][4])):
        sp = ", ".join(map(str, r["spikes"][:8])) + (" …" if len(r["spikes"]) > 8 else "")
        lines.append(f"| {LABELS[a]} | {d} | {fmt(lr)} | {s} | {'yes' if r['diverged'] else 'no'} "
                     f"| {r['final_loss']:.3f} | {len(r['spikes'])} ({sp}) | {len(r['early_spikes'])} "
                     f"| {len(r['events'])} | {r['attn_logit_peak']:.1f} "
                     f"| {r['probe_peak']:.1f} ({r['probe_peak_step']}) | {r['recovered_at'] or '-'} "
                     f"| {minutes(r)} |")
    return lines


def arm_table(results: dict, arms: list[str], lag: int, shuffles: int) -> list[str]:
    lines = ["| arm | runs (seeds) | diverged | runs with a spike | spikes | hit rate (spikes ≤ "
             f"{lag} steps after an overshoot) | precision | null hit rate: mean / 95th pct | p "
             "| tracked steps after warm-up past the edge | median lr·λ/38(1−β1^t) after warm-up "
             "| final val loss of the runs that did not diverge: mean ± std (runs) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in arms:
        rs = [r for k, r in results.items() if k[0] == a]
        if not rs:
            continue
        c = coincidence(rs, lag, shuffles)
        g = lambda x, spec=".2f": format(x, spec) if finite(x) else "n/a"  # noqa: E731
        ratios = [v for r in rs for v in r["ratios_after_warmup"]]
        past = sum(v >= 1 for v in ratios) / len(ratios) if ratios else math.nan
        med = statistics.median(ratios) if ratios else math.nan
        kept = [r["final_loss"] for r in rs if not r["diverged"]]
        spread = f" ± {statistics.stdev(kept):.2f}" if len(kept) > 1 else ""
        finals = f"{statistics.mean(kept):.3f}{spread} ({len(kept)})" if kept else "-"
        lines.append(f"| {LABELS[a]} | {len(rs)} | {sum(r['diverged'] for r in rs)} "
                     f"| {sum(bool(r['spikes']) for r in rs)} | {c['spikes']} | {g(c['hit_rate'])} ({c['hits']}) "
                     f"| {g(c['precision'])} ({c['events']} events) | {g(c['null_mean'])} / {g(c['null_95'])} "
                     f"| {g(c['p'], '.3f')} | {g(100 * past, '.0f')} % of {len(ratios)} | {g(med, '.3g')} "
                     f"| {finals} |")
    return lines


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    keys = sorted(results, key=lambda k: (k[1], k[3], k[0], k[4]))
    fig, axes = plt.subplots(len(keys), 1, figsize=(11, 2.2 * len(keys)), squeeze=False, sharex=True)
    for ax, k in zip(axes[:, 0], keys):
        r = results[k]
        ax.plot([p["step"] for p in r["probes"]], [p["probe_loss"] for p in r["probes"]], lw=0.8,
                label="held-out probe loss")
        for s in r["spikes"]:
            ax.axvline(s, color="r", lw=0.6)
        ax2 = ax.twinx()
        tr = threshold_ratios(r["records"])
        ax2.plot([s for s, _ in tr], [v for _, v in tr], color="g", lw=0.6)
        ax2.axhline(1, color="g", ls="--", lw=0.6)
        ax2.set_yscale("log")
        ax2.set_ylabel("lr·λ / 38(1−β1^t)", color="g", fontsize=7)
        for e in r["events"]:
            ax2.plot(e, 1, "g^", ms=4)
        ax.set_title(f"{LABELS[k[0]]}, L={k[1]}, lr {fmt(k[3])}, seed {k[4]}", fontsize=8)
        ax.set_ylabel("probe loss", fontsize=7)
    axes[-1][0].set_xlabel("step (red: spikes; green ▲: overshoot events)")
    save_figure(fig, path, dpi=90)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=("calibrate", "compare"), required=True)
    p.add_argument("--lr", type=float, help="compare: the calibrated LR")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-2, 3e-2, 1e-1, 3e-1],
                   help="calibrate: LRs to try")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--depths", type=int, nargs="+", default=None,
                   help="default: 8 16 to calibrate, 16 to compare")
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=5, help="tracker and probe interval (steps)")
    p.add_argument("--window", type=int, default=20, help="spike rule: previous probes")
    p.add_argument("--lag", type=int, default=10)
    p.add_argument("--recovered-below", type=float, default=8.0,
                   help="run table: first step after the held-out peak with the probe loss below this (nats)")
    p.add_argument("--shuffles", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--out", default=None, help="default outputs/spikes[_<data tag>]/<phase>")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--plot", default=None, help="default docs/results/instability_spikes_<phase>.png")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    if args.phase == "calibrate":  # experiment 2's baseline runs: same config, probe every PROBE_EVERY
        out = Path(args.out) if args.out else default_out("lrs")
        arms, lrs, seeds, depths = ["baseline"], args.lrs, [args.seeds[0]], args.depths or [8, 16]
        every, extra = PROBE_EVERY, []
    else:
        if args.lr is None:
            p.error("--phase compare needs --lr (from the calibration)")
        out = Path(args.out) if args.out else default_out("spikes") / args.phase
        arms, lrs, seeds, depths = args.arms, [args.lr], args.seeds, args.depths or [16]
        every, extra = args.every, ["--curvature.interval", str(args.every), "--metrics.log_freq", str(args.every)]
    if not args.report_only:
        runs = [make_run(out, args.python, a, d, args.beta2, lr, s, args.steps, every, extra)
                for s in seeds for lr in lrs for d in depths for a in arms]
        run_pending(runs, args.jobs, args.nice)
    warmup = max(1, args.steps // 20)
    results = {}
    for k in [(a, d, args.beta2, lr, s) for a in arms for d in depths for lr in lrs for s in seeds]:
        r = analyse(run_dir(out, *k))
        if r is not None:
            results[k] = enrich(r, args.window, warmup, args.recovered_below)
    if not results:
        print("no finished runs", file=sys.stderr)
        return 1
    plot(results, Path(args.plot) if args.plot else
         ROOT / "docs" / "results" / f"instability_spikes_{args.phase}.png")
    print("\n".join(run_table(results, args.recovered_below)))
    if args.phase == "compare":
        print()
        print("\n".join(arm_table(results, arms, args.lag, args.shuffles)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
