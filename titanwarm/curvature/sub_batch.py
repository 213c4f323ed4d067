"""``[curvature] batch_size``: the first k sequences of a batch, whatever its form.

titanwarm's trainer hands the tracker ``(inputs, labels)``; the torchtitan glues hand it
torchtitan's forms (``(args, kwargs, labels)`` captured at the model's forward in 0.2.x, the
data loader's ``(input_dict, labels)`` in 0.3.x). :func:`sub_batch` cuts every per-sequence part
of such a structure to its first k sequences: tensors and flex-attention ``BlockMask``\\ s whose
leading dimension is the batch's (that of the first tensor found), inside plain tuples, lists and
dicts. Anything else is kept as it is (a broadcast ``[1, T]`` tensor, ``None``, a number).
Packed metadata (a named tuple such as torchtitan's ``VarlenMetadata``, whose cumulative lengths
run over the whole flattened batch) cannot be cut per sequence: :class:`UncuttableBatch`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask


class UncuttableBatch(TypeError):
    """The batch holds a part that cannot be cut to its first sequences."""


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch if batch.dim() > 0 else None
    if isinstance(batch, dict):
        batch = list(batch.values())
    if type(batch) in (tuple, list):
        for item in batch:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _cut(part: Any, size: int, rows: int) -> Any:
    if isinstance(part, torch.Tensor):
        return part[:size] if part.dim() > 0 and part.shape[0] == rows else part
    if isinstance(part, BlockMask):
        return part[:size] if part.kv_num_blocks.shape[0] == rows else part
    if isinstance(part, dict):
        return {k: _cut(v, size, rows) for k, v in part.items()}
    if type(part) in (tuple, list):
        return type(part)(_cut(v, size, rows) for v in part)
    if isinstance(part, tuple):  # a named tuple: fields of its own meaning, e.g. packed lengths
        raise UncuttableBatch(f"a {type(part).__name__} cannot be cut to the batch's first "
                              f"{size} sequences")
    return part


def sub_batch(batch: Any, size: int) -> Any:
    """The first ``size`` sequences of ``batch``; ``size`` 0, or at least the batch's number of
    sequences: ``batch`` itself. Its HVP is the HVP of the sub-batch's mean loss. Raises
    :class:`UncuttableBatch` for packed metadata (see the module docstring)."""
    first = _first_tensor(batch)
    if size <= 0 or first is None or size >= first.shape[0]:
        return batch
    return _cut(batch, size, first.shape[0])
