"""tiktoken BPE ranks files (the Llama 3 ``tokenizer.model`` format), with Llama 3's split pattern
and its 256 special tokens appended after the ranks."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Sequence

import tiktoken

from titanwarm.registry import TOKENIZERS
from titanwarm.tokenizers.base import Tokenizer, TokenizerError

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Llama 3's pre-tokenization regex (used for training the shipped tokenizer too)."""

LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(4)),
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(5, 251)),
)
"""Llama 3's special tokens in id order: the first takes id len(ranks), the next len(ranks) + 1, ..."""

MAX_RUN = 25_000
_LONG_RUN = re.compile(r"\s{%d,}|\S{%d,}" % (MAX_RUN + 1, MAX_RUN + 1))


def cut_long_runs(text: str) -> list[str]:
    """``text`` cut every MAX_RUN characters inside longer runs of (non-)whitespace, as Llama 3's
    reference tokenizer does: tiktoken's regex gives up on runs of ~1M whitespace characters."""
    cuts = [0]
    for run in _LONG_RUN.finditer(text):
        cuts += range(run.start() + MAX_RUN, run.end(), MAX_RUN)
    cuts.append(len(text))
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


def read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a ranks file (one ``base64(token bytes) rank`` per line); TokenizerError if malformed."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise TokenizerError(
                f"{path}:{lineno}: not a tiktoken ranks line (expected 'base64 rank')"
            ) from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: tiktoken ranks must be 0..{len(ranks) - 1}, each once")
    return ranks


class TiktokenTokenizer(Tokenizer):
    """A tiktoken ``Encoding`` built from a ranks file plus the Llama 3 special tokens."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        ranks = read_ranks(path)
        n = len(ranks)
        special = {tok: n + i for i, tok in enumerate(LLAMA3_SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(
            name=path.name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=special
        )
        self.vocab_size = n + len(special)
        self.bos_id = special["<|begin_of_text|>"]
        self.eos_id = special["<|end_of_text|>"]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        try:
            ids = self._enc.encode(text, disallowed_special=())
        except ValueError:  # regex backtracking limit; only pathological runs get the slower path
            ids = [i for piece in cut_long_runs(text) for i in self._enc.encode(piece, disallowed_special=())]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))


TOKENIZERS.add("tiktoken", TiktokenTokenizer)
