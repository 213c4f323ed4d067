"""How run state travels through DCP: the model in place, every other state as a pickled skeleton
plus its tensors, and the per-rank RNG states.

- ``ModelState``: the model parts as one ``Stateful`` (``get/set_model_state_dict``), saved under
  DCP key ``"model"`` and loaded in place, so DCP reshards it to the current layout.
- ``pack``: a state dict with every tensor replaced by a reference; the tensors go into one flat
  ``"tensors"`` dict that DCP saves sharded (a DTensor stays a DTensor). The skeleton (small, no
  tensors) is pickled into a byte string, because DCP would flatten a nested dict.
- ``load_buffers``: for each reference, a buffer laid out like the parameter the tensor belongs to
  *now* (so a tensor saved on another layout is resharded), sized from the checkpoint's metadata;
  ``unpack`` puts the loaded buffers back into the skeleton.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.tensor import DTensor

from titanwarm.checkpoint.errors import CorruptCheckpointError
from titanwarm.distributed.param_init import canonical_name

_REF = "__titanwarm_tensor__"


class ModelState:
    """The model parts' weights as one ``Stateful`` (a flat dict of sharded tensors)."""

    def __init__(self, model_parts: list[torch.nn.Module]) -> None:
        self.model_parts = model_parts

    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Parameters by canonical name (wrapper prefixes of compile/AC/FSDP removed)."""
        return {canonical_name(n): p for m in self.model_parts for n, p in m.named_parameters()}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for m in self.model_parts:
            state.update(get_model_state_dict(m))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m in self.model_parts:
            set_model_state_dict(m, state)

    def weights_finite(self) -> bool:
        """Whether this rank's shards of every parameter are finite (not collective)."""
        for p in self.named_parameters().values():
            local = p.to_local() if isinstance(p, DTensor) else p
            if not bool(torch.isfinite(local).all()):
                return False
        return True


def pack(obj: Any, prefix: str, tensors: dict, params: dict, path: tuple = ()) -> Any:
    """``obj`` with every tensor replaced by a reference; the tensors go into ``tensors``. A DTensor
    records the parameter it is laid out like (the one named on its path, else any of its shape,
    mesh and placements), so that it can be resharded like that parameter on load."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}/{len(tensors)}"
        like = None
        if isinstance(obj, DTensor):
            named = [(c, params[c]) for c in path if isinstance(c, str) and c in params]
            like = next((n for n, p in named + list(params.items())
                         if isinstance(p, DTensor) and p.shape == obj.shape
                         and p.device_mesh == obj.device_mesh and p.placements == obj.placements),
                        None)
        tensors[key] = obj
        return {_REF: key, "like": like, "cpu": obj.device.type == "cpu"}
    if isinstance(obj, dict):
        return {k: pack(v, prefix, tensors, params, path + (k,)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(pack(v, prefix, tensors, params, path + (i,)) for i, v in enumerate(obj))
    return obj


def load_buffers(obj: Any, md: dict, params: dict, device: torch.device, out: dict) -> None:
    """Load buffers for the references in a skeleton, laid out like the named parameter now
    (a DTensor saved without a matching parameter loads as a full plain tensor)."""
    if isinstance(obj, dict) and _REF in obj:
        key = obj[_REF]
        meta = md.get(f"tensors.{key}")
        if not isinstance(meta, TensorStorageMetadata):
            raise CorruptCheckpointError(f"tensor {key} is missing from the checkpoint metadata")
        dtype = meta.properties.dtype
        like = params.get(obj["like"]) if obj["like"] else None
        if like is not None and tuple(like.shape) == tuple(meta.size):
            out[key] = torch.zeros_like(like, dtype=dtype)
        else:
            out[key] = torch.zeros(meta.size, dtype=dtype, device="cpu" if obj["cpu"] else device)
    elif isinstance(obj, dict):
        for v in obj.values():
            load_buffers(v, md, params, device, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            load_buffers(v, md, params, device, out)


def unpack(obj: Any, tensors: dict) -> Any:
    """The skeleton with its references replaced by the loaded tensors."""
    if isinstance(obj, dict) and _REF in obj:
        return tensors[obj[_REF]]
    if isinstance(obj, dict):
        return {k: unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(unpack(v, tensors) for v in obj)
    return obj


def dcp_load(state: dict, path: Path) -> None:
    """``dcp.load`` in place; any failure becomes one ``CorruptCheckpointError`` line."""
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as e:  # noqa: BLE001 - DCP wraps per-rank failures in CheckpointException
        first = str(e).strip().splitlines()
        raise CorruptCheckpointError(f"checkpoint {path} is unreadable: "
                                     f"{type(e).__name__}: {first[-1] if first else ''}") from e


def read_dcp_metadata(path: Path) -> Any:
    """DCP's metadata of a checkpoint folder (tensor sizes and dtypes)."""
    try:
        return dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001
        raise CorruptCheckpointError(f"checkpoint {path} is unreadable: {e}") from e


def rng_state() -> dict[str, Any]:
    """This rank's RNG states: torch CPU, CUDA (when initialised), python ``random``."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
