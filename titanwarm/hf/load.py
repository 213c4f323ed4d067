"""Load a Hugging Face Llama folder (config.json + safetensors) into a run's model, any layout.

Used by ``[checkpoint] initial_load_path`` when the path is an HF folder (an export of this project
or a published Llama 3.x one). The config is checked against the run's model first (one line naming
every difference); then each parameter is read on its own from the safetensors files (memory-mapped:
one full tensor at a time), permuted back to Meta's RoPE layout for wq/wk, cast to the parameter's
dtype and copied into this rank's shard (``distribute_tensor`` without communication for FSDP2/TP
DTensors). Every rank reads the files itself, so a failure is the same on every rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from titanwarm.distributed.param_init import canonical_name
from titanwarm.hf.convert import (INDEX, WEIGHTS, HFError, check_hf_config, from_hf_tensor, hf_name,
                                  read_hf_config, unsupported)
from titanwarm.models.llama3.args import ModelArgs

IGNORED = ("rotary_emb.inv_freq",)
"""HF tensors that some checkpoints carry and that are not weights."""


def weight_files(folder: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    if (folder / INDEX).is_file():
        try:
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise HFError(f"{folder / INDEX}: unreadable: {e}") from e
        return {name: folder / file for name, file in weight_map.items()}
    with safe_open(str(folder / WEIGHTS), framework="pt") as f:
        return {name: folder / WEIGHTS for name in f.keys()}


def load_hf_weights(model_parts: list[nn.Module], args: ModelArgs, folder: str | Path) -> int:
    """Copy the weights of the HF folder ``folder`` into ``model_parts`` (plain or FSDP2/TP
    parallelized) whose shape is ``args``; returns the number of tensors loaded. Raises HFError."""
    folder = Path(folder)
    bad = unsupported(args)
    if bad:
        raise HFError(f"the model uses {', '.join(bad)}, which Hugging Face's Llama does not have")
    diffs = check_hf_config(read_hf_config(folder), args)
    if diffs:
        raise HFError(f"{folder} does not fit this model: " + "; ".join(diffs))
    files = weight_files(folder)
    params = {canonical_name(n): p for m in model_parts for n, p in m.named_parameters()}
    wanted: dict[Path, list[tuple[str, str]]] = {}
    for name in params:
        source = hf_name(name)
        if source not in files:
            raise HFError(f"{folder}: no tensor {source} (for {name})")
        wanted.setdefault(files[source], []).append((name, source))
    for file, pairs in wanted.items():
        with safe_open(str(file), framework="pt") as f:
            for name, source in pairs:
                param = params[name]
                tensor = f.get_tensor(source)
                if tuple(tensor.shape) != tuple(param.shape):
                    raise HFError(f"{file.name}: {source} has shape {tuple(tensor.shape)}, the model's "
                                  f"{name} has {tuple(param.shape)}")
                _copy_into(param, from_hf_tensor(name, tensor, args))
    return len(params)


@torch.no_grad()
def _copy_into(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the full tensor ``full`` into ``param`` (this rank's shard when it is a DTensor)."""
    if isinstance(param, DTensor):
        mesh = param.device_mesh
        full = full.to(device=mesh.device_type, dtype=param.dtype)
        param.copy_(distribute_tensor(full, mesh, param.placements, src_data_rank=None))
    else:
        param.copy_(full.to(device=param.device, dtype=param.dtype))
