"""The atomic folder protocol: how a checkpoint folder becomes complete, is found, checked and pruned.

A save writes into ``.tmp-<name>``; once every rank's data is there, rank 0 writes ``meta.json``
(with a manifest: the size of every file) and the ``COMPLETE`` marker, both fsynced, and renames the
folder to ``<name>``. Only ``step-N`` folders with the marker and a matching manifest are loaded;
leftover ``.tmp-*`` folders are deleted at start-up. Nothing here knows what the files hold.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from titanwarm.checkpoint.errors import CorruptCheckpointError

MARKER = "COMPLETE"
META = "meta.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def fsync_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and fsync it."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a directory (its entries), where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def folder_bytes(path: Path) -> int:
    """Total size of the files directly in ``path``."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def remove_stale(folder: Path) -> None:
    """Delete the ``.tmp-*`` leftovers of interrupted saves."""
    for stale in folder.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def fresh_tmp(folder: Path, name: str) -> Path:
    """An empty ``.tmp-<name>`` folder to save into (rank 0 only)."""
    tmp = folder / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def complete_steps(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints (marker present), newest first."""
    if not folder.is_dir():
        return []
    found = []
    for d in folder.iterdir():
        m = STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / MARKER).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found, reverse=True)


def commit(tmp: Path, final: Path, meta: dict, marker: str) -> None:
    """Make ``tmp`` the complete checkpoint ``final`` (rank 0, once every rank's data is written):
    manifest into ``meta``, ``meta.json``, marker, rename over any older ``final``."""
    meta["files"] = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
    fsync_write(tmp / META, json.dumps(meta, indent=1))
    fsync_write(tmp / MARKER, marker + "\n")
    fsync_dir(tmp)
    if final.exists():  # an older run's (or an unreadable) folder of that name: replace it
        old = final.parent / f".tmp-replaced-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, final)
    fsync_dir(final.parent)


def prune(folder: Path, keep_latest_k: int) -> None:
    """Delete all but the newest ``keep_latest_k`` complete checkpoints (0 keeps every one)."""
    if keep_latest_k <= 0:
        return
    for _, path in complete_steps(folder)[keep_latest_k:]:
        shutil.rmtree(path, ignore_errors=True)


def read_checked_meta(path: Path) -> dict:
    """``meta.json`` of a complete folder, after checking every file against its manifest."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"checkpoint {path} is unreadable: {META}: {e}") from e
    for name, size in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        if f.stat().st_size != size:
            raise CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt: {name} has "
                                         f"{f.stat().st_size} bytes, {size} were written")
    return meta


def fault_drill_pause(step: int, rank: int) -> None:
    """Fault drill for tests: with ``TITANWARM_FAULT_SAVE_PAUSE=STEP:SECONDS`` in the environment,
    the save of step STEP sleeps after its data is written and before it is made complete, so a test
    can kill the run in the middle of a save."""
    spec = os.environ.get("TITANWARM_FAULT_SAVE_PAUSE", "")
    if spec and int(spec.split(":")[0]) == step:
        if rank == 0:
            print(f"fault drill: pausing inside the save of step {step}", flush=True)
        time.sleep(float(spec.split(":")[1]))
