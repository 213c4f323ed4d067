"""sentencepiece ``.model`` files (serialized ModelProto), loaded with the sentencepiece library."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import sentencepiece as spm

from titanwarm.registry import TOKENIZERS
from titanwarm.tokenizers.base import Tokenizer, TokenizerError


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model; its own BOS/EOS pieces delimit documents."""

    def __init__(self, path: str | Path) -> None:
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(Path(path).read_bytes())
        except RuntimeError:
            raise TokenizerError(
                f"{path}: unknown tokenizer format (expected a tiktoken ranks file or a sentencepiece .model)"
            ) from None
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(f"{path}: sentencepiece model has no BOS/EOS piece (needs both)")

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self._sp.encode(text, add_bos=bos, add_eos=eos)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids))


TOKENIZERS.add("sentencepiece", SentencePieceTokenizer)
