"""``ModelSpec``: what the trainer needs to know about a registered model family."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from titanwarm.config.sections import JobConfig


@dataclass(frozen=True)
class ModelSpec:
    """A model family: its class, its size presets and the function that parallelises it.

    ``parallelize_fn(model, parallel_dims, cfg) -> model`` applies TP, activation checkpointing,
    compile and FSDP2 to a model built by ``build``.
    """

    name: str
    cls: type[nn.Module]
    flavors: dict[str, Any]
    parallelize_fn: Callable[..., nn.Module]

    def build(self, cfg: JobConfig, vocab_size: int) -> nn.Module:
        """The ``[model] flavor`` preset on the meta device, with the tokenizer's vocabulary size and
        a RoPE table as long as ``[training] seq_len``; materialise it with ``init_model``."""
        if cfg.model.flavor not in self.flavors:
            raise KeyError(f"unknown {self.name} flavor {cfg.model.flavor!r}; "
                           f"known: {', '.join(self.flavors)}")
        args = dataclasses.replace(self.flavors[cfg.model.flavor], vocab_size=vocab_size,
                                   max_seq_len=cfg.training.seq_len, init=cfg.model.init,
                                   **cfg.stabilizers.model_overrides())  # QK-Norm, soft-caps, QK-Clip
        with torch.device("meta"):
            return self.cls(args)
