"""Resolve a ``[depth_schedule]`` into a concrete plan: initial active blocks + unlock events.

Pure functions of the config and the model depth, so ``--print-schedule`` and load-time validation
see exactly the timeline the trainer will follow. An event at step s unlocks its blocks after
optimizer step s (they train from step s + 1 on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from titanwarm.archwarm.config import DepthSchedule


class ScheduleError(ValueError):
    """An impossible schedule, located by its ``[depth_schedule]`` key."""

    def __init__(self, key: str, why: str) -> None:
        self.key, self.why = key, why
        super().__init__(f"{key}: {why}")


@dataclass(frozen=True)
class UnlockEvent:
    step: int
    """Blocks unlock after this optimizer step."""
    layers: tuple[int, ...]
    """Block indices that unlock."""


@dataclass(frozen=True)
class UnlockPlan:
    n_layers: int
    initial: tuple[int, ...]
    """Blocks active from the first step."""
    events: tuple[UnlockEvent, ...]
    """Unlock events in increasing step order."""

    def active_after(self, step: int) -> set[int]:
        """Blocks active for optimizer step ``step + 1`` (i.e. after ``step`` steps)."""
        active = set(self.initial)
        for event in self.events:
            if event.step <= step:
                active.update(event.layers)
        return active

    def untrained_blocks(self, total_steps: int) -> list[int]:
        """Blocks whose unlock event comes at or after ``total_steps``: they never train in a run
        that long (a shortened smoke run of a warm-up config)."""
        return sorted(i for e in self.events if e.step >= total_steps for i in e.layers)

    def describe(self, lr_at=None) -> str:
        """A readable timeline: step, blocks unlocked, resulting depth (and LR when given)."""
        lines = [f"{'after step':>10}  {'depth':>7}  {'lr':>9}  blocks"]
        rows = [(0, self.initial)] + [(e.step, e.layers) for e in self.events]
        depth = 0
        for step, layers in rows:
            depth += len(layers)
            lr = f"{lr_at(step + 1):9.2e}" if lr_at else f"{'':9}"
            label = "start" if step == 0 else str(step)
            lines.append(f"{label:>10}  {depth:>3}/{self.n_layers:<3}  {lr}  "
                         f"{'active' if step == 0 else 'unlock'} {list(layers)}")
        return "\n".join(lines)


def bit_reversal_order(n: int) -> list[int]:
    """0..n-1 sorted by the bit-reversed index: any prefix is spread evenly over the depth."""
    bits = max(1, math.ceil(math.log2(n))) if n > 1 else 1
    return sorted(range(n), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))


def activation_order(order, n_layers: int) -> list[int]:
    """The order in which blocks become active, from the ``order`` key."""
    if isinstance(order, list):
        if sorted(order) != list(range(n_layers)):
            raise ScheduleError("order", f"must list every block 0..{n_layers - 1} exactly once, got {order}")
        return list(order)
    return {"bottom_up": list(range(n_layers)),
            "top_down": list(range(n_layers - 1, -1, -1)),
            "interleaved": bit_reversal_order(n_layers)}[order]


def _explicit(cfg: DepthSchedule, n_layers: int) -> UnlockPlan:
    seen: set[int] = set()
    events, last = [], 0
    for i, entry in enumerate(cfg.unlocks):
        where = f"unlocks[{i}]"
        if set(entry) != {"step", "layers"}:
            raise ScheduleError("unlocks", f"{where} must have exactly the keys step and layers, got {sorted(entry)}")
        step, layers = entry["step"], entry["layers"]
        if not isinstance(step, int) or isinstance(step, bool) or step <= last:
            raise ScheduleError("unlocks", f"{where}.step must be an integer > {last} (steps increase), got {step!r}")
        if not isinstance(layers, list) or not layers or not all(isinstance(x, int) for x in layers):
            raise ScheduleError("unlocks", f"{where}.layers must be a non-empty list of block indices")
        for x in layers:
            if not 0 <= x < n_layers:
                raise ScheduleError("unlocks", f"{where}: block {x} is out of range 0..{n_layers - 1}")
            if x in seen:
                raise ScheduleError("unlocks", f"{where}: block {x} is unlocked twice")
            seen.add(x)
        events.append(UnlockEvent(step, tuple(layers)))
        last = step
    initial = tuple(i for i in range(n_layers) if i not in seen)
    if not initial:
        raise ScheduleError("unlocks", "every block is in an unlock entry: at least one must be active from the start")
    return UnlockPlan(n_layers, initial, tuple(events))


def resolve_schedule(cfg: DepthSchedule, n_layers: int, warmup_steps: int) -> UnlockPlan:
    """The plan ``cfg`` describes for a model of ``n_layers`` blocks (raises ScheduleError)."""
    if not cfg.enabled:
        return UnlockPlan(n_layers, tuple(range(n_layers)), ())
    if cfg.unlocks:
        return _explicit(cfg, n_layers)
    order = activation_order(cfg.order, n_layers)
    n0 = cfg.initial_layers if cfg.initial_layers != -1 else max(1, round(cfg.initial_fraction * n_layers))
    if n0 > n_layers:
        raise ScheduleError("initial_layers", f"{n0} exceeds the model's {n_layers} blocks")
    locked = order[n0:]
    size = cfg.group_size if cfg.group_size != -1 else max(1, math.ceil(len(locked) / 4))
    start = warmup_steps if cfg.start == "warmup_end" else cfg.start
    if start < 1 and locked:
        raise ScheduleError("start", f'"warmup_end" resolves to step {start}: with no LR warmup, give a step >= 1')
    events = tuple(UnlockEvent(start + k * cfg.interval, tuple(sorted(locked[i:i + size])))
                   for k, i in enumerate(range(0, len(locked), size)))
    return UnlockPlan(n_layers, tuple(sorted(order[:n0])), events)
