"""``load_tokenizer``: pick the format of a tokenizer file from its contents and load it."""

from __future__ import annotations

import re
from pathlib import Path

from titanwarm.registry import TOKENIZERS
from titanwarm.tokenizers.base import Tokenizer, TokenizerError

_RANKS_LINE = re.compile(rb"[A-Za-z0-9+/]+=*[ \t]+[0-9]+")


def detect_format(path: Path) -> str:
    """"tiktoken" when the first line reads ``base64 rank``, else "sentencepiece" (its loader checks)."""
    with path.open("rb") as f:
        first_line = f.readline()
    if not first_line:
        raise TokenizerError(f"{path}: empty tokenizer file (expected tiktoken ranks or a sentencepiece .model)")
    return "tiktoken" if _RANKS_LINE.fullmatch(first_line.rstrip(b"\r\n")) else "sentencepiece"


def load_tokenizer(path: str) -> Tokenizer:
    """Load a tiktoken BPE ranks file or a sentencepiece model; TokenizerError for anything else."""
    file = Path(path)
    if not file.is_file():
        raise TokenizerError(f"tokenizer file not found: {path} (set [model] tokenizer_path)")
    return TOKENIZERS.get(detect_format(file))(file)
