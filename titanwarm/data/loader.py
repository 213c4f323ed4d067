"""``build_dataloader`` (the trainer's entry point) and ``TokenWindowLoader``, the streaming loader of
the document sources ("text", "jsonl", "hf", custom ones): documents -> BOS/EOS-delimited token stream
-> windows of seq_len + 1 tokens -> per-rank (inputs, labels) batches, resumable from a three-int
position. "tokens" and the built-in corpora use the memory-mapped ``WindowLoader`` instead.

Every rank reads and tokenizes the whole stream and keeps its own part of each global micro-batch
(dp_world * local_batch_size consecutive windows; rank r takes windows [r*B, (r+1)*B)). Batches
therefore depend only on the global batch, not on how it is split over ranks, and the state (the
stream position of the next unconsumed token) is the same on every rank.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Callable, Iterator

import numpy as np
import torch

from titanwarm.config.sections import JobConfig, Training
from titanwarm.data.errors import DataError
from titanwarm.data.prefetch import Prefetcher
from titanwarm.data.splits import check_split, iter_documents
from titanwarm.data.token_cache import PRETOKENIZED_SOURCES, cached_token_folder
from titanwarm.data.token_folder import open_tokens
from titanwarm.data.window_loader import WindowLoader
from titanwarm.tokenizers import Tokenizer

Batch = tuple[torch.Tensor, torch.Tensor]
STATE_KEYS = ("epoch", "doc", "offset")


class TokenWindowLoader:
    """Iterator of ``(inputs, labels)`` LongTensors of shape [local_batch_size, seq_len].

    ``documents(epoch)`` must return a fresh iterator over the split's documents of ``epoch`` each call
    (the same order every epoch, or a seeded per-epoch shuffle). The stream
    restarts at the first document after the last, forever (tokens left over at the end of an epoch
    carry into the next), so training never runs dry and ``batches(n)`` always yields n batches.
    """

    def __init__(
        self,
        documents: Callable[[int], Iterator[str]],
        tokenizer: Tokenizer,
        seq_len: int,
        local_batch_size: int,
        dp_rank: int = 0,
        dp_world: int = 1,
        name: str = "dataset",
    ) -> None:
        if seq_len < 1 or local_batch_size < 1 or not 0 <= dp_rank < dp_world:
            raise DataError(
                f"{name}: need seq_len >= 1, local_batch_size >= 1, 0 <= dp_rank < dp_world; got "
                f"{seq_len}, {local_batch_size}, {dp_rank}, {dp_world}"
            )
        self._documents = documents
        self._tokenizer = tokenizer
        self._shape = (local_batch_size, seq_len + 1)
        self._rank_tokens = local_batch_size * (seq_len + 1)
        self._dp_rank = dp_rank
        self._global_tokens = dp_world * self._rank_tokens
        self.name = name
        self._seek(epoch=0, doc=0, offset=0)

    def _seek(self, epoch: int, doc: int, offset: int) -> None:
        """Position the stream at token ``offset`` of document ``doc`` of ``epoch``."""
        self._docs = itertools.islice(self._documents(epoch), doc, None)
        self._next_doc = (epoch, doc)
        self._segments: deque[tuple[int, int, list[int]]] = deque()  # (epoch, doc, tokens) read
        self._head = offset  # tokens of the first segment (or of the next document) already consumed
        self._buffered = -offset

    def _read_document(self) -> None:
        """Tokenize the next document (the first one again after the last) into the buffer."""
        epoch, doc = self._next_doc
        text = next(self._docs, None)
        if text is None:
            epoch, doc = epoch + 1, 0
            self._docs = self._documents(epoch)
            text = next(self._docs)
        tokens = self._tokenizer.encode(text, bos=True, eos=True)
        self._segments.append((epoch, doc, tokens))
        self._buffered += len(tokens)
        self._next_doc = (epoch, doc + 1)

    def _take(self, n: int) -> list[int]:
        """Remove and return the next ``n`` buffered tokens."""
        out: list[int] = []
        while len(out) < n:
            tokens = self._segments[0][2]
            chunk = tokens[self._head : self._head + n - len(out)]
            out += chunk
            self._head += len(chunk)
            if self._head == len(tokens):
                self._segments.popleft()
                self._head = 0
        self._buffered -= n
        return out

    def __iter__(self) -> TokenWindowLoader:
        return self

    def __next__(self) -> Batch:
        while self._buffered < self._global_tokens:
            self._read_document()
        start = self._dp_rank * self._rank_tokens
        tokens = self._take(self._global_tokens)[start : start + self._rank_tokens]
        windows = torch.tensor(tokens, dtype=torch.long).view(self._shape)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def batches(self, n: int) -> Iterator[Batch]:
        """Rewind to the start of the split and yield its first ``n`` batches (for validation: every
        call sees the same batches; a split shorter than n batches repeats)."""
        self._seek(epoch=0, doc=0, offset=0)
        for _ in range(n):
            yield next(self)

    @property
    def epoch(self) -> int:
        """Epoch of the next unconsumed token (0 during the first pass)."""
        return self.state_dict()["epoch"]

    def state_dict(self) -> dict[str, int]:
        """Stream position of the next unconsumed token: epoch, document index in the split, token
        offset into that document's tokens (BOS included)."""
        epoch, doc = self._segments[0][:2] if self._segments else self._next_doc
        return {"epoch": epoch, "doc": doc, "offset": self._head}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at a position from ``state_dict()``; only that one document is re-tokenized."""
        valid = sorted(state) == sorted(STATE_KEYS) and all(type(v) is int and v >= 0 for v in state.values())
        if not valid:
            raise DataError(f"{self.name}: bad loader state {state!r} (want non-negative ints {STATE_KEYS})")
        self._seek(**state)


def shuffled_documents(cfg: Training, split: str, shuffle: bool) -> Callable[[int], Iterator[str]]:
    """``documents(epoch)`` of a document source: file order, or with ``shuffle`` a seeded permutation
    (``cfg.shuffle_seed``, epoch) of the split's documents (read once into memory)."""
    if not shuffle:
        return lambda epoch: iter_documents(cfg, split)
    docs = list(iter_documents(cfg, split))

    def documents(epoch: int) -> Iterator[str]:
        order = np.random.Generator(np.random.PCG64([cfg.shuffle_seed, epoch])).permutation(len(docs))
        return (docs[i] for i in order)

    return documents


