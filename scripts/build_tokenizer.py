"""Train the shipped tokenizers on the built-in shakespeare_kjv corpus (every document, both splits):

- tokenizer/titanwarm_8k.tiktoken: byte-level BPE trained with rustbpe using Llama 3's split
  pattern; 8192 - 256 ranks, so with the 256 Llama 3 special tokens the vocabulary is 8192.
- tokenizer/titanwarm_8k_sp.model: sentencepiece BPE, 8192 pieces, lossless settings.

Deterministic: running it again writes byte-identical files.
Usage: python scripts/build_tokenizer.py [--out-dir tokenizer] [--vocab-size 8192]
(another --vocab-size writes titanwarm_<n/1024>k.* instead, e.g. the 1k tokenizer of the
instability study: --vocab-size 1024)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import sys
from pathlib import Path

import rustbpe
import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from titanwarm.data import corpus_documents  # noqa: E402
from titanwarm.tokenizers import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS, load_tokenizer  # noqa: E402


def tiktoken_ranks(documents: list[str], vocab_size: int) -> bytes:
    """A ranks file (``base64 rank`` lines) leaving room for the Llama 3 special tokens."""
    bpe = rustbpe.Tokenizer()
    n_ranks = vocab_size - len(LLAMA3_SPECIAL_TOKENS)
    bpe.train_from_iterator(iter(documents), vocab_size=n_ranks, pattern=LLAMA3_PATTERN)
    ranks = sorted(bpe.get_mergeable_ranks(), key=lambda item: item[1])
    return b"".join(base64.b64encode(bytes(token)) + b" %d\n" % rank for token, rank in ranks)


def sentencepiece_model(documents: list[str], vocab_size: int) -> bytes:
    """A sentencepiece BPE model for which decode(encode(s)) == s (no normalization, byte fallback)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=(line for doc in documents for line in doc.split("\n")),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent.parent / "tokenizer"))
    parser.add_argument("--vocab-size", type=int, default=8192, help="total vocabulary incl. special tokens")
    args = parser.parse_args()
    documents = corpus_documents()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"titanwarm_{args.vocab_size // 1024}k" if args.vocab_size % 1024 == 0 else f"titanwarm_{args.vocab_size}"
    builds = ((f"{stem}.tiktoken", tiktoken_ranks), (f"{stem}_sp.model", sentencepiece_model))
    for name, build in builds:
        path = out / name
        path.write_bytes(build(documents, args.vocab_size))
        tok = load_tokenizer(str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"wrote {path}: {path.stat().st_size} bytes, vocab_size {tok.vocab_size}, "
              f"bos {tok.bos_id}, eos {tok.eos_id}, sha256 {digest}")


if __name__ == "__main__":
    main()
