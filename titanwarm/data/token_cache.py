"""The built-in corpora as token folders: on first use a registered document source is pre-tokenised
(its train and val splits, in document order) into ``$TITANWARM_CACHE/tokens/`` once per node, then
read by the same memory-mapped ``WindowLoader`` as ``dataset = "tokens"``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from titanwarm.config.sections import Training
from titanwarm.data.corpus import cache_dir
from titanwarm.data.token_writer import tokenizer_record, write_documents, write_manifest
from titanwarm.data.splits import iter_documents
from titanwarm.data.window_loader import node_once
from titanwarm.tokenizers import Tokenizer

PRETOKENIZED_SOURCES = ("shakespeare_kjv", "python_stdlib")
"""Registered document sources that are read through the token cache."""


def cached_token_folder(cfg: Training, tokenizer: Tokenizer, tokenizer_path: str) -> Path:
    """The token folder of the document source ``cfg.dataset`` (made on first use): one part holding
    the source's "train" documents and its "val" documents, each BOS text EOS, in source order."""
    splits = {s: list(iter_documents(cfg, s)) for s in ("train", "val")}
    record = tokenizer_record(tokenizer, tokenizer_path)
    h = hashlib.sha256(f"{cfg.dataset}|{record['sha256']}|{cfg.val_fraction}".encode())
    for split, docs in splits.items():
        for doc in docs:
            h.update(split.encode() + hashlib.sha256(doc.encode("utf-8", "surrogatepass")).digest())
    folder = cache_dir() / "tokens" / f"{cfg.dataset}-{h.hexdigest()[:16]}"

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        pairs = ((split, doc) for split, docs in splits.items() for doc in docs)
        part = write_documents(tmp, "00000", tokenizer, pairs, f"dataset {cfg.dataset!r}")
        write_manifest(tmp, record, [part], {"val_fraction": cfg.val_fraction, "source": cfg.dataset})

    return node_once(folder, build)
