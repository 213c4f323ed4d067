"""Data-path benchmarks (docs/data.md): pre-tokenisation rate per worker, loader start-up and memory on
10M- vs 1B-token folders, loader token rate against what a step consumes, and the loader's share of
the debug run's step time. Prints one table per measurement.

    OMP_NUM_THREADS=1 python scripts/bench_data.py [--steps 8] [--skip-debug-run]

The 1B-token folder is a sparse file (no disk used; it reads as zeros), so its row measures start-up
and memory, which do not depend on the contents; token rates are measured on a 10M-token folder of
random ids read through the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TOKENIZER = str(REPO / "tokenizer" / "titanwarm_8k.tiktoken")


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def bench_pretokenize(tmp: Path) -> None:
    """Tokens/s of one pretokenize worker on the built-in corpus as jsonl.zst and as parquet, next to a
    bare ``tokenizer.encode`` loop over the same documents in this process."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from titanwarm.data import corpus_documents
    from titanwarm.data.pretokenize import pretokenize
    from titanwarm.tokenizers import load_tokenizer

    docs = corpus_documents()
    lines = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    (tmp / "in").mkdir()
    (tmp / "in" / "corpus.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": docs}), tmp / "in" / "corpus.parquet")
    tok = load_tokenizer(TOKENIZER)
    t0 = time.perf_counter()
    n = sum(len(tok.encode(d, bos=True, eos=True)) for d in docs)
    encode_rate = n / (time.perf_counter() - t0)
    rows = [["tokenizer.encode loop (no I/O)", f"{n / 1e6:.2f}M", f"{encode_rate / 1e6:.2f}M", "1.00"]]
    for name in ("corpus.jsonl.zst", "corpus.parquet"):
        t0 = time.perf_counter()
        m = pretokenize(TOKENIZER, str(tmp / f"out-{name}"), [str(tmp / "in" / name)], val_fraction=0.01,
                        workers=1, progress_every=1e9)
        rate = (m["totals"]["train_tokens"] + m["totals"]["val_tokens"]) / (time.perf_counter() - t0)
        rows.append([f"pretokenize --workers 1, {name}", f"{n / 1e6:.2f}M", f"{rate / 1e6:.2f}M",
                     f"{rate / encode_rate:.2f}"])
    table("pre-tokenisation, one worker process, shipped 8k tokenizer (target >= 1M tokens/s per worker)",
          ["path", "tokens", "tokens/s", "vs encode loop"], rows)


def make_folder(folder: Path, tokens: int, random: bool) -> None:
    """A one-part token folder of ``tokens`` uint16 ids: random, or sparse (zeros, no disk)."""
    import numpy as np

    from titanwarm.data.token_writer import tokenizer_record, write_manifest
    from titanwarm.tokenizers import load_tokenizer

    folder.mkdir(parents=True)
    path = folder / "00000.train.tok"
    if random:
        np.random.default_rng(0).integers(0, 8000, tokens, dtype=np.uint16).tofile(path)
    else:
        with path.open("wb") as f:
            f.truncate(tokens * 2)
    np.asarray([0, tokens], dtype=np.uint64).tofile(folder / "00000.train.idx")
    (folder / "00000.val.tok").write_bytes(b"")
    np.asarray([0], dtype=np.uint64).tofile(folder / "00000.val.idx")
    record = {"name": "00000", "source": "synthetic", "train_tokens": tokens, "train_docs": 1,
              "val_tokens": 0, "val_docs": 0}
    write_manifest(folder, tokenizer_record(load_tokenizer(TOKENIZER), TOKENIZER), [record], {})


PROBE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from titanwarm.data.token_folder import open_tokens
from titanwarm.data.window_loader import WindowLoader
t_import = time.perf_counter()
def rss(kind):
    return int(open("/proc/self/status").read().split(kind + ":")[1].split()[0]) / 1024
base = {k: rss(k) for k in ("RssAnon", "RssFile")}
folder, seq_len, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
src = [open_tokens(folder, "train", sys.argv[5], 8448, 0.0)]
loader = WindowLoader(src, seq_len, batch, shuffle=True, seed=0)
t1 = time.perf_counter()
next(loader)
t2 = time.perf_counter()
for _ in range(n):
    next(loader)
