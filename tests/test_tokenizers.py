"""Tokenizers: the shipped files round-trip real text and are reproducible, format detection and its
errors, and a real Llama 3 tokenizer.model loads through the same path."""

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from titanwarm.data import cache_dir, corpus_documents
from titanwarm.registry import TOKENIZERS
from titanwarm.tokenizers import (
    LLAMA3_SPECIAL_TOKENS,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    TokenizerError,
    load_tokenizer,
)

ROOT = Path(__file__).resolve().parent.parent
TIKTOKEN_FILE = ROOT / "tokenizer" / "titanwarm_8k.tiktoken"
SP_FILE = ROOT / "tokenizer" / "titanwarm_8k_sp.model"
TRICKY = "  indented\n\n\ttab  <|end_of_text|> <|begin_of_text|> 1234567 café 中文 🙂 \r\n trailing  "


@pytest.mark.parametrize("path, cls", [(TIKTOKEN_FILE, TiktokenTokenizer), (SP_FILE, SentencePieceTokenizer)])
def test_shipped_tokenizers_round_trip_corpus_text(path, cls):
    tok = load_tokenizer(str(path))
    assert type(tok) is cls
    docs = corpus_documents()[:40] + [TRICKY]
    for doc in docs:
        ids = tok.encode(doc)
        assert tok.decode(ids) == doc
        assert tok.bos_id not in ids and tok.eos_id not in ids
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.encode(doc, bos=True, eos=True) == [tok.bos_id, *ids, tok.eos_id]


def test_tiktoken_special_ids_follow_the_ranks():
    n_ranks = len(TIKTOKEN_FILE.read_text().splitlines())
    tok = load_tokenizer(str(TIKTOKEN_FILE))
    assert len(LLAMA3_SPECIAL_TOKENS) == len(set(LLAMA3_SPECIAL_TOKENS)) == 256
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (n_ranks, n_ranks + 1, n_ranks + 256)
    for i, name in enumerate(LLAMA3_SPECIAL_TOKENS):
        assert tok.decode([n_ranks + i]) == name


def test_sentencepiece_special_ids_are_the_models():
    sp = spm.SentencePieceProcessor(model_file=str(SP_FILE))
    tok = load_tokenizer(str(SP_FILE))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (sp.bos_id(), sp.eos_id(), sp.get_piece_size())
    assert tok.encode(TRICKY) == sp.encode(TRICKY)


def test_tiktoken_long_whitespace_run_round_trips():
    tok = load_tokenizer(str(TIKTOKEN_FILE))
    text = "start " + " " * 1_000_000 + "end"  # beyond tiktoken's regex backtracking limit
    assert tok.decode(tok.encode(text)) == text


def test_formats_are_registered():
    assert TOKENIZERS.get("tiktoken") is TiktokenTokenizer
    assert TOKENIZERS.get("sentencepiece") is SentencePieceTokenizer


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty tokenizer file"),
        (b"hello world\nthis is text\n", "unknown tokenizer format"),
        (bytes(range(256)) * 4, "unknown tokenizer format"),
        (base64.b64encode(b"a") + b" 0\nnot-a-ranks-line\n", ":2: not a tiktoken ranks line"),
        (base64.b64encode(b"a") + b" 0\n" + base64.b64encode(b"b") + b" 5\n", "ranks must be 0..1"),
    ],
)
def test_bad_tokenizer_files_raise(tmp_path, content, message):
    path = tmp_path / "tok.model"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=message) as err:
        load_tokenizer(str(path))
    assert str(path) in str(err.value)


def test_missing_tokenizer_file_raises(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer file not found: .*nope.model"):
        load_tokenizer(str(tmp_path / "nope.model"))


@pytest.mark.parametrize("vocab, files", [
    (8192, (TIKTOKEN_FILE, SP_FILE)),
    (1024, (ROOT / "tokenizer" / "titanwarm_1k.tiktoken", ROOT / "tokenizer" / "titanwarm_1k_sp.model")),
])
def test_build_script_reproduces_shipped_files(tmp_path, vocab, files):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tokenizer.py"), "--out-dir", str(tmp_path),
                    "--vocab-size", str(vocab)], check=True, capture_output=True)
    for shipped in files:
        assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes()


def llama3_tokenizer_file() -> Path:
    """Meta's Llama 3 tokenizer.model from the llama-models 0.3.0 wheel, fetched once into the cache
    by the presets' own command (scripts/get_llama3_tokenizer.py)."""
    model = cache_dir() / "llama-models-0.3.0" / "tokenizer.model"
    if not model.is_file():
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "get_llama3_tokenizer.py"),
                               "--out", str(model)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot fetch llama-models==0.3.0 (no network to PyPI?): {proc.stderr.strip()[-300:]}")
    return model


def test_real_llama3_tokenizer_loads():
    tok = load_tokenizer(str(llama3_tokenizer_file()))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (128_256, 128_000, 128_001)
    # reference ids from llama_models/llama3/tests/api/test_tokenizer.py
    ids = [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    assert tok.encode("This is a test sentence.", bos=True, eos=True) == ids
    assert tok.decode(ids) == "<|begin_of_text|>This is a test sentence.<|end_of_text|>"
    assert tok.decode([128006, 128007, 128009]) == "<|start_header_id|><|end_header_id|><|eot_id|>"
    assert tok.decode(tok.encode(TRICKY)) == TRICKY
