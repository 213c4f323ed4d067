"""Tokenizers: the ``Tokenizer`` interface, the tiktoken and sentencepiece formats (registered in
``TOKENIZERS``) and ``load_tokenizer``, which detects the format of a file."""

from titanwarm.tokenizers import sentencepiece_format, tiktoken_format  # noqa: F401 (registration)
from titanwarm.tokenizers.base import Tokenizer, TokenizerError
from titanwarm.tokenizers.load import detect_format, load_tokenizer
from titanwarm.tokenizers.sentencepiece_format import SentencePieceTokenizer
from titanwarm.tokenizers.tiktoken_format import (
    LLAMA3_PATTERN,
    LLAMA3_SPECIAL_TOKENS,
    TiktokenTokenizer,
)

__all__ = [
    "LLAMA3_PATTERN",
    "LLAMA3_SPECIAL_TOKENS",
    "SentencePieceTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "TokenizerError",
    "detect_format",
    "load_tokenizer",
]
