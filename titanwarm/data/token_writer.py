"""Writing token folders (the format is described in ``token_folder``): ``PartWriter`` for one part,
``write_manifest`` last. Used by ``pretokenize`` (one part per input file, in worker processes) and by
the built-in corpus cache (``write_documents`` in the training process)."""

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Iterable

import numpy as np

from titanwarm.data.token_folder import FORMAT, MANIFEST, VERSION, file_sha256, token_dtype
from titanwarm.tokenizers import Tokenizer

FLUSH_TOKENS = 1 << 20
SPLITS = ("train", "val")


class PartWriter:
    """Writes one part (``NAME.{train,val}.{tok,idx}``) through temporary files; ``close()`` renames
    them into place and writes ``NAME.done.json`` last, so a part on disk is either whole or absent."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype, source: str) -> None:
        self.folder, self.name, self.dtype, self.source = folder, name, dtype, source
        self._files = {s: (folder / f".{name}.{s}.tok.tmp").open("wb") for s in SPLITS}
        self._buffers = {s: array("I") for s in SPLITS}
        self._offsets = {s: [0] for s in SPLITS}

    def add(self, split: str, ids: list[int]) -> None:
        """Append one document's ids (BOS ... EOS) to ``split``."""
        self._buffers[split].extend(ids)
        self._offsets[split].append(self._offsets[split][-1] + len(ids))
        if len(self._buffers[split]) >= FLUSH_TOKENS:
            self._flush(split)

    def _flush(self, split: str) -> None:
        buf = self._buffers[split]
        np.frombuffer(buf, dtype=np.uint32).astype(self.dtype).tofile(self._files[split])
        self._buffers[split] = array("I")

    def close(self) -> dict:
        """Finish the part; returns its record (also written to ``NAME.done.json``)."""
        record: dict = {"name": self.name, "source": self.source}
        for s in SPLITS:
            self._flush(s)
            self._files[s].close()
            os.replace(self.folder / f".{self.name}.{s}.tok.tmp", self.folder / f"{self.name}.{s}.tok")
            np.asarray(self._offsets[s], dtype=np.uint64).tofile(self.folder / f"{self.name}.{s}.idx")
            record[f"{s}_tokens"] = self._offsets[s][-1]
            record[f"{s}_docs"] = len(self._offsets[s]) - 1
        write_json(self.folder / f"{self.name}.done.json", record)
        return record


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def tokenizer_record(tokenizer: Tokenizer, path: str) -> dict:
    """The manifest's tokenizer entry."""
    return {"sha256": file_sha256(path), "path": str(path), "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}


def write_manifest(folder: Path, tokenizer: dict, records: list[dict], extra: dict) -> dict:
    """Write ``manifest.json`` (last) from the parts' records, in part order."""
    manifest = {"format": FORMAT, "version": VERSION, "tokenizer": tokenizer,
                "dtype": token_dtype(tokenizer["vocab_size"]).name, **extra,
                "totals": {f"{s}_{k}": sum(r[f"{s}_{k}"] for r in records) for s in SPLITS for k in ("tokens", "docs")},
                "files": sorted(records, key=lambda r: r["name"])}
    write_json(folder / MANIFEST, manifest)
    return manifest


def write_documents(folder: Path, name: str, tokenizer: Tokenizer, docs: Iterable[tuple[str, str]],
                    source: str) -> dict:
    """Tokenise ``(split, text)`` pairs into part ``name`` of ``folder`` (in this process)."""
    writer = PartWriter(folder, name, token_dtype(tokenizer.vocab_size), source)
    for split, text in docs:
        writer.add(split, tokenizer.encode(text, bos=True, eos=True))
    return writer.close()