def build_dataloader(
    cfg: JobConfig, tokenizer: Tokenizer, dp_rank: int, dp_world: int, split: str
) -> TokenWindowLoader | WindowLoader | Prefetcher:
    """The loader of ``split`` (iterate "train"; read "val" with ``batches(validation.steps)``).

    "tokens" and the built-in corpora read memory-mapped token folders (``WindowLoader``), the other
    sources stream and tokenise documents (``TokenWindowLoader``); "train" is read ``prefetch``
    batches ahead on a background thread, pinned when training on CUDA.
    """
    check_split(split)
    t = cfg.training
    name = f"dataset {t.dataset!r} split {split!r}"
    if t.dataset == "tokens" or t.dataset in PRETOKENIZED_SOURCES:
        paths = ([str(cached_token_folder(t, tokenizer, cfg.model.tokenizer_path))]
                 if t.dataset != "tokens" else t.dataset_path)
        streams = [open_tokens(p, split, cfg.model.tokenizer_path, tokenizer.vocab_size, t.val_fraction)
                   for p in paths]
        loader = WindowLoader(streams, t.seq_len, t.local_batch_size, dp_rank, dp_world,
                              shuffle=t.shuffle and split == "train", seed=t.shuffle_seed,
                              weights=t.dataset_weights or None, name=name)
        if split == "train" and t.dataset_max_repeat > 0:
            global_batch = t.global_batch_size if t.global_batch_size != -1 else t.local_batch_size * dp_world
            for path, reps in zip(paths, loader.repetition(t.steps * global_batch)):
                if reps > t.dataset_max_repeat:
                    raise DataError(f"{name}: {t.steps} steps read {path} {reps:.2f} times over, more than "
                                    f"dataset_max_repeat = {t.dataset_max_repeat} (add data, lower its weight "
                                    "or train fewer steps)")
    else:
        documents = shuffled_documents(t, split, t.shuffle and split == "train")
        loader = TokenWindowLoader(documents, tokenizer, seq_len=t.seq_len,
                                   local_batch_size=t.local_batch_size, dp_rank=dp_rank, dp_world=dp_world,
                                   name=name)
    if split == "train" and t.prefetch > 0:
        pin = t.device != "cpu" and torch.cuda.is_available()
        return Prefetcher(loader, t.prefetch, pin_memory=pin)
    return loader
