"""``python -m titanwarm.data.pretokenize``: raw text -> a titanwarm token folder (see ``token_folder``).

    python -m titanwarm.data.pretokenize --tokenizer tokenizer/titanwarm_8k.tiktoken \
        --output data/fineweb_edu_tok --workers 8 --val-fraction 0.001 raw/fineweb_edu/

One task per input file in a process pool; each worker loads the tokenizer with the project's own
loader (ids identical to training) and writes its file's part; a document goes to the held-out split
when a stable hash of its text falls below ``--val-fraction``. Part names come from the input's
position in the sorted input list, so the folder does not depend on the number of workers. A part is
finished once its ``NAME.done.json`` exists: a rerun (after a crash or Ctrl-C) skips those files. The
manifest is written last. Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from titanwarm.data.errors import DataError
from titanwarm.data.readers import list_inputs, read_documents
from titanwarm.data.token_folder import file_sha256, token_dtype
from titanwarm.data.token_writer import PartWriter, tokenizer_record, write_json, write_manifest
from titanwarm.tokenizers import TokenizerError, load_tokenizer

SETTINGS = "settings.json"


def held_out(text: str, val_fraction: float) -> bool:
    """True for documents of the validation split: blake2b(text) read as a fraction < val_fraction."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2.0**64


# ---------------------------------------------------------------- the pool
_worker: dict = {}


def _init_worker(tokenizer_path: str, tokens: mp.Value, bytes_read: mp.Value) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _worker.update(tok=load_tokenizer(tokenizer_path), tokens=tokens, bytes=bytes_read)


def _tokenize_file(task: tuple[Path, str, str, float, str]) -> dict:
    folder, name, source, val_fraction, field = task
    tok, last = _worker["tok"], [0]

    def progress(n: int) -> None:
        with _worker["bytes"].get_lock():
            _worker["bytes"].value += n - last[0]
        last[0] = n

    writer = PartWriter(folder, name, token_dtype(tok.vocab_size), source)
    pending = 0
    for text in read_documents(Path(source), field, progress):
        ids = tok.encode(text, bos=True, eos=True)
        writer.add("val" if held_out(text, val_fraction) else "train", ids)
        pending += len(ids)
        if pending >= 1 << 16:
            with _worker["tokens"].get_lock():
                _worker["tokens"].value += pending
            pending = 0
    with _worker["tokens"].get_lock():
        _worker["tokens"].value += pending
    progress(Path(source).stat().st_size)
    return writer.close()


def _fmt_time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def pretokenize(tokenizer_path: str, output: str, inputs: list[str], val_fraction: float = 0.001,
                workers: int = 1, field: str = "text", progress_every: float = 2.0) -> dict:
    """Pre-tokenise ``inputs`` into the folder ``output``; returns the manifest."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    tokenizer = load_tokenizer(tokenizer_path)
    files = list_inputs(inputs)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"tokenizer_sha256": file_sha256(tokenizer_path), "val_fraction": val_fraction, "field": field,
                "inputs": [str(p.resolve()) for p in files]}
    if (folder / SETTINGS).exists():
        old = json.loads((folder / SETTINGS).read_text())
        if old != settings:
            changed = ", ".join(k for k in settings if old.get(k) != settings[k])
            raise DataError(f"{folder} holds a pretokenize run with other settings ({changed}); "
                            "use a new --output folder")
    else:
        write_json(folder / SETTINGS, settings)
    names = [f"{i:05d}" for i in range(len(files))]
    todo = [(folder, n, str(p), val_fraction, field) for n, p in zip(names, files)
            if not (folder / f"{n}.done.json").exists()]
    done = {n: json.loads((folder / f"{n}.done.json").read_text()) for n in names
            if (folder / f"{n}.done.json").exists()}
    sizes = {str(p): p.stat().st_size for p in files}
    total_bytes = sum(sizes[t[2]] for t in todo)
    if done:
        print(f"pretokenize: {len(done)} of {len(files)} files already done in {folder}; skipping them",
              file=sys.stderr)

    # spawned, not forked: forking a process that runs other threads (a caller's data or logging
    # threads, torch's pools) can leave a lock held forever in the child
    ctx = mp.get_context("spawn")
    tokens, bytes_read = ctx.Value("q", 0), ctx.Value("q", 0)
    t0, last_print = time.perf_counter(), 0.0

    def report(final: bool = False) -> None:
        elapsed = max(time.perf_counter() - t0, 1e-9)
        rate = tokens.value / elapsed
        frac = bytes_read.value / total_bytes if total_bytes else 1.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        print(f"pretokenize: files {len(done)}/{len(files)} | {tokens.value / 1e6:.1f}M tokens | "
              f"{rate / 1e6:.2f}M tokens/s ({rate / max(workers, 1) / 1e6:.2f}M per worker) | "
              f"{'done in ' + _fmt_time(elapsed) if final else 'ETA ' + (_fmt_time(eta) if eta == eta else '?')}",
              file=sys.stderr, flush=True)

    if todo:
        with ctx.Pool(min(workers, len(todo)), _init_worker, (tokenizer_path, tokens, bytes_read)) as pool:
            pending = pool.imap_unordered(_tokenize_file, todo)
            while len(done) < len(files):
                try:
                    record = pending.next(timeout=0.2)
                    done[record["name"]] = record
                except mp.TimeoutError:
                    pass
                if time.perf_counter() - last_print >= progress_every:
                    report()
                    last_print = time.perf_counter()
        report(final=True)
    return write_manifest(folder, tokenizer_record(tokenizer, tokenizer_path), list(done.values()),
                          {"val_fraction": val_fraction, "field": field})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m titanwarm.data.pretokenize", description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="tiktoken ranks file or sentencepiece model")
    parser.add_argument("--output", required=True, help="the token folder to write (created; a rerun resumes)")
    parser.add_argument("--val-fraction", type=float, default=0.001,
                        help="fraction of documents held out for validation, chosen by a stable hash (0.001)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="worker processes (default: cores - 1); the output does not depend on it")
    parser.add_argument("--field", default="text", help="JSON field / parquet column holding the text (text)")
    parser.add_argument("inputs", nargs="+", help="files or folders: .txt/.md, .jsonl/.json[.gz|.zst], .parquet")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    try:
        manifest = pretokenize(args.tokenizer, args.output, args.inputs, args.val_fraction, args.workers, args.field)
    except (DataError, TokenizerError) as e:
        print(f"pretokenize: {e}", file=sys.stderr)
        return 2
    t = manifest["totals"]
    print(f"pretokenize: wrote {args.output}: {t['train_tokens']:,} train tokens ({t['train_docs']:,} documents), "
          f"{t['val_tokens']:,} val tokens ({t['val_docs']:,} documents), {manifest['dtype']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
