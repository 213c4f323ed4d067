"""Documents from raw input files, for pre-tokenisation: text files (one document each), JSON lines
(plain, .gz, .zst/.zstd; one record per line, the text in a field) and parquet (a text column, read in
record batches with pyarrow). ``list_inputs`` expands folders into the files these can read."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Callable, Iterator

from titanwarm.data.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION = (".gz", ".zst", ".zstd")
TEXT_SUFFIXES = (".txt", ".md", ".text")
PARQUET_BATCH_ROWS = 1024

Progress = Callable[[int], None]
"""Called with the number of input bytes (on disk) read so far from the current file."""


def input_kind(path: Path) -> str | None:
    """"jsonl", "parquet", "text", or None for a file this module does not read."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in JSONL_SUFFIXES:
        return "jsonl"
    if last == ".parquet":
        return "parquet"
    if last in TEXT_SUFFIXES:
        return "text"
    return None


def list_inputs(inputs: list[str]) -> list[Path]:
    """The readable files named by ``inputs`` (folders walked recursively, sorted), in the given
    order; DataError for a missing path, an unreadable named file or a folder with nothing readable."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and input_kind(p))
            if not found:
                raise DataError(f"{path}: no .txt/.jsonl(.gz/.zst)/.parquet files inside")
            files += found
        elif path.is_file():
            if input_kind(path) is None:
                raise DataError(f"{path}: unknown input type (want .txt, .md, .jsonl/.json[.gz|.zst] or .parquet)")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def _open_binary(path: Path):
    """(decompressed binary stream, raw file) — the raw file's position is the progress in bytes."""
    raw = path.open("rb")
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.GzipFile(fileobj=raw), raw
    if suffix in (".zst", ".zstd"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), raw
    return raw, raw


def _jsonl(path: Path, field: str, progress: Progress) -> Iterator[str]:
    stream, raw = _open_binary(path)
    with raw, stream:
        for lineno, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8", errors="replace"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            text = record.get(field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: record has no string field {field!r} (use --field)")
            yield text
            if lineno % 256 == 0:
                progress(raw.tell())


def _parquet(path: Path, field: str, progress: Progress) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a file it cannot parse
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}; use --field)")
    rows, total_rows, size = 0, max(pf.metadata.num_rows, 1), path.stat().st_size
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field]):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text
        rows += batch.num_rows
        progress(size * rows // total_rows)


def _text(path: Path, progress: Progress) -> Iterator[str]:
    yield path.read_text(encoding="utf-8", errors="replace")
    progress(path.stat().st_size)


def read_documents(path: Path, field: str = "text", progress: Progress = lambda n: None) -> Iterator[str]:
    """The documents of one input file in file order."""
    kind = input_kind(path)
    if kind == "jsonl":
        return _jsonl(path, field, progress)
    if kind == "parquet":
        return _parquet(path, field, progress)
    if kind == "text":
        return _text(path, progress)
    raise DataError(f"{path}: unknown input type")
