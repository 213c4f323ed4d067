"""Pre-tokenised token folders on disk, and ``TokenStream``: one split of them as a flat, memory-mapped
token sequence.

A titanwarm token folder (written by ``python -m titanwarm.data.pretokenize``) holds, per input file
NAME (a five-digit part number):
  NAME.train.tok / NAME.val.tok   headerless token ids (uint16 when the vocabulary fits, else uint32);
                                  every document is stored as BOS, its tokens, EOS
  NAME.train.idx / NAME.val.idx   headerless uint64 document start offsets (documents + 1 entries)
  NAME.done.json                  the part's record, written once its files are complete
and ``manifest.json``, written last: format, tokenizer (sha256, vocab size, BOS/EOS ids), dtype and the
per-part token and document counts. A folder without a manifest is read as someone else's token
shards: OLMo-core headerless ``.npy`` arrays (or ordinary ``np.save`` files), nanoGPT raw uint16
``.bin`` files and llm.c/modded-nanogpt ``.bin`` shards (256 int32 header); those have no held-out
split, so the last ``val_fraction`` of their tokens is the validation split.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from titanwarm.data.errors import DataError

FORMAT = "titanwarm-tokens"
VERSION = 1
MANIFEST = "manifest.json"
LLMC_MAGIC = {20240520: np.uint16, 20240801: np.uint32}
"""llm.c / modded-nanogpt shard header magic -> token dtype (header: 256 int32, [magic, version, n])."""
LLMC_HEADER_BYTES = 256 * 4
NPY_MAGIC = b"\x93NUMPY"
SHARD_SUFFIXES = (".npy", ".bin")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (the tokenizer's identity in a manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The parsed ``manifest.json`` of a titanwarm token folder (DataError if unusable)."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{folder}: no {MANIFEST} (an unfinished pretokenize run? run "
                        f"`python -m titanwarm.data.pretokenize` again to complete it)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"{path}: not a {FORMAT} v{VERSION} manifest")
    return manifest


@dataclass(frozen=True)
class Part:
    """One memory-mappable run of tokens: ``path`` from byte ``offset``, ``tokens`` ids of ``dtype``."""

    path: Path
    dtype: np.dtype
    tokens: int
    offset: int = 0

    def open(self, random_access: bool = False) -> np.ndarray:
        """The tokens, memory-mapped read-only; ``random_access`` turns off the kernel's read-ahead
        (a shuffled window is a few KiB: read-ahead would fault in and keep ~32x more)."""
        with self.path.open("rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if random_access and hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_RANDOM)
        return np.frombuffer(mm, dtype=self.dtype, count=self.tokens, offset=self.offset)


class TokenStream:
    """The parts of one split concatenated into a flat token sequence, read by ``read(start, n)``.

    Only the parts a read touches are mapped (lazily, once), so opening is O(number of files) and
    memory grows with what is read, not with the dataset. ``fingerprint`` identifies the data.
    """

    def __init__(self, parts: list[Part], fingerprint: str, name: str, vocab_size: int | None = None) -> None:
        self.parts = [p for p in parts if p.tokens > 0]
        self.starts = np.cumsum([0] + [p.tokens for p in self.parts], dtype=np.int64)
        self.tokens = int(self.starts[-1])
        self.fingerprint = fingerprint
        self.name = name
        self.vocab_size = vocab_size
        self.random_access = False
        """Set by a shuffling reader: map the parts without read-ahead."""
        self._maps: dict[int, np.ndarray] = {}

    def _map(self, i: int) -> np.ndarray:
        if i not in self._maps:
            self._maps[i] = self.parts[i].open(self.random_access)
        return self._maps[i]

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) as int64, wrapping around the end of the stream."""
        out = np.empty(n, dtype=np.int64)
        done = 0
        while done < n:
            pos = (start + done) % self.tokens
            i = int(np.searchsorted(self.starts, pos, side="right")) - 1
            local = pos - int(self.starts[i])
            take = min(n - done, self.parts[i].tokens - local)
            out[done : done + take] = self._map(i)[local : local + take]
            done += take
        if self.vocab_size is not None and n and int(out.max()) >= self.vocab_size:
            bad = int(out.max())
            raise DataError(f"{self.name}: token id {bad} >= vocab size {self.vocab_size} near token {start} "
                            "(corrupt token file, or shards made with another tokenizer)")
        return out


def _check_size(path: Path, expected_bytes: int) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: missing (listed in the manifest)") from None
    if size != expected_bytes:
        raise DataError(f"{path}: {size} bytes, the manifest says {expected_bytes} (truncated or corrupt)")


