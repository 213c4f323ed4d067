"""The adapter's checkpoint state, as ``Stateful`` objects for torchtitan's checkpointer.

:func:`titanwarm_states` gives ``"archwarm"`` (lock mask, unlock steps, step count) and, with
``[curvature]``, ``"curvature"`` (the tracker's warm-start state in a fixed DCP layout). torchtitan
0.2.2 forks pass them to ``CheckpointManager(states=...)``; the 0.3 Trainer adds them to its
checkpointer's ``states`` (``trainer.py``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.checkpoint.stateful import Stateful

from titanwarm.curvature import CurvatureTracker
from titanwarm.curvature.vectors import vector_dtype
from titanwarm.distributed.param_init import canonical_name

if TYPE_CHECKING:
    from titanwarm.integrations.torchtitan.adapter import TitanwarmAdapter


class LockState(Stateful):
    """The lock mask, unlock steps and step count (plain lists: stored as DCP byte objects)."""

    def __init__(self, adapter: TitanwarmAdapter) -> None:
        self.adapter = adapter

    def state_dict(self) -> dict[str, Any]:
        return self.adapter.lock_state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.adapter.load_lock_state_dict(state_dict)


class TrackerState(Stateful):
    """``CurvatureTracker`` state in a fixed DCP layout.

    DCP loads only the keys of the template ``state_dict()`` returns, and a fresh tracker has no
    vectors. So every slot the configuration uses ("g" when preconditioned, "h" when
    tracking H) holds one tensor per model parameter (the stored vector, or zeros), keyed by the
    wrapper-free name (AC/compile do not change it) and sharded like the parameter; which entries
    are real, the HVP method and the call count go in a JSON string. Cost: one
    parameter-sized tensor per slot in the checkpoint.
    """

    def __init__(self, tracker: CurvatureTracker) -> None:
        self.tracker = tracker

    def _slots(self) -> list[str]:
        t = self.tracker
        slots = ["g"] if t.preconditioned else []
        return slots + (["h"] if t.track_h or not t.preconditioned else [])

    def state_dict(self) -> dict[str, Any]:
        sd = self.tracker.state_dict()
        params = dict(self.tracker.module.named_parameters())
        out: dict[str, Any] = {}
        present = {}
        for slot in self._slots():
            src = sd["vectors"].get(slot, {})
            present[slot] = [canonical_name(n) for n in src]
            out[slot] = {canonical_name(n): src[n] if n in src
                         else torch.zeros_like(p, dtype=vector_dtype(p.dtype)).detach()
                         for n, p in params.items()}
        out["meta"] = json.dumps({"present": present, "hvp": sd["hvp"],
                                  "calls": sd["calls"]})
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        meta = json.loads(state_dict["meta"])
        names = {canonical_name(n): n for n, _ in self.tracker.module.named_parameters()}
        take = {slot: {names[c]: state_dict[slot][c] for c in meta["present"].get(slot, [])}
                for slot in self._slots()}
        self.tracker.load_state_dict({
            "vectors": {k: v for k, v in take.items() if v}, "hvp": meta["hvp"],
            "calls": meta["calls"]})


def titanwarm_states(optimizers: Any) -> dict[str, Stateful]:
    """``Stateful`` objects to add to the fork's ``CheckpointManager(states=...)``: the lock state
    (``"archwarm"``) and, with ``[curvature]``, the tracker (``"curvature"``). Empty when the
    optimizers were not built by the wrapped builder."""
    adapter = getattr(optimizers, "titanwarm", None)
    if adapter is None:
        return {}
    states: dict[str, Stateful] = {"archwarm": LockState(adapter)}
    if adapter.tracker is not None:
        states["curvature"] = TrackerState(adapter.tracker)
    return states

