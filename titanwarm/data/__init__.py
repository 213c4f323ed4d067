"""Data: pre-tokenised token folders (``pretokenize``, ``token_folder``) read by the memory-mapped,
shuffled, O(1)-resumable ``WindowLoader``; document sources (registered in ``DATASETS``), the built-in
corpus, the train/val split and the streaming ``TokenWindowLoader``; ``build_dataloader`` picks one.
See docs/data.md."""

from titanwarm.data import sources  # noqa: F401 (registers the built-in datasets)
from titanwarm.data.corpus import cache_dir, corpus_documents, fetch_sdists
from titanwarm.data.errors import DataError
from titanwarm.data.loader import Batch, TokenWindowLoader, build_dataloader
from titanwarm.data.splits import SPLITS, iter_documents, select_split
from titanwarm.data.window_loader import WindowLoader

__all__ = [
    "SPLITS",
    "Batch",
    "DataError",
    "TokenWindowLoader",
    "WindowLoader",
    "build_dataloader",
    "cache_dir",
    "corpus_documents",
    "fetch_sdists",
    "iter_documents",
    "select_split",
]
