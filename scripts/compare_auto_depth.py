"""Fixed vs curvature-driven depth schedule at the stability study's high LR (issue 7, "Evidence").

Two arms of ``train_configs/repro/archwarm.toml`` (depth16, 4 -> 16 blocks in 6 groups of 2, bottom-up)
at peak LR 1e-2, curvature tracked every 2 steps (4 HVPs) in both:

- ``fixed``: the config's timeline (a group every 8 steps from step 10; full depth after step 50);
- ``curvature``: ``[depth_schedule] mode = "curvature"``, target_ratio 0.5, patience 2,
  min_interval 4, all_unlocked_by 50 (the fixed arm's last unlock), hold_ratio 0.8.

Runs go to ``outputs/auto_depth/{fixed,curv}_s<seed>/`` (metrics.jsonl, train.log, run.json); a run whose
``run.json`` exists is skipped. Then ``docs/results/auto_depth.md`` and ``auto_depth.png`` are written.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/compare_auto_depth.py            # run what is missing + report
    .venv/bin/python scripts/compare_auto_depth.py --report-only

The per-run analysis (divergence, spikes, run-specific spikes, val ppl, stability ratios) is
``scripts/reproduce_stability.py``'s, imported, with its defaults (spike factor 1.15, window 10).
Run-specific spikes are measured against the per-step median loss of every LR-1e-2 run on disk: the
study's runs under ``outputs/repro/*/lr1e-2_s*`` plus this comparison's.
Added here: the unlock timeline (step, reason, ratio of every ``unlock`` event), the step of the last
unlock (time to full depth) and the compute spent, sum over steps of active_layers / n_layers (block-
steps relative to a full-depth run; locked blocks are skipped in forward and backward).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from reproduce_stability import add_relative_spikes, analyse, fmt_lr, g, per_seed  # noqa: E402

from titanwarm.archwarm.curvature_policy import CurvaturePolicy  # noqa: E402
from titanwarm.models.llama3.args import FLAVORS  # noqa: E402

CONFIG = "train_configs/repro/archwarm.toml"
LR = 1e-2
N_LAYERS = FLAVORS["depth16"].n_layers
COMMON = ["--config", CONFIG, "--optimizer.lr", "1e-2", "--curvature.interval", "2",
          "--curvature.max_hvps", "4"]
CURV = {"target_ratio": 0.5, "patience": 2, "min_interval": 4, "all_unlocked_by": 50, "hold_ratio": 0.8}
START = 10  # "warmup_end" = lr_scheduler.warmup_steps of the config
N_GROUPS = 6  # (16 - 4) / group_size 2
ARMS = {
    "fixed": [],
    "curvature": ["--depth_schedule.mode", "curvature"]
                 + [x for k, v in CURV.items() for x in (f"--depth_schedule.{k}", str(v))],
}
PREFIX = {"fixed": "fixed", "curvature": "curv"}
STUDY_REF = ROOT / "outputs" / "repro"  # the stability study's LR-1e-2 runs (read only)


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / f"{PREFIX[arm]}_s{seed}"


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def train_command(arm: str, seed: int, folder: Path | None, python: str) -> list[str]:
    dump = ["--job.dump_folder", rel(folder)] if folder is not None else []
    return [python, "train.py", *COMMON, "--job.seed", str(seed), *ARMS[arm], *dump]


def display(cmd: list[str]) -> str:
    return "OMP_NUM_THREADS=1 " + shlex.join([".venv/bin/python" if i == 0 else c for i, c in enumerate(cmd)])


ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def print_schedules(python: str) -> dict[str, str]:
    """``--print-schedule`` of both arms (validates the overrides; raises if one is refused)."""
    out = {}
    for arm in ARMS:
        cmd = train_command(arm, 0, None, python) + ["--print-schedule"]
        p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{arm}: config refused:\n{p.stdout}{p.stderr}")
        out[arm] = p.stdout.strip()
    return out


# ----------------------------------------------------------------------------------- running
def run_all(seeds: list[int], out: Path, n_parallel: int, python: str) -> None:
    pending = []
    for seed in seeds:
        for arm in ARMS:
            folder = run_dir(out, arm, seed)
            if (folder / "run.json").exists():
                print(f"skip (done): {rel(folder)}", flush=True)
            else:
                pending.append((arm, seed, folder))
    running = []
    while pending or running:
        while pending and len(running) < n_parallel:
            arm, seed, folder = pending.pop(0)
            for f in ("metrics.jsonl", "train.log"):  # a partial run of an interrupted invocation
                (folder / f).unlink(missing_ok=True)
            folder.mkdir(parents=True, exist_ok=True)
            cmd = train_command(arm, seed, folder, python)
            log = open(folder / "train.log", "w")
            print(f"start: {display(cmd)}", flush=True)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, arm, seed, folder, cmd, time.time(), log))
        time.sleep(2)
        still = []
        for item in running:
            proc, arm, seed, folder, cmd, t0, log = item
            rc = proc.poll()
            if rc is None:
                still.append(item)
                continue
            log.close()
            elapsed = time.time() - t0
            (folder / "run.json").write_text(json.dumps(
                {"method": arm, "lr": LR, "seed": seed, "returncode": rc, "elapsed_s": elapsed,
                 "command": display(cmd)}, indent=1))
            print(f"done rc={rc} {elapsed:.0f}s: {rel(folder)}", flush=True)
        running = still


# ---------------------------------------------------------------------------------- analysis
def depth_info(r: dict) -> None:
    """Unlock timeline, time to full depth and compute spent of an ``analyse`` result (in place)."""
    records = [json.loads(x) for x in (r["folder"] / "metrics.jsonl").read_text().splitlines() if x.strip()]
    r["unlocks"] = [x for x in records if x.get("kind") == "unlock"]
    last = r["unlocks"][-1] if r["unlocks"] else None
    full = last is not None and last["active_layers"] == N_LAYERS
    r["full_depth_step"] = last["step"] if full else None
    r["full_depth_reason"] = (last.get("reason", "fixed") if full else "never")
    r["reasons"] = [u.get("reason", "fixed") for u in r["unlocks"]]
    depth = [(x["step"], x["active_layers"]) for x in r["steps"]]
    r["depth"] = depth
    r["block_steps"] = sum(a for _, a in depth)
    r["compute"] = r["block_steps"] / N_LAYERS  # full-depth-step equivalents
    r["compute_frac"] = r["compute"] / len(depth) if depth else math.nan
    # the tracker's readings, in step order (None-free: only tracked steps carry a ratio)
    r["ratio_stream"] = [(s, x) for s, x, _, _ in r["ratios"]]


def needed_targets(r: dict) -> list[dict]:
    """Per group of a curvature-arm run: the lowest target_ratio under which *the same readings* would
    have made that unlock a curvature decision (at or before the step it actually happened), i.e. the
    smallest max over a window of ``patience`` consecutive tracked readings of the network as it was
    then (after the previous unlock; readings before ``start`` count for the first group), whose last
    reading is at a step >= start and >= previous unlock + min_interval. Counterfactual only in that
    the later network would differ once an earlier unlock happened."""
    p, mi = CURV["patience"], CURV["min_interval"]
    out, prev = [], None
    for u in r["unlocks"]:
        lo = -math.inf if prev is None else prev
        reads = [(s, x) for s, x in r["ratio_stream"] if lo < s <= u["step"]]
        windows = []
        for i in range(p - 1, len(reads)):
            end = reads[i][0]
            if end < START or (prev is not None and end - prev < mi):
                continue
            w = [x for _, x in reads[i - p + 1:i + 1]]
            windows.append((max(w) if all(math.isfinite(x) for x in w) else math.inf, end))
        best = min(windows) if windows else (math.nan, None)
        out.append({"step": u["step"], "reason": u.get("reason", "fixed"), "needed": best[0],
                    "at": best[1], "readings": reads})
        prev = u["step"]
    return out


def replay(stream: list[tuple[int, float]], target: float, last_step: int = 100) -> list:
    """The policy's decisions on a recorded ratio stream at another target (hold_ratio kept above it).
    Exact only up to the first decision that differs from the recorded run's."""
    pol = CurvaturePolicy(N_GROUPS, START, CURV["all_unlocked_by"], target, CURV["patience"],
                          CURV["min_interval"], max(CURV["hold_ratio"], target))
    d = dict(stream)
    return pol.simulate((s, d.get(s)) for s in range(1, last_step + 1))


