"""How an unlocked block's weights start. Norm weights are never touched (they kept their init).

- ``noise``: every weight ~ N(0, std^2). Both branches then output O(std^2) (attention: wo * (wv x);
  FFN: O(std^3)), so the block is identity, and its Jacobian the identity, up to O(std^2). Gradients
  are O(std) but Adam normalises them, so the block trains from the first step.
- ``zero_out``: inner projections (wq, wk, wv, w1, w3) take exactly their model-init values, output
  projections (wo, w2) are zero: exact identity at unlock, and wo/w2 get non-zero gradients at once
  (ReZero / MSG-style growth).
- ``ramp``: every weight takes its model-init value and the block's residual branches are scaled by
  a gate rising 0 -> 1 over ``ramp_steps`` (MSG's mask); the first step after the unlock runs at
  gate 0, so the function is exactly unchanged there.
- A plain all-zero unlock is not offered: an all-zero block is a stationary point. Every weight's
  gradient is a product with another zero weight (d/dwo needs wv x, d/dwv needs wo, d/dw2 needs
  w1 x and w3 x, ...), so AdamW's update is exactly 0 and the block never moves
  (``tests/test_archwarm.py`` shows it).

Random values are counter-based per parameter, keyed by (seed, name), each rank drawing its own
shard (``param_init.draw_param``), so every parallel layout unlocks to the same weights.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from titanwarm.archwarm.locks import block_weights, unwrap
from titanwarm.distributed.param_init import draw_param, fill_param
from titanwarm.models.weight_init import InitRule, param_key

OUTPUT_PROJECTIONS = ("attention.wo.weight", "feed_forward.w2.weight")
"""Names (inside a block) of the projections that end a residual branch."""

Sampler = Callable[[str, torch.Size], torch.Tensor]
"""(full parameter name, shape) -> the parameter's model-init value, a full CPU tensor."""


@torch.no_grad()
def init_unlocked(prefix: str, block: nn.Module, method: str, sample_init: Sampler, seed: int,
                  noise_std: float) -> None:
    """Set the non-norm weights of ``block`` (named ``prefix``) for an unlock by ``method``."""
    for name, param in block_weights(block):
        key = f"{prefix}.{name}"
        if method == "noise":
            draw_param(param, InitRule("normal", noise_std), param_key(seed, f"unlock/{key}"))
            continue
        if method == "zero_out" and name in OUTPUT_PROJECTIONS:
            full = torch.zeros(param.shape)
        elif method in ("zero_out", "ramp"):
            full = sample_init(key, param.shape)
        else:
            raise ValueError(f"unknown unlock init {method!r}")
        fill_param(param, full)
    if method == "ramp":
        add_gate(block)


def add_gate(block: nn.Module) -> None:
    """Give ``block`` a residual gate at 0 (a 0-dim tensor: under mixed precision it does not
    promote the activations' dtype)."""
    device = next(block.parameters()).device
    unwrap(block).residual_gate = torch.zeros((), device=device)


def set_gate(block: nn.Module, value: float) -> None:
    """Set a ramping block's residual gate (in place: compiled blocks see a tensor input change)."""
    gate = unwrap(block).residual_gate
    if gate is not None:
        gate.fill_(value)