def open_token_folder(folder: Path, split: str, tokenizer_sha: str, vocab_size: int) -> TokenStream:
    """The ``split`` of a titanwarm token folder, checked against its manifest and the tokenizer."""
    manifest = read_manifest(folder)
    tok = manifest["tokenizer"]
    if tok["sha256"] != tokenizer_sha:
        raise DataError(f"{folder}: made with tokenizer sha256 {tok['sha256'][:12]}... "
                        f"({tok.get('path', '?')}), but [model] tokenizer_path has sha256 {tokenizer_sha[:12]}...; "
                        "pretokenize again with this tokenizer or point tokenizer_path at that one")
    dtype = np.dtype(manifest["dtype"])
    parts = []
    for record in manifest["files"]:
        n = record[f"{split}_tokens"]
        tok_path = folder / f"{record['name']}.{split}.tok"
        _check_size(tok_path, n * dtype.itemsize)
        _check_size(folder / f"{record['name']}.{split}.idx", (record[f"{split}_docs"] + 1) * 8)
        parts.append(Part(tok_path, dtype, n))
    canonical = json.dumps(manifest, sort_keys=True).encode()
    return TokenStream(parts, hashlib.sha256(canonical).hexdigest(), f"{folder} ({split})", vocab_size)


def document_offsets(folder: Path, name: str, split: str) -> np.ndarray:
    """Start offsets of the documents of part ``name`` in ``split`` (documents + 1 entries)."""
    return np.fromfile(folder / f"{name}.{split}.idx", dtype=np.uint64).astype(np.int64)


def _shard_part(path: Path, vocab_size: int) -> Part:
    """A foreign shard as a ``Part``: .npy with or without a numpy header, llm.c .bin or raw .bin."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(LLMC_HEADER_BYTES)
    if path.suffix == ".npy" and head.startswith(NPY_MAGIC):
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 1 or arr.dtype.kind not in "ui":
            raise DataError(f"{path}: expected a 1-D integer token array, got {arr.dtype} {arr.shape}")
        return Part(path, arr.dtype, arr.shape[0], arr.offset)
    if path.suffix == ".bin" and len(head) == LLMC_HEADER_BYTES:
        magic, _version, n = np.frombuffer(head, dtype=np.int32)[:3]
        if int(magic) in LLMC_MAGIC:
            dtype = np.dtype(LLMC_MAGIC[int(magic)])
            if LLMC_HEADER_BYTES + int(n) * dtype.itemsize > size:
                raise DataError(f"{path}: header says {n} tokens but the file is {size} bytes (truncated)")
            return Part(path, dtype, int(n), LLMC_HEADER_BYTES)
    dtype = np.dtype(np.uint16) if path.suffix == ".bin" else token_dtype(vocab_size)
    if size % dtype.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of {dtype} tokens (truncated?)")
    return Part(path, dtype, size // dtype.itemsize)


def open_token_shards(folder: Path, split: str, val_fraction: float, vocab_size: int) -> TokenStream:
    """Foreign token shards (every .npy/.bin under ``folder``, sorted, or one such file): the first
    1 - val_fraction of their concatenated tokens is "train", the rest "val"."""
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.suffix in SHARD_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no {MANIFEST} and no .npy/.bin token shards")
    parts = [_shard_part(p, vocab_size) for p in files]
    total = sum(p.tokens for p in parts)
    cut = total - round(total * val_fraction)
    lo, hi = (0, cut) if split == "train" else (cut, total)
    kept, pos = [], 0
    for p in parts:  # keep [lo, hi) of the concatenation
        a, b = max(lo, pos), min(hi, pos + p.tokens)
        if a < b:
            kept.append(Part(p.path, p.dtype, b - a, p.offset + (a - pos) * p.dtype.itemsize))
        pos += p.tokens
    key = json.dumps([[str(p.relative_to(folder)) if p != folder else p.name, p.stat().st_size] for p in files]
                     + [val_fraction]).encode()
    return TokenStream(kept, hashlib.sha256(key).hexdigest(), f"{folder} ({split})", vocab_size)


def open_tokens(path: str, split: str, tokenizer_path: str, vocab_size: int, val_fraction: float) -> TokenStream:
    """A titanwarm token folder (has a manifest) or a folder/file of foreign token shards."""
    folder = Path(path)
    if not folder.exists():
        raise DataError(f"token data {path!r} not found (set [training] dataset_path)")
    if folder.is_dir() and (folder / MANIFEST).exists() or folder.is_dir() and any(folder.glob("*.done.json")):
        return open_token_folder(folder, split, file_sha256(tokenizer_path), vocab_size)
    return open_token_shards(folder, split, val_fraction, vocab_size)