def bit_identical_to_study(r: dict) -> bool | None:
    """Is a fixed-arm run's loss curve equal to the study's archwarm run (tracked every 10 steps)?"""
    ref = STUDY_REF / "archwarm" / f"lr{fmt_lr(LR)}_s{r['seed']}" / "metrics.jsonl"
    if not ref.exists():
        return None
    losses = [json.loads(x)["loss"] for x in ref.read_text().splitlines()
              if x.strip() and json.loads(x).get("kind") == "step"]
    return losses == [l for _, l in r["losses"]]


# ------------------------------------------------------------------------------------ report
def table(res: dict, seeds: list[int]) -> list[str]:
    lines = [
        f"Peak LR {fmt_lr(LR)}, seeds {', '.join(map(str, seeds))}; per-seed values in seed order.",
        "",
        "| schedule | diverged? | loss spikes (count) | run-specific spikes | final val ppl | mean val ppl "
        "| final train loss | full depth after step (reason) | unlock reasons | compute (full-depth step equiv.) "
        "| compute / full-depth run | max stability ratio (step) | tracked steps with ratio > 1 | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        runs = [res[(arm, s)] for s in seeds if (arm, s) in res]
        if not runs:
            lines.append(f"| {arm} | not run |" + " |" * 13)
            continue
        ndiv = sum(r["diverged"] for r in runs)
        ppl = [r["val_ppl"] for r in runs if math.isfinite(r["val_ppl"])]
        reasons = "; ".join(
            ", ".join(f"{n}×{k}" for k in ("curvature", "deadline", "fixed") if (n := r["reasons"].count(k)))
            for r in runs)
        lines.append(
            f"| {arm} | {'yes' if ndiv else 'no'} ({ndiv}/{len(runs)}) "
            f"| {', '.join(str(len(r['spikes'])) for r in runs)} "
            f"| {', '.join(str(len(r['rel_spikes'])) for r in runs)} "
            f"| {per_seed(runs, lambda r: r['val_ppl'], '.1f')} "
            f"| {g(statistics.mean(ppl), '.1f') if ppl else 'n/a'} "
            f"| {per_seed(runs, lambda r: r['final_loss'], '.3f')} "
            f"| {', '.join(str(r['full_depth_step']) + ' (' + r['full_depth_reason'] + ')' for r in runs)} "
            f"| {reasons} "
            f"| {per_seed(runs, lambda r: r['compute'], '.2f')} "
            f"| {', '.join(g(100 * r['compute_frac'], '.1f') + '%' for r in runs)} "
            f"| {', '.join(g(r['max_ratio']) + ' (' + str(r['max_ratio_step']) + ')' for r in runs)} "
            f"| {', '.join(g(100 * r['frac_ratio_gt1'], '.0f') + '%' for r in runs)} "
            f"| {per_seed(runs, lambda r: r['elapsed_s'], '.0f')} |")
    return lines


def plot(res: dict, seeds: list[int], outdir: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return None
    colors = {"fixed": "C4", "curvature": "C1"}
    fig, axes = plt.subplots(3, len(seeds), figsize=(7 * len(seeds), 11), squeeze=False, sharex=True)
    for j, s in enumerate(seeds):
        for arm in ARMS:
            r = res.get((arm, s))
            if r is None:
                continue
            c = colors[arm]
            axes[0][j].plot([x for x, _ in r["losses"]], [l for _, l in r["losses"]], color=c, lw=1, label=arm)
            axes[1][j].step([x for x, _ in r["depth"]], [a for _, a in r["depth"]], where="post", color=c,
                            lw=1.5, label=arm)
            st = [(x, y) for x, y in r["ratio_stream"] if math.isfinite(y)]
            axes[2][j].plot([x for x, _ in st], [y for _, y in st], marker="o", ms=3, color=c, lw=1, label=arm)
            for u in r["unlocks"]:
                ls = {"curvature": "-", "deadline": "--"}.get(u.get("reason"), ":")
                axes[2][j].axvline(u["step"], color=c, lw=0.7, ls=ls, alpha=0.6)
        axes[0][j].set(ylabel="training loss", title=f"depth16, peak LR {fmt_lr(LR)}, seed {s}")
        axes[1][j].set(ylabel="active blocks (of 16)", title="depth (step trained at)")
        axes[2][j].axhline(CURV["target_ratio"], color="g", lw=0.8, label=f"target {CURV['target_ratio']}")
        axes[2][j].axhline(CURV["hold_ratio"], color="r", lw=0.8, ls="--", label=f"hold {CURV['hold_ratio']}")
        axes[2][j].axhline(1.0, color="k", lw=0.8)
        axes[2][j].set_yscale("symlog", linthresh=0.1)
        axes[2][j].set_ylim(bottom=0)
        axes[2][j].set(xlabel="step", ylabel="lr·λmax(G) / 38",
                       title="stability ratio, tracked every 2 steps\nunlocks: solid = curvature, dashed = deadline, "
                             "dotted = fixed")
        for ax in axes[:, j]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "auto_depth.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def fmt_unlocks(r: dict) -> str:
    parts = []
    for u in r["unlocks"]:
        reason = u.get("reason", "fixed")
        extra = f" ratio {g(u['ratio'])}@{u['ratio_step']}" if u.get("ratio") is not None else ""
        parts.append(f"{u['step']} {reason}{extra}")
    return "; ".join(parts)


def report(res: dict, seeds: list[int], schedules: dict[str, str] | None, outdir: Path, jobs: int) -> None:
    png = plot(res, seeds, outdir)
    runs = list(res.values())
    fixed = [res[("fixed", s)] for s in seeds if ("fixed", s) in res]
    curv = [res[("curvature", s)] for s in seeds if ("curvature", s) in res]
    needs = {r["seed"]: needed_targets(r) for r in curv}
    lines = [
        "# Fixed vs curvature-driven depth schedule at the high LR (issue 7)",
        "",
        "Generated by `scripts/compare_auto_depth.py` from the runs under `outputs/auto_depth/` (re-run it to "
        "regenerate; finished runs are reused). Per-run analysis (divergence, spikes, val ppl, stability "
        "ratios) is `scripts/reproduce_stability.py`'s `analyse` / `add_relative_spikes`, imported unchanged, "
        "so the definitions are those of [stability.md](stability.md).",
        "",
        "## Set-up",
        "",
        f"- Both arms: `{CONFIG}` (depth16, 5.25M params, 100 AdamW steps, 10 LR warm-up steps then cosine "
        f"to 0.1x, batch 8x64, 4 of 16 blocks active at the start, 6 groups of 2 blocks, bottom-up, noise "
        f"unlock init) at peak LR {fmt_lr(LR)} (the study's high LR), curvature tracked **every 2 steps** with "
        f"4 HVPs (the study tracked every 10 with 2), so that patience 2 spans 4 steps.",
        "- **fixed**: the config's timeline: a group after steps 10, 18, 26, 34, 42, 50.",
        f"- **curvature**: `mode = \"curvature\"`, target_ratio {CURV['target_ratio']}, patience "
        f"{CURV['patience']}, min_interval {CURV['min_interval']}, all_unlocked_by {CURV['all_unlocked_by']} "
        f"(= the fixed arm's full-depth step), hold_ratio {CURV['hold_ratio']}; start = warm-up end (10).",
        f"- **Compute** = Σ over steps of active_layers / {N_LAYERS}: block-steps in units of one full-depth "
        f"step (locked blocks are skipped in forward and backward; embedding/output and the tracker's HVPs "
        f"are not counted). A full-depth run of 100 steps is 100. **Full depth after step** = the step of "
        f"the last `unlock` event (its blocks train from the next step) and that event's `reason` "
        f"(`fixed` for the fixed timeline). **Run-specific spikes** are counted against the per-step median "
        f"loss of every LR-1e-2 run on disk (the study's {{n}} runs plus these), since every run sees the "
        f"same batches in the same order and the hard stretch of text at steps ~20-24 spikes them all.",
        "",
        "## Result",
        "",
        *table(res, seeds),
        "",
    ]
    lines = [x.replace("{n}", str(len(STUDY_RUNS))) for x in lines]
    if png:
        lines += [f"![{png}]({png})", "",
                  "Top: training loss; middle: active blocks; bottom: the tracker's stability ratio "
                  "(symlog; green = target, red dashed = hold), vertical lines at the unlocks.", ""]
    lines += ["## Per-run detail", "",
              "| run | rc | spike steps | run-specific spike steps | max loss above same-LR median (step > 10) "
              "| max loss (step > 10) | final val ppl | wall s |", "|---|---|---|---|---|---|---|---|"]
    for s in seeds:
        for arm in ARMS:
            r = res.get((arm, s))
            if r is not None:
                lines.append(
                    f"| {arm} seed {s} | {r['returncode']} | {', '.join(map(str, r['spikes'])) or '-'} "
                    f"| {', '.join(map(str, r['rel_spikes'])) or '-'} | {g(r['max_excess'], '.2f')} "
                    f"| {g(max((l for st, l in r['losses'] if st > 10), default=math.nan), '.2f')} "
                    f"| {g(r['val_ppl'], '.1f')} | {r['elapsed_s']:.0f} |")
    lines += ["", "## Unlock timelines", "", "| run | unlocks: after step, reason (ratio@step it was decided on) |",
              "|---|---|"]
    for s in seeds:
        for arm in ARMS:
            if (arm, s) in res:
                lines.append(f"| {arm} seed {s} | {fmt_unlocks(res[(arm, s)])} |")
    lines += ["", "Tracked stability ratios of the curvature arm (step: ratio):", ""]
    for r in curv:
        lines.append(f"- seed {r['seed']}: " + ", ".join(f"{s}: {g(x, '.2g')}" for s, x in r["ratio_stream"]))
    lines += ["", "## What target would have let the curvature rule decide", "",
              f"Per group, the lowest `target_ratio` under which the readings actually measured (of the "
              f"network as it then was) contain {CURV['patience']} consecutive tracked readings below it, "
              f"ending at or after step {START} and ≥ min_interval after the previous unlock, no later than "
              f"the step the group did unlock (= the max of the best such window; the hold rule is then "
              f"satisfied too). Counterfactual past the first changed decision, since later readings "
              f"would come from a different network.", "",
              "| run | " + " | ".join(f"group {k + 1}" for k in range(N_GROUPS)) + " |",
              "|---|" + "---|" * N_GROUPS]
    for r in curv:
        cells = [f"{n['step']} {n['reason']}: > {g(n['needed'], '.2g')}" + (f" (@{n['at']})" if n["at"] else "")
                 for n in needs[r["seed"]]]
        lines.append(f"| curvature seed {r['seed']} | " + " | ".join(cells) + " |")
    replays = {}
    for r in curv:
        for t in (0.5, 1.0, 2.0, 5.0, 10.0):
            replays[(r["seed"], t)] = replay(r["ratio_stream"], t)
    lines += ["", "Replaying each curvature run's recorded ratio stream through `CurvaturePolicy` at other "
              "targets (hold_ratio raised to the target when below it; exact only up to the first decision that "
              "differs from the run's):", "", "| seed | target | decisions (step reason) |", "|---|---|---|"]
    for (s, t), dec in replays.items():
        lines.append(f"| {s} | {t:g} | " + ", ".join(f"{st} {d.reason}" for st, d in dec) + " |")

    lines += ["", "## Verdict", "", VERDICT.strip() if VERDICT else "(to be written)", ""]
    lines += ["## Checks", ""]
    for r in fixed:
        same = bit_identical_to_study(r)
        if same is not None:
            lines.append(f"- fixed seed {r['seed']}: loss curve {'bit-identical' if same else 'NOT identical'} "
                         f"to the study's `outputs/repro/archwarm/lr1e-2_s{r['seed']}` (tracked every 10 steps "
                         f"with 2 HVPs), i.e. {'the denser tracking does not perturb training' if same else 'the tracker settings changed training'}.")
    if schedules:
        lines += ["- `--print-schedule` validates both arms; the curvature arm's:", "", "```",
                  schedules["curvature"], "```"]
    for r in curv:
        gaps = [(a["step"], b["step"], b.get("reason")) for a, b in zip(r["unlocks"], r["unlocks"][1:])
                if b["step"] - a["step"] < CURV["min_interval"]]
        for a, b, why in gaps:
            lines.append(f"- curvature seed {r['seed']}: unlocks after steps {a} and {b} are only {b - a} step(s) "
                         f"apart (< min_interval {CURV['min_interval']}; the second is a `{why}` decision): "
                         f"after a held group unlocks late, the next group's deadline pace step may already "
                         f"be past, and the policy forces it at once.")
    lines += ["- First tracked reading after each unlock (both arms) vs all other tracked readings:", ""]
    for s in seeds:
        for arm in ARMS:
            r = res.get((arm, s))
            if r is None:
                continue
            firsts = [next((x for st, x in r["ratio_stream"] if st > u["step"]), math.nan) for u in r["unlocks"]]
            firsts_steps = {next((st for st, x in r["ratio_stream"] if st > u["step"]), None) for u in r["unlocks"]}
            rest = [x for st, x in r["ratio_stream"] if st not in firsts_steps and math.isfinite(x)]
            lines.append(f"  - {arm} seed {s}: after unlocks {', '.join(g(x, '.2g') for x in firsts)}; "
                         f"median of the other {len(rest)} readings {g(statistics.median(rest), '.2g') if rest else 'n/a'}")
    lines += ["", "## Commands", "",
              f"Seeds {seeds}, single-threaded runs, {jobs} side by side on a shared 2-core CPU machine:", "",
              "```", "OMP_NUM_THREADS=1 .venv/bin/python scripts/compare_auto_depth.py "
              f"--seeds {' '.join(map(str, seeds))} --jobs {jobs}", "```", "",
              "Each run (from its `outputs/auto_depth/<arm>_s<seed>/run.json`); `--print-schedule` appended to "
              "either validates it:", "", "```"]
    for s in seeds:
        for arm in ARMS:
            if (arm, s) in res:
                lines.append(res[(arm, s)]["command"])
    total = sum(r["elapsed_s"] for r in runs)
    lines += ["```", "", f"Compute: {len(runs)} runs, {total / 60:.1f} process-minutes of wall time. Wall times include the "
              f"tracker (every 2 steps, 4 HVPs: most of the time) and whatever else shared the CPU (the seed-0 "
              f"pair ran beside another session's tests), so compare arms only within a seed; the compute "
              f"column above is the measure of depth savings.", ""]
    (outdir / "auto_depth.md").write_text("\n".join(lines))
    print(f"wrote {rel(outdir / 'auto_depth.md')} and {png}")


# Hand-written after reading the results (kept here so the report regenerates with it).
VERDICT = """
**At this scale the curvature-driven schedule does not measurably help.** Neither arm diverged; both
have the same data-driven spikes at steps 20-24; final validation perplexity is within seed noise and
slightly worse on average (curvature 428.2, 426.0, mean 427.1; fixed 419.0, 429.3, mean 424.1; final
training loss goes the other way, 6.221/6.245 vs 6.245/6.267). Time to full depth is identical: all
four runs reach 16 blocks after step 50, the curvature arm both times by a `deadline` decision
(`all_unlocked_by` = 50 is the fixed arm's last unlock). The curvature arm opens groups later, so it
spends about 6% less block-compute (73.0 and 73.0 vs 77.5 full-depth-step equivalents out of 100). The
one difference in spikes: on seed 0 the fixed run had a run-specific spike at step 23 (loss 11.6, 3.5
above the same-LR median; the study's `archwarm` seed 0 run has the same spike). The curvature run was
still at 6 blocks then and had no spike. That is one event in two seeds, not evidence.

The decisions are not all `deadline`, but most are (seed 0: 2 curvature, 4 deadline; seed 1: 1
curvature, 5 deadline), and the ratio signal mostly fails to drive them:

- At peak LR even the 4-block network reads 0.6-1.3, so target 0.5 can never release group 1 (it
  goes at its deadline, step 16, in both seeds). The best windows needed a target above 1.0 (seed 0)
  and 0.73 (seed 1).
- After 22 of the 24 unlocks (both arms) the first tracked reading is 3-200, while the median of
  the other readings is about 0.3-0.6. The loss mostly does not follow it; the exception is fixed
  seed 0, with 290 at step 22 and then the step-23 spike. It looks like a transient of the estimate.
  A plausible cause, not checked: the fresh blocks' Adam second moments are ~0, so the
  preconditioner is huge. hold_ratio
  0.8 therefore holds nearly every group, which then goes either at its held deadline or as soon as
  2 readings fall below 0.5; the last groups, a few steps apart near the deadline, rarely see a
  calm reading at all.
- For the rule to decide most unlocks on these readings, the target would have to be about 1-2
  (replayed: target 1 gives 2/6 and 4/6 curvature decisions, target 2 gives 6/6 and 4/6), with
  hold_ratio above the post-unlock transient or off. Target 1 is the edge of stability itself, so
  there is no margin left, and above 1 it is past it. A better fix is to skip or discount the first
  reading(s) after an unlock.
- A first run of this comparison found the policy breaking its own spacing guarantee: after a held
  group unlocked late, the next group's already-passed pace step forced it out one step later
  (37 after 36, 39 after 38), closer than `min_interval` 4. The policy was fixed (a deadline-pace
  unlock now also waits `min_interval`, except at its hard step; regression test in
  tests/test_autodepth.py) and the curvature arm re-run: the tables above are after the fix, and
  every unlock is now at least 4 steps after the previous one.
"""
STUDY_RUNS: list[dict] = []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (each single-threaded)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", default=str(ROOT / "outputs" / "auto_depth"))
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    out = Path(args.out).resolve()
    schedules = print_schedules(args.python)
    if not args.report_only:
        run_all(args.seeds, out, args.jobs, args.python)

    factor, window = 1.15, 10  # reproduce_stability.py's defaults
    res = {}
    for s in args.seeds:
        for arm in ARMS:
            r = analyse(run_dir(out, arm, s), factor, window)
            if r is not None:
                depth_info(r)
                res[(arm, s)] = r
    pool = {("auto", k): r for k, r in res.items()}
    for folder in sorted(STUDY_REF.glob(f"*/lr{fmt_lr(LR)}_s*")):
        r = analyse(folder, factor, window)
        if r is not None and r["lr"] == LR:
            STUDY_RUNS.append(r)
            pool[("study", folder.parent.name, r["seed"])] = r
    add_relative_spikes(pool, factor)
    outdir = ROOT / "docs" / "results"
    outdir.mkdir(parents=True, exist_ok=True)
    report(res, [s for s in args.seeds if any((a, s) in res for a in ARMS)] or args.seeds, schedules,
           outdir, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
