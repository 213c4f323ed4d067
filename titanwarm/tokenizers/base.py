"""The tokenizer interface every format implements, and the error raised for unusable tokenizer files."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or in no supported format."""


class Tokenizer(ABC):
    """Text <-> token ids, with the ids of the document delimiters.

    ``vocab_size`` counts every id the tokenizer can emit (special tokens included); the model's
    embedding table is sized from it.
    """

    vocab_size: int
    bos_id: int
    eos_id: int

    @abstractmethod
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``, with ``bos_id`` prepended / ``eos_id`` appended when asked.

        Special-token strings inside ``text`` are encoded as ordinary text, never as the special id.
        """

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``."""
