"""``WindowLoader``: batches of seq_len + 1 token windows from memory-mapped token streams, shuffled
per epoch with a seed, blended over several sources, resumable from one integer.

Window g of the run (g = 0, 1, ...; the *position*) is a pure function of g: the blend picks the source
and that source's own window counter l; with shuffle on, epoch l // n and the seeded permutation of
epoch e give the window id (windows are the stream cut into n = tokens // (seq_len + 1) pieces, the
tail dropped); with shuffle off, window l is tokens [l (seq_len + 1), (l + 1)(seq_len + 1)) of the
stream repeated end to end (exactly the packing of ``TokenWindowLoader``). A global micro-batch is
dp_world * local_batch_size consecutive windows and rank r reads only windows [g + rB, g + (r+1)B),
so batches do not depend on how the global batch is split, and the state is the position plus a
fingerprint of the data and layout: O(1) to save and to resume, valid after a dp or batch change.

Permutations are computed once per node (local rank 0 writes ``$TITANWARM_CACHE/permutations/*.npy``,
the others memory-map it; a rank that waits too long computes its own identical copy: never a hang).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from titanwarm.data.corpus import cache_dir
from titanwarm.data.errors import DataError
from titanwarm.data.token_folder import TokenStream

Batch = tuple[torch.Tensor, torch.Tensor]
BLEND_PERIOD = 1 << 14
"""Windows per blend period: a mixture's weights are met exactly every this many windows."""
NODE_WAIT_S = 300.0
"""How long a rank waits for local rank 0's file before computing its own copy."""


def node_once(path: Path, build: Callable[[Path], None]) -> Path:
    """Make ``path`` once per node: local rank 0 calls ``build(tmp)`` and renames tmp to ``path``;
    other ranks wait for it (and build their own copy after ``NODE_WAIT_S``: identical, so no hang)."""
    if not path.exists():
        if int(os.environ.get("LOCAL_RANK", "0")) != 0:
            deadline = time.monotonic() + NODE_WAIT_S
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            build(tmp)
            try:
                os.rename(tmp, path)
            except OSError:  # another process finished first (its copy is identical)
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
    return path


