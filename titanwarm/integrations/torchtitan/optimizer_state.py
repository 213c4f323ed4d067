"""torchtitan's ``OptimizersContainer`` as the tracker and DCP need it with locked blocks.

- :class:`OptimizerView`: the inner optimizers' ``param_groups`` and ``state`` joined (what
  ``CurvatureTracker`` reads of an optimizer).
- :func:`patch_container_state`: the container's state dict lists Adam state for every parameter,
  so a resume does not depend on which blocks were locked when DCP built its load template.

Same in torchtitan 0.2.2 and 0.3.x (the container is a ``torch.optim.Optimizer`` holding
``optimizers``).
"""

from __future__ import annotations

from collections import ChainMap
from typing import Any

import torch


def inner_optimizers(optimizers: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside a torchtitan ``OptimizersContainer`` (or the optimizer)."""
    return list(getattr(optimizers, "optimizers", [optimizers]))


class OptimizerView:
    """What ``CurvatureTracker`` reads of an optimizer (``param_groups``, ``state``), joined over a
    container's inner optimizers. The container's own ``param_groups`` are not the ones the LR
    schedulers update and its ``state`` is empty, so the tracker must see the inner ones."""

    def __init__(self, optimizers: Any) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in inner_optimizers(self.optimizers) for g in o.param_groups]

    @property
    def state(self) -> ChainMap:
        return ChainMap(*[o.state for o in inner_optimizers(self.optimizers)])


def _zero_adam_state(opt: torch.optim.Optimizer, group: dict, p: torch.Tensor) -> dict:
    """Adam/AdamW state equivalent to none (step 0, zero moments: the first step is the same)."""
    proto = next((s["step"] for s in opt.state.values() if "step" in s), None)
    if proto is not None:
        step = torch.zeros_like(proto)
    else:
        on_device = group.get("fused") or group.get("capturable")
        step = torch.tensor(0.0, dtype=torch.float32, device=p.device if on_device else "cpu")
    state = {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
    if group.get("amsgrad"):
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _fill_missing_state(optimizers: Any) -> list[tuple[torch.optim.Optimizer, torch.Tensor]]:
    added = []
    for opt in inner_optimizers(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                if not opt.state.get(p):
                    opt.state[p] = _zero_adam_state(opt, group, p)
                    added.append((opt, p))
    return added


def _drop_unstepped_state(optimizers: Any) -> None:
    for opt in inner_optimizers(optimizers):
        for p in [p for p, s in opt.state.items() if "step" in s and float(s["step"]) == 0]:
            del opt.state[p]


def patch_container_state(optimizers: Any) -> None:
    """Make the container's (flattened, DCP) state dict list Adam state for *every* parameter.

    DCP builds its load template from ``state_dict()`` before any ``load_state_dict`` runs, i.e.
    with the lock mask of a fresh run; torch's ``set_optimizer_state_dict`` also only restores
    state of parameters that have state and ``requires_grad``. So: save and template fill
    never-stepped parameters with zero state (step 0; equivalent to none for Adam), and load with
    every parameter temporarily trainable, then drop step-0 state again. Lock state and optimizer
    state can then be loaded in either order."""
    if getattr(optimizers, "_titanwarm_patched", False):
        return
    base_state_dict, base_load = optimizers.state_dict, optimizers.load_state_dict

    def state_dict() -> dict[str, Any]:
        added = _fill_missing_state(optimizers)
        try:
            return base_state_dict()
        finally:
            for opt, p in added:
                opt.state.pop(p, None)

    def load_state_dict(state_dict: dict[str, Any]) -> None:
        params = [p for o in inner_optimizers(optimizers) for g in o.param_groups for p in g["params"]]
        flags = [p.requires_grad for p in params]
        added = _fill_missing_state(optimizers)
        try:
            for p in params:
                p.requires_grad_(True)
            base_load(state_dict)
        except BaseException:
            for opt, p in added:
                opt.state.pop(p, None)
            raise
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        _drop_unstepped_state(optimizers)

    optimizers.state_dict = state_dict
    optimizers.load_state_dict = load_state_dict
    optimizers._titanwarm_patched = True

