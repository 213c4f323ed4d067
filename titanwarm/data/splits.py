"""Train/validation split by document index, and ``iter_documents``, the checked entry point to the
registered document sources."""

from __future__ import annotations

from typing import Iterable, Iterator

from titanwarm.config.sections import Training
from titanwarm.data.errors import DataError
from titanwarm.registry import DATASETS

SPLITS = ("train", "val")


def select_split(documents: Iterable[str], val_fraction: float, split: str) -> Iterator[str]:
    """Every round(1/val_fraction)-th document (index % k == 0) for "val", the others for "train".

    ``val_fraction`` 0 puts every document in "train". Sources call this on their full document list.
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    k = round(1 / val_fraction) if val_fraction > 0 else 0
    for i, doc in enumerate(documents):
        if (k > 0 and i % k == 0) == (split == "val"):
            yield doc


def check_split(split: str) -> None:
    """DataError unless ``split`` is "train" or "val"."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")


def iter_documents(cfg: Training, split: str) -> Iterator[str]:
    """The documents of ``split`` from the dataset ``cfg.dataset``; DataError if there are none."""
    check_split(split)
    source = DATASETS.get(cfg.dataset)
    empty = True
    for doc in source(cfg, split):
        empty = False
        yield doc
    if empty:
        raise DataError(
            f"dataset {cfg.dataset!r} has no documents in split {split!r} "
            f"(dataset_path={cfg.dataset_path}, val_fraction={cfg.val_fraction})"
        )
