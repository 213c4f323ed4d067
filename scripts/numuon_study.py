"""NuMuon's claim in miniature: AdamW vs Muon vs NuMuon on a CPU-sized Llama (issue 15).

Every arm trains ``tinymodel`` (dim 64, 2 blocks; CPU time on a shared 2-core machine bounded it) on the built-in corpus with the same tokens (same
seed -> same data order and init), the same peak LR and schedule (Muon/NuMuon use
``update_scale = "match_rms_adamw"``, so AdamW's LR carries over), for each seed. After training:
validation loss, the stable rank ``||W||_F^2 / ||W||_2^2`` and effective rank ``exp(entropy(s/sum s))``
(Roy & Vetterli) of every hidden matrix (the Muon-routed ones: wq wk wv wo w1 w2 w3), and the
validation loss after truncating every hidden matrix to rank ``ceil(f * min(m, n))`` for a few f
(the compressibility curve). Ranks are also measured at initialisation.

Runs go to ``outputs/numuon_study/<arm>_s<seed>/`` (metrics.jsonl, result.json); a run whose
``result.json`` exists is skipped. Then ``docs/results/numuon.md`` and two PNGs are written.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/numuon_study.py     # missing runs + report
    .venv/bin/python scripts/numuon_study.py --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "outputs" / "numuon_study"
DOC = ROOT / "docs" / "results" / "numuon.md"
SEEDS = (0, 1)
FRACTIONS = (0.5, 0.25, 0.125, 0.0625)
VAL_STEPS = 16
COMMON = ["--model.flavor", "tinymodel", "--training.device", "cpu", "--training.steps", "200",
          "--training.local_batch_size", "8", "--training.seq_len", "64",
          "--lr_scheduler.warmup_steps", "20", "--lr_scheduler.decay_type", "cosine",
          "--lr_scheduler.min_lr_ratio", "0.1", "--optimizer.lr", "3e-3",
          "--optimizer.weight_decay", "0.1", "--metrics.log_freq", "10",
          "--metrics.enable_tensorboard", "false", "--validation.enable", "true",
          "--validation.freq", "25", "--validation.steps", "4"]
ARMS = {
    "AdamW": ["--optimizer.name", "AdamW"],
    "Muon": ["--optimizer.name", "Muon"],
    # r: 0.5 for the first 30% of training, then cosine down to 0.25 (k = 32 -> 16 of 64)
    "NuMuon": ["--optimizer.name", "NuMuon", "--optimizer.rank_fraction", "0.5",
               "--optimizer.rank_fraction_final", "0.25", "--optimizer.rank_schedule", "cosine",
               "--optimizer.rank_hold_fraction", "0.3"],
}


def command(arm: str, seed: int) -> list[str]:
    return [*COMMON, *ARMS[arm], "--job.seed", str(seed),
            "--job.dump_folder", str(OUT / f"{arm}_s{seed}")]


def hidden_matrices(model) -> dict:
    from titanwarm.optim.muon import route

    (group, *_) = route(model.named_parameters(), ["tok_embeddings", "output"], 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: p for p in group["params"]}


def ranks(model) -> dict[str, dict[str, float]]:
    import torch

    out = {}
    for name, p in hidden_matrices(model).items():
        s = torch.linalg.svdvals(p.detach().float())
        q = s / s.sum()
        out[name] = {"stable_rank": float((s ** 2).sum() / s[0] ** 2),
                     "effective_rank": float(torch.exp(-(q * q.clamp_min(1e-30).log()).sum())),
                     "full_rank": min(p.shape)}
    return out


def truncated_losses(trainer) -> dict[str, float]:
    import torch

    mats = hidden_matrices(trainer.model)
    saved = {n: p.detach().clone() for n, p in mats.items()}
    out = {}
    for f in FRACTIONS:
        with torch.no_grad():
            for n, p in mats.items():
                u, s, vh = torch.linalg.svd(saved[n].float(), full_matrices=False)
                k = max(1, math.ceil(f * min(p.shape)))
                p.copy_((u[:, :k] * s[:k]) @ vh[:k])
        out[str(f)] = trainer.validate()["val_loss"]
        with torch.no_grad():
            for n, p in mats.items():
                p.copy_(saved[n])
    return out


def one_run(arm: str, seed: int) -> None:
    from titanwarm.config import load_config
    from titanwarm.trainer import Trainer

    cfg, _ = load_config(command(arm, seed))
    trainer = Trainer(cfg)
    at_init = ranks(trainer.model)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trainer.cfg.validation.steps = VAL_STEPS
    result = {"arm": arm, "seed": seed, "train_s": seconds, "val_loss": trainer.validate()["val_loss"],
              "ranks_init": at_init, "ranks": ranks(trainer.model),
              "truncated_val_loss": truncated_losses(trainer),
              "command": "scripts/numuon_study.py: train.py " + " ".join(command(arm, seed))}
    (OUT / f"{arm}_s{seed}" / "result.json").write_text(json.dumps(result, indent=1))


def load(arm: str, seed: int) -> dict:
    return json.loads((OUT / f"{arm}_s{seed}" / "result.json").read_text())


def val_curve(arm: str, seed: int) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (OUT / f"{arm}_s{seed}" / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]


def mean_rank(result: dict, key: str, which: str = "ranks") -> float:
    return statistics.mean(v[key] / v["full_rank"] for v in result[which].values())


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {arm: [load(arm, s) for s in SEEDS] for arm in ARMS}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, color in zip(ARMS, ("tab:blue", "tab:orange", "tab:green")):
        for s in SEEDS:
            steps, vals = zip(*val_curve(arm, s))
            axes[0].plot(steps, vals, color=color, alpha=0.8, label=arm if s == 0 else None)
        xs = [1.0, *FRACTIONS]
        for s, res in zip(SEEDS, results[arm]):
            ys = [res["val_loss"], *(res["truncated_val_loss"][str(f)] for f in FRACTIONS)]
            axes[1].plot(xs, ys, "o-", color=color, alpha=0.8, label=arm if s == 0 else None)
    axes[0].set(xlabel="step", ylabel="validation loss", title="validation loss (2 seeds)")
    axes[0].set_ylim(top=min(8.0, axes[0].get_ylim()[1]))
    axes[1].set(xscale="log", xlabel="rank kept / min(m, n) (every hidden matrix)",
                ylabel="validation loss", title="after truncating the hidden matrices")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(DOC.with_suffix(".png"), dpi=110)

    fig, ax = plt.subplots(figsize=(6, 4))
    kinds = sorted({n.split(".")[-2] for n in results["AdamW"][0]["ranks"]})
    width = 0.25
    for i, (arm, color) in enumerate(zip(ARMS, ("tab:blue", "tab:orange", "tab:green"))):
        vals = [statistics.mean(v["stable_rank"] / v["full_rank"] for res in results[arm]
                                for n, v in res["ranks"].items() if n.split(".")[-2] == k) for k in kinds]
        ax.bar([j + (i - 1) * width for j in range(len(kinds))], vals, width, color=color, label=arm)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set(ylabel="stable rank / min(m, n)", title="stable rank after training (mean of blocks, seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOC.with_name("numuon_rank.png"), dpi=110)

    def fmt(vals: list[float], digits: int = 3) -> str:
        return f"{statistics.mean(vals):.{digits}f} ({', '.join(f'{v:.{digits}f}' for v in vals)})"

    rows = []
    for arm, res in results.items():
        trunc = " | ".join(fmt([r["truncated_val_loss"][str(f)] for r in res]) for f in FRACTIONS)
        rows.append(f"| {arm} | {fmt([r['val_loss'] for r in res])} | "
                    f"{fmt([mean_rank(r, 'stable_rank') for r in res])} | "
                    f"{fmt([mean_rank(r, 'effective_rank') for r in res])} | {trunc} | "
                    f"{statistics.mean(r['train_s'] for r in res):.0f} |")
    init = results["AdamW"][0]
    head = " | ".join(f"val loss, rank {f}" for f in FRACTIONS)
    table = "\n".join([f"| arm | val loss | stable rank / min(m,n) | effective rank / min(m,n) | {head} | "
                       "train s |", "|" + "---|" * (6 + len(FRACTIONS) - 1), *rows])
    text = DOC.read_text() if DOC.exists() else ""
    marker = "<!-- table -->"
    generated = (f"{marker}\n{table}\n\nAt initialisation (seed 0): stable rank / min(m,n) "
                 f"{mean_rank(init, 'stable_rank', 'ranks_init'):.3f}, effective rank / min(m,n) "
                 f"{mean_rank(init, 'effective_rank', 'ranks_init'):.3f}.\n{marker}")
    if marker in text:
        start, end = text.index(marker), text.rindex(marker) + len(marker)
        text = text[:start] + generated + text[end:]
    else:
        text = text + "\n" + generated + "\n"
    DOC.write_text(text)
    print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time (default 2)")
    ap.add_argument("--run", nargs=2, metavar=("ARM", "SEED"), help="one run, in this process")
    args = ap.parse_args()
    if args.run:
        one_run(args.run[0], int(args.run[1]))
        return
    if not args.report_only:
        todo = [(arm, seed) for arm in ARMS for seed in SEEDS
                if not (OUT / f"{arm}_s{seed}" / "result.json").exists()]
        for i in range(0, len(todo), args.parallel):
            procs = [subprocess.Popen([sys.executable, __file__, "--run", arm, str(seed)], cwd=ROOT,
                                      stdout=subprocess.DEVNULL) for arm, seed in todo[i:i + args.parallel]]
            if any(p.wait() for p in procs):
                raise SystemExit("a run failed")
    report()


if __name__ == "__main__":
    main()
