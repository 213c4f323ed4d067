"""Process-group start-up from the torchrun environment, and the choice of device."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    """``[training] device`` -> a torch.device: "auto" (CUDA when available, else CPU), "cpu" or
    "cuda"; a CUDA device is this process's GPU (``LOCAL_RANK`` under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("[training] device = \"cuda\" but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    raise ValueError(f"unknown device {name!r}; expected \"auto\", \"cpu\" or \"cuda\"")


def resolve_param_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """``[training] mixed_precision_param`` -> the compute dtype: "auto" is bfloat16 on CUDA and
    float32 elsewhere; an explicit dtype name is used on every device."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def init_distributed(device: torch.device | str) -> int:
    """Join the torchrun process group for ``device`` (a device or its type: NCCL for CUDA tensors
    plus gloo for CPU ones on a GPU run, gloo alone on CPU) and return the world size.

    Without torchrun's environment (a plain ``python`` run) this does nothing and returns 1. Calling
    it again once the group exists only returns the world size.
    """
    if dist.is_initialized():
        return dist.get_world_size()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 1
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = resolve_device("cuda")
        torch.cuda.set_device(device)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return dist.get_world_size()


CUBLAS_WORKSPACES = (":4096:8", ":16:8")
"""The CUBLAS_WORKSPACE_CONFIG values with which cuBLAS is deterministic (CUDA >= 10.2)."""


def require_cublas_workspace() -> None:
    """For ``[training] deterministic = true`` on CUDA, before the first matmul: set
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset (torch otherwise raises at the first cuBLAS call),
    and stop with one line when it is set to a value that is not deterministic."""
    value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if value is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACES[0]
        if os.environ.get("RANK", "0") == "0":
            print(f"deterministic: set CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACES[0]} "
                  "(cuBLAS needs it for deterministic matmuls)", flush=True)
    elif value not in CUBLAS_WORKSPACES:
        raise RuntimeError(f"[training] deterministic = true needs CUBLAS_WORKSPACE_CONFIG set to "
                           f"{' or '.join(CUBLAS_WORKSPACES)}, not {value!r}")