t3 = time.perf_counter()
print(json.dumps({"open_s": t1 - t_import, "first_batch_s": t2 - t1, "batches_per_s": n / (t3 - t2),
                  "anon_mib": rss("RssAnon") - base["RssAnon"], "file_mib": rss("RssFile") - base["RssFile"],
                  "windows": loader.n_windows[0]}))
"""


def probe(folder: Path, seq_len: int, batch: int, n: int, cache: Path) -> dict:
    env = {**os.environ, "TITANWARM_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(folder), str(seq_len), str(batch), str(n), TOKENIZER],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_loader(tmp: Path) -> float:
    """Start-up, memory and rate of a fresh loader process; returns tokens/s at seq_len 2048."""
    make_folder(tmp / "10M", 10_000_000, random=True)
    make_folder(tmp / "1B", 1_000_000_000, random=False)
    rows, rate = [], 0.0
    for name in ("10M", "1B"):
        for cache_state in ("cold", "warm"):  # cold: the epoch permutation is computed; warm: memory-mapped
            r = probe(tmp / name, 2047, 8, 200, tmp / f"cache-{name}")
            rows.append([name, cache_state, r["windows"], f"{r['open_s'] * 1e3:.1f}",
                         f"{r['first_batch_s'] * 1e3:.1f}", f"{r['batches_per_s']:.0f}",
                         f"{r['batches_per_s'] * 8 * 2048 / 1e6:.1f}M", f"{r['anon_mib']:.1f}", f"{r['file_mib']:.1f}"])
            if name == "10M" and cache_state == "warm":
                rate = r["batches_per_s"] * 8 * 2048
    table("loader start-up and memory in a fresh process (seq_len 2047 + 1, local batch 8, shuffle on; "
          "cold = permutation computed and written, warm = memory-mapped)",
          ["folder", "permutation", "windows", "open ms", "first batch ms", "batches/s", "tokens/s",
           "anonymous memory growth MiB", "mapped file pages MiB (page cache)"], rows)
    return rate


def bench_debug_run(steps: int) -> list[list]:
    """Seconds the training loop waits in next(train_iter) per step on the debug model (1 process)."""
    from titanwarm.config import load_config
    from titanwarm.trainer import Trainer

    rows = []
    for prefetch in (2, 0):
        cfg, _ = load_config(["--config", str(REPO / "train_configs" / "debug_model.toml"),
                              "--training.steps", str(steps), "--training.device", "cpu",
                              "--training.prefetch", str(prefetch), "--validation.enable", "false",
                              "--metrics.enable_tensorboard", "false", "--metrics.console", "false",
                              "--job.dump_folder", tempfile.mkdtemp()])
        trainer = Trainer(cfg)
        waits: list[float] = []
        inner = trainer.train_iter

        class Timed:
            def __next__(self):
                t = time.perf_counter()
                batch = next(inner)
                waits.append(time.perf_counter() - t)
                return batch

        trainer.train_iter = Timed()
        t0 = time.perf_counter()
        trainer.train()
        step_s = (time.perf_counter() - t0) / steps
        wait = sum(waits[1:]) / max(len(waits) - 1, 1)  # the first batch includes the thread start
        rows.append([prefetch, f"{step_s * 1e3:.0f}", f"{wait * 1e3:.3f}", f"{100 * wait / step_s:.3f}%",
                     f"{cfg.training.local_batch_size * cfg.training.seq_len / step_s:.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip-debug-run", action="store_true")
    parser.add_argument("--skip-pretokenize", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_pretokenize:
            bench_pretokenize(tmp)
        rate = bench_loader(tmp)
    if not args.skip_debug_run:
        rows = bench_debug_run(args.steps)
        table("debug run (train_configs/debug_model.toml, 1 CPU process): time in next(train_iter) per step "
              "(target <= 1% of the step)", ["prefetch", "step ms", "loader wait ms", "share", "tokens/s consumed"],
              rows)
        consumed = float(rows[0][4])
        table("loader rate vs consumption (target >= 100x)",
              ["consumer", "tokens/s consumed", "loader tokens/s (1 thread)", "ratio"],
              [["debug run here (measured above)", f"{consumed:.0f}", f"{rate / 1e6:.1f}M", f"{rate / consumed:.0f}x"],
               ["1B model, one H100 at 40% MFU (6 N flops/token, estimate)", "55000", f"{rate / 1e6:.1f}M",
                f"{rate / 55000:.0f}x"]])


if __name__ == "__main__":
    main()
