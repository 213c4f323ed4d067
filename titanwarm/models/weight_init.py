"""Reproducible per-parameter initialisation: a distribution per parameter, a counter-based draw.

Element ``i`` (row-major flat index) of parameter ``name`` is a pure function of ``(seed, name, i)``:
a 63-bit key from sha256(seed/name), mixed with the index by the splitmix64 finaliser (int64
tensor ops), gives a 24-bit uniform in (0, 1) that the normal (or the normal truncated at +-3 std)
quantile function (``erfinv``, float32) turns into the value. So the values depend on nothing but the
seed and the parameter's name and shape: not on the order in which parameters are visited, not on
how the model is sharded, and a rank can draw exactly the elements it keeps
(``titanwarm.distributed.param_init``) on its own device. CPU and CUDA draw the same uniforms;
their float32 ``erfinv`` may differ in the last bit.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import torch

_GOLDEN, _MIX1, _MIX2 = (c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
"""splitmix64 constants as signed int64 (torch has no uint64 arithmetic; products wrap the same)."""
_PHI_LO = 0.5 * math.erfc(3.0 / math.sqrt(2))
"""Standard normal CDF at -3: the normal truncated at +-3 std maps u to the quantile of
PHI_LO + u (1 - 2 PHI_LO)."""
_U_MAX = 1.0 - 2.0**-24
"""The largest float32 below 1: the top of ``counter_uniform``'s range."""
CHUNK = 1 << 18
"""Elements drawn per step: the integer temporaries stay in cache (faster than whole tensors) and
the op count stays low (each op is a kernel launch on GPU, a thread barrier on CPU)."""


def param_key(seed: int, name: str) -> int:
    """The 63-bit key of one parameter's stream (sha256 of ``seed/name``, stable across runs)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _shr_(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (a new tensor)."""
    return (x >> bits).bitwise_and_((1 << (64 - bits)) - 1)


def counter_uniform(key: int, index: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in (0, 1) with 24 random bits, one per int64 ``index``: the top bits of the
    splitmix64 finaliser of ``index * golden + key``, a pure function of (key, index)."""
    x = index * _GOLDEN
    x.add_(key)
    x.bitwise_xor_(_shr_(x, 30)).mul_(_MIX1)
    x.bitwise_xor_(_shr_(x, 27)).mul_(_MIX2)
    x.bitwise_xor_(_shr_(x, 31))
    # (k + 0.5) / 2^24 for the 24-bit integer k. float32 cannot hold k + 0.5 once k >= 2^23, and
    # rounds the top one (k = 2^24 - 1, one element in 2^24) up to exactly 1, whose normal
    # quantile is inf: a 128k x 3k embedding would start with ~23 infinite weights. The clamp moves
    # that one value to the largest float32 below 1 and leaves every other value as it was.
    return _shr_(x, 40).to(torch.float32).add_(0.5).mul_(2.0**-24).clamp_(max=_U_MAX)


@dataclass(frozen=True)
class InitRule:
    """How one parameter starts: all ones, a normal, or a normal truncated at +-3 std."""

    kind: Literal["ones", "normal", "trunc_normal"]
    std: float = 1.0

    def values(self, key: int, index: torch.Tensor) -> torch.Tensor:
        """float32 values at the flat element indices ``index`` (any shape, on its device)."""
        if self.kind == "ones":
            return torch.ones(index.shape, dtype=torch.float32, device=index.device)
        u = counter_uniform(key, index)
        if self.kind == "trunc_normal":
            u.mul_(1.0 - 2.0 * _PHI_LO).add_(_PHI_LO)
        # normal quantile: sqrt(2) erfinv(2u - 1); u has 24 bits, so |z| <= 5.3 for "normal"
        return torch.erfinv(u.mul_(2.0).sub_(1.0)).mul_(math.sqrt(2.0) * self.std)

    def fill_(self, out: torch.Tensor, key: int, rows: torch.Tensor, cols: torch.Tensor,
              n_cols: int) -> None:
        """``out[r, c]`` = the value at flat index ``rows[r] * n_cols + cols[c]`` (``out`` 2-D, of
        shape ``len(rows) x len(cols)``), drawn CHUNK elements at a time."""
        if self.kind == "ones":
            out.fill_(1.0)
            return
        if len(cols) > CHUNK:  # wide rows: split the columns too
            for c in range(0, len(cols), CHUNK):
                self.fill_(out[:, c:c + CHUNK], key, rows, cols[c:c + CHUNK], n_cols)
            return
        step = max(1, CHUNK // max(1, len(cols)))
        for r in range(0, len(rows), step):
            out[r:r + step].copy_(self.values(key, rows[r:r + step, None] * n_cols + cols[None, :]))

    def sample(self, shape: torch.Size, key: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The full float32 tensor of ``shape`` on ``device``."""
        shape2d = (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (1, math.prod(shape))
        out = torch.empty(shape2d, dtype=torch.float32, device=device)
        self.fill_(out, key, torch.arange(shape2d[0], device=device),
                   torch.arange(shape2d[1], device=device), shape2d[1])
        return out.view(shape)


def init_sampler(model, seed: int):
    """(full parameter name, shape) -> that parameter's model-init value (a full CPU tensor), from
    ``model.init_plan()``: what ``init_model`` drew for it, for re-initialising blocks mid-run."""
    plan = model.init_plan()

    def sample(name: str, shape: torch.Size) -> torch.Tensor:
        return plan[name].sample(shape, param_key(seed, name))

    return sample
