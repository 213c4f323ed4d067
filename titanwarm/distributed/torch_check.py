"""The torch features titanwarm relies on beyond its public API, checked once before training.

The HVP engine and the mesh code use private internals of torch 2.13 (the tested version; see
pyproject.toml). On another torch they may be missing or changed: ``require_torch_features`` stops
the run with one line naming what is missing, instead of an AttributeError deep inside a step.
"""

from __future__ import annotations

import importlib

import torch

TESTED = "2.13"
FEATURES = (
    ("torch.distributed.fsdp._fully_shard._fsdp_state", "_get_module_fsdp_state", "HVPs under FSDP2"),
    ("torch.distributed.tensor._api", "_FromTorchTensor", "HVPs through DTensor.from_local"),
    ("torch.distributed.tensor._api", "_normalize_placements_for_grad", "HVPs through DTensor.from_local"),
    ("torch.distributed.device_mesh", "DeviceMesh._flatten", "the data-parallel mesh (HSDP)"),
)


def missing_torch_features() -> list[str]:
    """``module.name (used for)`` of every feature this torch lacks; empty when all are there."""
    missing = []
    for module, name, use in FEATURES:
        try:
            obj = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{name} ({use})")
    return missing


def require_torch_features() -> None:
    """Raise ``RuntimeError`` naming the missing features and the tested torch version."""
    missing = missing_torch_features()
    if missing:
        raise RuntimeError(f"torch {torch.__version__} lacks what titanwarm needs (tested with torch "
                           f"{TESTED}): {'; '.join(missing)}")
