"""Optimizer state keyed by parameter name, as one ``Stateful`` (the checkpoint's ``"optimizer"``).

Why not DCP's ``get/set_optimizer_state_dict`` (torch 2.13, pytorch#192202): they (a) run a fake
zero-gradient ``step()`` on an optimizer whose state is empty, and return early when any state
exists, so a parameter added by ``add_parameters`` but not yet updated gets no saved state while, at
load time, every trainable parameter gets a fake state the checkpoint lacks; and (b) drop the saved
state of parameters that are frozen (``requires_grad=False``) at load time. With architecture
warm-up both happen (a checkpoint right after an unlock; a resume before the lock controller has
unfrozen the blocks). So the state is ``optimizer.state_dict()`` re-keyed by parameter name (its
tensors are the sharded DTensors themselves, not copies) and is loaded with
``optimizer.load_state_dict`` after re-keying back. The param-group structure must already match
when it loads: the checkpoint manager loads the optimizer after every other state, so that the lock
controller has re-added the unlocked blocks' groups; a mismatch stops with a message naming it.
Works for any ``torch.optim.Optimizer`` whose state is per parameter (AdamW, Muon, ...).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from titanwarm.checkpoint.errors import CheckpointError


class OptimizerState:
    """``state_dict``/``load_state_dict`` of ``optimizer`` with parameter names for indices.

    ``named_parameters()`` returns the model's parameters by their canonical names."""

    def __init__(self, optimizer: torch.optim.Optimizer,
                 named_parameters: Callable[[], dict[str, torch.nn.Parameter]]) -> None:
        self.optimizer = optimizer
        self.named_parameters = named_parameters

    def _names(self) -> dict[int, str]:
        return {id(p): n for n, p in self.named_parameters().items()}

    def state_dict(self) -> dict[str, Any]:
        opt, names = self.optimizer, self._names()
        plist = [p for g in opt.param_groups for p in g["params"]]
        osd = opt.state_dict()
        return {"state": {names[id(plist[i])]: dict(s) for i, s in osd["state"].items()},
                "param_groups": [dict(g, params=[names[id(plist[i])] for i in g["params"]])
                                 for g in osd["param_groups"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        opt, names = self.optimizer, self._names()
        now = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
        saved = [g["params"] for g in state["param_groups"]]
        if now != saved:
            first = next((i for i, (a, b) in enumerate(zip(now, saved)) if a != b), min(len(now), len(saved)))
            raise CheckpointError(
                f"the optimizer's parameter groups differ from the checkpoint's ({len(saved)} "
                f"saved, {len(now)} now; first difference in group {first}). States that add parameters "
                "to the optimizer (e.g. the lock controller) must be registered with "
                "trainer.register_state before the checkpoint loads")
        index = {n: i for i, n in enumerate(n for g in now for n in g)}
        opt.load_state_dict({
            "state": {index[n]: s for n, s in state["state"].items()},
            "param_groups": [dict(g, params=[index[n] for n in g["params"]])
                             for g in state["param_groups"]]})