class Permutations:
    """The seeded per-epoch permutations of one source's ``n`` windows (two epochs kept open)."""

    def __init__(self, n: int, seed: int, salt: str) -> None:
        self.n, self.seed, self.salt = n, seed, salt
        self._open: dict[int, np.ndarray] = {}

    def compute(self, epoch: int) -> np.ndarray:
        """The permutation of ``epoch``: PCG64 seeded by (seed, epoch, source), uint32 or int64 ids."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, int(self.salt[:15], 16)]))
        perm = rng.permutation(self.n)
        return perm.astype(np.uint32) if self.n < 1 << 32 else perm

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch not in self._open:
            path = cache_dir() / "permutations" / f"{self.salt[:24]}-n{self.n}-seed{self.seed}-epoch{epoch}.npy"

            def build(tmp: Path) -> None:
                with tmp.open("wb") as f:
                    np.save(f, self.compute(epoch))

            self._open = {e: p for e, p in self._open.items() if e > epoch - 2}
            self._open[epoch] = np.load(node_once(path, build), mmap_mode="r")
        return self._open[epoch]


class Blend:
    """Deterministic mixing of sources by weight: within every period of ``BLEND_PERIOD`` windows, the
    window goes to the source furthest below its share (Megatron's rule), so window g's source and its
    index within that source are O(1) lookups."""

    def __init__(self, weights: list[float]) -> None:
        w = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.source = np.empty(BLEND_PERIOD, dtype=np.int64)
        self.rank = np.empty(BLEND_PERIOD, dtype=np.int64)
        counts = np.zeros(len(w), dtype=np.int64)
        for j in range(BLEND_PERIOD):
            s = int(np.argmax(w * (j + 1) - counts))
            self.source[j], self.rank[j] = s, counts[s]
            counts[s] += 1
        self.per_period = counts
        self.share = counts / BLEND_PERIOD

    def locate(self, g: int) -> tuple[int, int]:
        """(source, window index within the source) of global window ``g``."""
        q, j = divmod(g, BLEND_PERIOD)
        s = int(self.source[j])
        return s, q * int(self.per_period[s]) + int(self.rank[j])


class WindowLoader:
    """Iterator of ``(inputs, labels)`` LongTensors [local_batch_size, seq_len] (see module doc)."""

    def __init__(self, streams: list[TokenStream], seq_len: int, local_batch_size: int, dp_rank: int = 0,
                 dp_world: int = 1, shuffle: bool = False, seed: int = 0, weights: list[float] | None = None,
                 name: str = "tokens") -> None:
        if seq_len < 1 or local_batch_size < 1 or not 0 <= dp_rank < dp_world:
            raise DataError(f"{name}: need seq_len >= 1, local_batch_size >= 1, 0 <= dp_rank < dp_world; got "
                            f"{seq_len}, {local_batch_size}, {dp_rank}, {dp_world}")
        weights = weights or [float(s.tokens) for s in streams]
        if len(weights) != len(streams) or any(not w > 0 for w in weights):
            raise DataError(f"{name}: need one positive weight per source, got {weights} for {len(streams)} sources")
        self.window = seq_len + 1
        for s in streams:
            if s.tokens == 0 or (shuffle and s.tokens < self.window):
                raise DataError(f"{s.name}: {s.tokens} tokens, fewer than one window of {self.window}")
        self.streams, self.name = streams, name
        for s in streams:
            s.random_access = s.random_access or shuffle
        self.local_batch_size, self.dp_rank, self.dp_world = local_batch_size, dp_rank, dp_world
        self.shuffle = shuffle
        self.blend = Blend(weights) if len(streams) > 1 else None
        if self.blend is not None and not self.blend.per_period.all():
            raise DataError(f"{name}: weights {weights} give a source less than 1/{BLEND_PERIOD} of the windows")
        self.n_windows = [s.tokens // self.window for s in streams]
        self.perms = [Permutations(n, seed, s.fingerprint) for n, s in zip(self.n_windows, streams)]
        self.layout = {"data": [s.name for s in streams], "seq_len": seq_len, "shuffle": shuffle,
                       "seed": seed if shuffle else None,
                       "weights": None if self.blend is None else [round(x, 6) for x in self.blend.share]}
        key = json.dumps([[s.fingerprint for s in streams], {k: v for k, v in self.layout.items() if k != "data"}])
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()
        self.position = 0

    # ------------------------------------------------------------------ windows
    def locate(self, g: int) -> tuple[int, int]:
        """(source, token offset in that source's stream) of global window ``g``."""
        s, local = (0, g) if self.blend is None else self.blend.locate(g)
        if not self.shuffle:
            return s, local * self.window
        epoch, pos = divmod(local, self.n_windows[s])
        return s, int(self.perms[s](epoch)[pos]) * self.window

    def read_window(self, g: int) -> np.ndarray:
        s, start = self.locate(g)
        return self.streams[s].read(start, self.window)

    def batch_at(self, g: int) -> Batch:
        """This rank's micro-batch of the global micro-batch starting at window ``g``."""
        first = g + self.dp_rank * self.local_batch_size
        windows = torch.from_numpy(np.stack([self.read_window(first + i) for i in range(self.local_batch_size)]))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def repetition(self, total_windows: int) -> list[float]:
        """How many times each source's tokens are read in ``total_windows`` windows."""
        shares = [1.0] if self.blend is None else self.blend.share
        return [math.ceil(total_windows * sh) * self.window / s.tokens for sh, s in zip(shares, self.streams)]

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> WindowLoader:
        return self

    def __next__(self) -> Batch:
        batch = self.batch_at(self.position)
        self.position += self.dp_world * self.local_batch_size
        return batch

    def batches(self, n: int) -> Iterator[Batch]:
        """The first ``n`` batches of the split, the same every call (for validation)."""
        step = self.dp_world * self.local_batch_size
        for i in range(n):
            yield self.batch_at(i * step)

    def state_dict(self) -> dict:
        """Windows consumed by the whole run (``position``) and the data's fingerprint."""
        return {"position": self.position, "fingerprint": self.fingerprint, "layout": self.layout}

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state["position"]``; DataError if the data or the window layout changed."""
        if not isinstance(state, dict) or type(state.get("position")) is not int or state["position"] < 0 \
                or not isinstance(state.get("fingerprint"), str):
            raise DataError(f"{self.name}: bad loader state {state!r} (want position >= 0 and a fingerprint; "
                            "a checkpoint from before token loading?)")
        if state["fingerprint"] != self.fingerprint:
            old = state.get("layout") or {}
            changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.layout.items() if old.get(k) != v]
            raise DataError(f"{self.name}: the checkpoint was made with other data or window layout "
                            f"({'; '.join(changed) or 'same names, different contents'}); resume with the "
                            "same dataset files, seq_len and shuffle settings")
        self.position = state["position"]
