"""``Prefetcher``: prepares a loader's next batches on a background thread (pinned for CUDA), so the
loader never sits on the training step's critical path, while ``state_dict`` still reports the
position after the last batch the training loop *consumed*."""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class Prefetcher:
    """Iterate a loader (``__next__``, ``state_dict``, ``load_state_dict``) ``depth`` batches ahead."""

    def __init__(self, loader: Any, depth: int, pin_memory: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.loader, self.depth, self.pin_memory = loader, depth, pin_memory
        self.name = getattr(loader, "name", "loader")
        self._state = loader.state_dict()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                inputs, labels = next(self.loader)
                if self.pin_memory:
                    inputs, labels = inputs.pin_memory(), labels.pin_memory()
                item: Any = ((inputs, labels), self.loader.state_dict())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the training thread, raised there
            self._queue.put(e)

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread = None
            self._stop = threading.Event()
            self._queue = queue.Queue(maxsize=self.depth)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        if self._thread is None:
            self.loader.load_state_dict(self._state)
            self._thread = threading.Thread(target=self._produce, name=f"prefetch {self.name}", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._thread = None
            raise item
        batch, self._state = item
        return batch

    def batches(self, n: int) -> Iterator[Batch]:
        """The wrapped loader's first ``n`` batches (position-independent; full-batch training)."""
        return self.loader.batches(n)

    def state_dict(self) -> dict:
        """The wrapped loader's state after the last consumed batch."""
        return self._state

    def load_state_dict(self, state: dict) -> None:
        """Drop the batches prepared ahead and continue from ``state``."""
        self._halt()
        self.loader.load_state_dict(state)
        self._state = self.loader.state_dict()

    def close(self) -> None:
        """Stop the background thread."""
        self._halt()
