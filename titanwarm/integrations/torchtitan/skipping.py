"""Skipping locked blocks in torchtitan's forward, without editing the model code.

torchtitan's Llama 3 ``forward`` (0.2.2 and 0.3.x) runs ``for layer in self.layers.values()``. The
adapter swaps the class of that one ``ModuleDict`` instance for a subclass whose ``values()``
leaves out blocks whose ``skip`` flag is set (``archwarm.locks.BlockLocks`` sets it on lock, clears
it on unlock). Names, ``items()``, ``state_dict`` and ``parameters()`` are unchanged.
"""

from __future__ import annotations

from torch import nn

from titanwarm.archwarm.locks import unwrap


class SkipLockedMixin:
    """``values()`` without the blocks whose ``skip`` flag is set (torchtitan's forward iterates
    ``self.layers.values()``); every other view of the dict is unchanged."""

    def values(self):  # type: ignore[override]
        return [m for m in super().values() if not getattr(unwrap(m), "skip", False)]


class SkipLockedModuleDict(SkipLockedMixin, nn.ModuleDict):
    pass


_SKIP_CLASSES: dict[type, type] = {nn.ModuleDict: SkipLockedModuleDict}


def install_skipping(layers: nn.Module) -> None:
    """Swap ``layers``' class for its skipping subclass (in place; idempotent)."""
    cls = type(layers)
    if issubclass(cls, SkipLockedMixin):
        return
    if not isinstance(layers, nn.ModuleDict):
        raise TypeError(f"model.layers must be an nn.ModuleDict (torchtitan), got {cls.__name__}")
    if cls not in _SKIP_CLASSES:
        _SKIP_CLASSES[cls] = type(f"SkipLocked{cls.__name__}", (SkipLockedMixin, cls), {})
    layers.__class__ = _SKIP_CLASSES[cls]