"""The built-in document sources, registered in ``DATASETS`` as ``fn(cfg, split) -> Iterator[str]``:
"shakespeare_kjv", "python_stdlib", "text", "jsonl", "hf" (optional ``datasets`` package) and
"tokens" (the documents of token folders, decoded; training reads their tokens directly)."""

from __future__ import annotations

import glob
import json
import sysconfig
from pathlib import Path
from typing import Iterator

import numpy as np

from titanwarm.config.sections import Training
from titanwarm.data.corpus import corpus_documents
from titanwarm.data.errors import DataError
from titanwarm.data.splits import select_split
from titanwarm.registry import DATASETS

SKIPPED_STDLIB_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)
TEXT_UNITS = ("document", "line")


@DATASETS.register("shakespeare_kjv")
def shakespeare_kjv(cfg: Training, split: str) -> Iterator[str]:
    """Shakespeare's plays and poems and the KJV chapters (downloaded once, see ``corpus.py``)."""
    return select_split(corpus_documents(), cfg.val_fraction, split)


def stdlib_files() -> list[Path]:
    """The running interpreter's stdlib ``.py`` files, sorted, without site-packages, caches, tests."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p for p in root.rglob("*.py")
        if not SKIPPED_STDLIB_DIRS.intersection(p.relative_to(root).parts[:-1])
    )


@DATASETS.register("python_stdlib")
def python_stdlib(cfg: Training, split: str) -> Iterator[str]:
    """One document per stdlib source file (no download needed)."""
    docs = (p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files())
    return select_split(docs, cfg.val_fraction, split)


def expand_paths(cfg: Training) -> list[Path]:
    """The files named by ``dataset_path`` (globs expanded and sorted, in the order given)."""
    if not cfg.dataset_path:
        raise DataError(f"dataset {cfg.dataset!r} needs [training] dataset_path (files or glob patterns)")
    files: list[Path] = []
    for pattern in cfg.dataset_path:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise DataError(f"dataset {cfg.dataset!r}: no file matches dataset_path entry {pattern!r}")
        files += [Path(m) for m in matches if Path(m).is_file()]
    return files


@DATASETS.register("text")
def text(cfg: Training, split: str) -> Iterator[str]:
    """UTF-8 text files: one document per file, or per non-empty line with dataset_unit = "line"."""
    if cfg.dataset_unit not in TEXT_UNITS:
        raise DataError(f"unknown dataset_unit {cfg.dataset_unit!r}; allowed: {', '.join(TEXT_UNITS)}")
    files = expand_paths(cfg)

    def documents() -> Iterator[str]:
        for path in files:
            if cfg.dataset_unit == "document":
                yield path.read_text(encoding="utf-8", errors="replace")
            else:
                with path.open(encoding="utf-8", errors="replace") as f:
                    yield from (line.rstrip("\r\n") for line in f if line.strip())

    return select_split(documents(), cfg.val_fraction, split)


@DATASETS.register("jsonl")
def jsonl(cfg: Training, split: str) -> Iterator[str]:
    """JSON-lines files: one document per record, the text in field ``dataset_field``."""
    files = expand_paths(cfg)

    def documents() -> Iterator[str]:
        for path in files:
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if line.strip():
                        where = f"{path}:{lineno}"
                        yield _text_field(_parse_json(line, where), cfg.dataset_field, where)

    return select_split(documents(), cfg.val_fraction, split)


def _parse_json(line: str, where: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None


def _text_field(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise DataError(f"{where}: record has no string field {field!r} (set [training] dataset_field)")
    return record[field]


@DATASETS.register("hf")
def hf(cfg: Training, split: str) -> Iterator[str]:
    """A Hugging Face dataset's "train" split, streamed; dataset_path = [name] or [name, subset]."""
    try:
        import datasets
    except ImportError:
        raise DataError('dataset "hf" needs the datasets package: pip install "titanwarm[hf]"') from None
    if not 1 <= len(cfg.dataset_path) <= 2:
        raise DataError(f'dataset "hf" needs dataset_path = [name] or [name, subset], got {cfg.dataset_path}')
    try:
        stream = datasets.load_dataset(*cfg.dataset_path, split="train", streaming=True)
    except Exception as e:  # the hub and the loaders raise many types; all mean "cannot load"
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise DataError(f"hf dataset {cfg.dataset_path} could not be loaded ({reason})") from None
    docs = (_text_field(row, cfg.dataset_field, f"hf dataset {cfg.dataset_path[0]!r}") for row in stream)
    return select_split(docs, cfg.val_fraction, split)



@DATASETS.register("tokens")
def tokens(cfg: Training, split: str) -> Iterator[str]:
    """The documents of the token folders in ``dataset_path``, decoded with the tokenizer file their
    manifest names (BOS/EOS stripped). Training does not use this: it reads the tokens directly."""
    from titanwarm.data.token_folder import document_offsets, read_manifest
    from titanwarm.tokenizers import load_tokenizer

    for path in cfg.dataset_path:
        folder = Path(path)
        manifest = read_manifest(folder)
        tok = load_tokenizer(manifest["tokenizer"]["path"])
        dtype = np.dtype(manifest["dtype"])
        for record in manifest["files"]:
            ids = np.memmap(folder / f"{record['name']}.{split}.tok", dtype=dtype, mode="r") \
                if record[f"{split}_tokens"] else np.empty(0, dtype)
            starts = document_offsets(folder, record["name"], split)
            for a, b in zip(starts[:-1], starts[1:]):
                yield tok.decode(ids[a + 1 : b - 1].tolist())
