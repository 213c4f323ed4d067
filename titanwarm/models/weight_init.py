"""Reproducible per-parameter initialisation: a distribution per parameter and a seed per name.

Every parameter is drawn from its own CPU generator seeded by ``(seed, parameter name)``. The values
therefore depend on nothing but the seed and the parameter's name and shape: not on the order in
which parameters are visited, the device, or how the model is sharded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class InitRule:
    """How one parameter starts: all ones, a normal, or a normal truncated at +-3 std."""

    kind: Literal["ones", "normal", "trunc_normal"]
    std: float = 1.0

    def sample(self, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        """A float32 CPU tensor of ``shape`` drawn from this rule with ``generator``."""
        out = torch.empty(shape, dtype=torch.float32)
        if self.kind == "ones":
            return out.fill_(1.0)
        if self.kind == "normal":
            return out.normal_(0.0, self.std, generator=generator)
        return torch.nn.init.trunc_normal_(out, 0.0, self.std, -3 * self.std, 3 * self.std,
                                           generator=generator)


def param_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and the parameter name (sha256, stable across runs)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def init_sampler(model, seed: int):
    """(full parameter name, shape) -> that parameter's model-init value (a full CPU tensor), from
    ``model.init_plan()``: what ``init_model`` drew for it, for re-initialising blocks mid-run."""
    plan = model.init_plan()

    def sample(name: str, shape: torch.Size) -> torch.Tensor:
        return plan[name].sample(shape, param_generator(seed, name))

    return sample
