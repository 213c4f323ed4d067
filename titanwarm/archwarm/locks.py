"""Lock masks on transformer blocks: a locked block is an exact identity map that does not train.

Framework-agnostic: works on any residual block whose residual branches end in output projections
(Llama: ``attention.wo`` and ``feed_forward.w2``), sharded (FSDP2/TP DTensors) or not, wrapped by
activation checkpointing or compile or not. It imports nothing from a trainer.

Locking a block zeroes every weight except its norm weights (RMSNorm/LayerNorm keep their init:
they converge poorly from zero), so both residual branches output exactly zero; it sets
``requires_grad=False`` so the block gets no gradient (and, kept out of the optimizer, no state and
no weight decay); and, with ``skip_locked``, it sets the block's ``skip`` flag so the model's forward
leaves it out (the result is bit-identical: x + 0 = x). Unlocking sets the weights per the chosen
initialisation (``archwarm/unlock_init.py``) and makes them trainable again; the caller hands the
parameters to the optimizer.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from titanwarm.distributed.param_init import WRAPPER_PARTS

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.RMSNorm, nn.LayerNorm)


def unwrap(module: nn.Module) -> nn.Module:
    """The block inside activation-checkpoint / compile wrappers (attributes must be set there)."""
    while True:
        inner = next((getattr(module, a) for a in WRAPPER_PARTS
                      if isinstance(getattr(module, a, None), nn.Module)), None)
        if inner is None:
            return module
        module = inner


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers (by type, or a class name ending in "Norm", as in torchtitan)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm")


def block_weights(block: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name inside the block, parameter) for every non-norm parameter, names without wrapper parts."""
    block = unwrap(block)
    norm_params = {id(p) for m in block.modules() if is_norm(m) for p in m.parameters()}
    return [(n, p) for n, p in block.named_parameters() if id(p) not in norm_params]


class BlockLocks:
    """The lock mask of a model's blocks, and the operations that change it.

    ``blocks`` are (name prefix, module) pairs, e.g. ``("layers.3", model.layers["3"])``; the prefix
    names the block's parameters for seeded re-initialisation.
    """

    def __init__(self, blocks: Sequence[tuple[str, nn.Module]], skip_locked: bool = True) -> None:
        self.blocks = list(blocks)
        self.skip_locked = skip_locked
        self.locked = [False] * len(self.blocks)

    @property
    def n_active(self) -> int:
        return self.locked.count(False)

    def parameters(self, index: int) -> list[nn.Parameter]:
        """Every parameter of block ``index`` (norm weights included)."""
        return list(self.blocks[index][1].parameters())

    @torch.no_grad()
    def lock(self, index: int) -> None:
        """Make block ``index`` an exact identity map that does not train."""
        _, block = self.blocks[index]
        for _, param in block_weights(block):
            param.zero_()
        for param in block.parameters():
            param.requires_grad_(False)
            param.grad = None
        inner = unwrap(block)
        inner.skip = self.skip_locked
        self.locked[index] = True

    def unlock(self, index: int) -> list[nn.Parameter]:
        """Make block ``index`` trainable again (its weights are set by the caller's init first);
        returns its parameters for the optimizer."""
        _, block = self.blocks[index]
        for param in block.parameters():
            param.requires_grad_(True)
        unwrap(block).skip = False
        self.locked[index] = False
        return self.parameters(index)

    def state_dict(self) -> dict:
        """The lock mask (list of bools, block order)."""
        return {"locked": list(self.locked)}

    def load_state_dict(self, state: dict) -> None:
        """Re-apply a saved mask's flags (weights come from the model checkpoint, not from here)."""
        if len(state["locked"]) != len(self.blocks):
            raise ValueError(f"lock mask for {len(state['locked'])} blocks, model has {len(self.blocks)}")
        for index, locked in enumerate(state["locked"]):
            _, block = self.blocks[index]
            for param in block.parameters():
                param.requires_grad_(not locked)
            unwrap(block).skip = locked and self.skip_locked
        self.locked = list(state["locked"])
