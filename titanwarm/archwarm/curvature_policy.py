"""The ``mode = "curvature"`` depth schedule: unlock the next group when the tracker says it is safe.

``CurvaturePolicy`` is a small pure object. After every optimizer step the warm-up hook feeds it
``update(step, ratio)`` (``ratio``: the stability ratio lr·λmax(G) / threshold measured by the
curvature tracker on *this* step, ``None`` on untracked steps) and gets back ``None`` or a
``Decision`` (which group to unlock now, and why). The rules, for the next locked group ``k`` of
``n`` (groups and their order as in the fixed mode):

- **streak**: consecutive tracked readings with ``ratio < target_ratio``; a reading at or above
  target (or NaN) resets it to 0, and so does every unlock (only readings of the network as it is
  now count). Readings before ``start`` count for the first group.
- **curvature unlock** (reason ``"curvature"``): at ``step >= start``, when ``streak >= patience``,
  the hold is off, and ``step - last_unlock >= min_interval``.
- **deadline pace** (reason ``"deadline"``): group ``k`` is forced out at the latest after step
  ``latest[k] = start + (k + 1) * (D - start) // n`` (``D``: ``all_unlocked_by``; the last group at
  exactly ``D``), whatever the ratio, so a run always reaches full depth by ``D``.
- **hold** (``hold_ratio > 0``): a reading above ``hold_ratio`` after an unlock holds the next unlock
  back until the ratio has been below target for ``patience`` tracked steps again. The streak rule
  already stops curvature unlocks; the hold also postpones the deadline pace, but only as far as
  ``hard[k] = D - (n - 1 - k) * min_interval`` (the remaining groups still fit by ``D``,
  ``min_interval`` apart).

A forced unlock also waits until ``min_interval`` steps after the previous unlock (a group held past
the next group's pace step would otherwise pull that group out right behind it), except at its
``hard`` step. Validation guarantees ``(D - start) // n >= min_interval``, so ``latest[k] <=
hard[k]`` and consecutive ``hard`` steps are ``min_interval`` apart: unlocks never come closer than
``min_interval`` (unless steps were skipped by the fault guard: the deadline then wins).
Everything is deterministic in (step, ratio): feed every rank the same (all-reduced) ratio and every
rank decides the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

REASONS = ("curvature", "deadline")


def deadline_step(all_unlocked_by: int | float, total_steps: int) -> int:
    """``all_unlocked_by`` as a step: an integer is a step, a float in (0, 1) a fraction of the run."""
    if isinstance(all_unlocked_by, float):
        return int(round(all_unlocked_by * total_steps))
    return int(all_unlocked_by)


@dataclass(frozen=True)
class Decision:
    group: int
    """Index of the group to unlock now (0 = the first locked group)."""
    reason: str
    """"curvature" (the ratio allowed it) or "deadline" (the pace forced it)."""
    ratio: float | None
    """The most recent measured ratio (None if none yet)."""
    ratio_step: int | None
    """The step that ratio was measured on."""


class CurvaturePolicy:
    """Decision state of a curvature-driven depth schedule (see the module docstring)."""

    def __init__(self, n_groups: int, start: int, deadline: int, target_ratio: float,
                 patience: int, min_interval: int, hold_ratio: float = 0.0) -> None:
        if n_groups and not start < deadline:
            raise ValueError(f"the deadline {deadline} must come after start {start}")
        self.n_groups, self.start, self.deadline = n_groups, start, deadline
        self.target_ratio, self.patience, self.min_interval = target_ratio, patience, min_interval
        self.hold_ratio = hold_ratio
        self.latest = [start + (k + 1) * (deadline - start) // n_groups for k in range(n_groups)]
        """Deadline pace: group k is forced out after this step at the latest."""
        self.hard = [deadline - (n_groups - 1 - k) * min_interval for k in range(n_groups)]
        """While held, group k is forced out after this step at the latest."""
        self.next_group = 0
        self.streak = 0
        self.held = False
        self.last_unlock: int | None = None
        self.last_ratio: float | None = None
        self.last_ratio_step: int | None = None

    @property
    def done(self) -> bool:
        return self.next_group >= self.n_groups

    def update(self, step: int, ratio: float | None) -> Decision | None:
        """Feed optimizer step ``step`` (after its update) and its measured ratio (None when the
        step was not tracked); returns the group to unlock after this step, or None."""
        if ratio is not None:
            ratio = float(ratio)
            self.last_ratio, self.last_ratio_step = ratio, step
            self.streak = self.streak + 1 if ratio < self.target_ratio else 0  # NaN resets too
            if (self.hold_ratio > 0 and self.next_group > 0 and not self.done
                    and not ratio <= self.hold_ratio):
                self.held = True
            if self.held and self.streak >= self.patience:
                self.held = False
        if self.done or step < self.start:
            return None
        k = self.next_group
        spaced = self.last_unlock is None or step - self.last_unlock >= self.min_interval
        if spaced and not self.held and self.streak >= self.patience:
            return self._unlock(step, "curvature")
        # The pace forces a group out once due, min_interval after the previous unlock; at its hard
        # step it goes whatever the spacing (hard steps are min_interval apart by construction).
        due = self.hard[k] if self.held else self.latest[k]
        if step >= self.hard[k] or (step >= due and spaced):
            return self._unlock(step, "deadline")
        return None

    def _unlock(self, step: int, reason: str) -> Decision:
        decision = Decision(self.next_group, reason, self.last_ratio, self.last_ratio_step)
        self.next_group += 1
        self.last_unlock = step
        self.streak = 0
        self.held = False
        return decision

    def state_dict(self) -> dict[str, Any]:
        """Decision state (plain Python values) for checkpoints."""
        return {"next_group": self.next_group, "streak": self.streak, "held": self.held,
                "last_unlock": self.last_unlock, "last_ratio": self.last_ratio,
                "last_ratio_step": self.last_ratio_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.next_group, self.streak = int(state["next_group"]), int(state["streak"])
        self.held = bool(state["held"])
        self.last_unlock, self.last_ratio = state["last_unlock"], state["last_ratio"]
        self.last_ratio_step = state["last_ratio_step"]

    def simulate(self, ratios: Iterable[tuple[int, float | None]]) -> list[tuple[int, Decision]]:
        """Run a fresh copy of this policy over ``(step, ratio)`` pairs; the unlocks it makes."""
        twin = CurvaturePolicy(self.n_groups, self.start, self.deadline, self.target_ratio,
                               self.patience, self.min_interval, self.hold_ratio)
        out = []
        for step, ratio in ratios:
            decision = twin.update(step, ratio)
            if decision is not None:
                out.append((step, decision))
        return out

    def earliest(self, track_interval: int, total_steps: int) -> list[int]:
        """Unlock steps if every tracked step (every ``track_interval``-th) reads ratio 0."""
        stream = ((s, 0.0 if s % track_interval == 0 else None) for s in range(1, total_steps + 1))
        return [step for step, _ in self.simulate(stream)]


def policy_for(cfg, plan, total_steps: int) -> CurvaturePolicy:
    """The policy of a ``DepthSchedule`` ``cfg`` in curvature mode, over ``plan``'s groups (an
    ``UnlockPlan``: the fixed mode's events, whose steps only give ``start``)."""
    events = plan.events
    return CurvaturePolicy(len(events), events[0].step if events else 1,
                           deadline_step(cfg.all_unlocked_by, total_steps), cfg.target_ratio,
                           cfg.patience, cfg.min_interval, cfg.hold_ratio)


def describe(policy: CurvaturePolicy, initial: tuple[int, ...], groups: list[tuple[int, ...]],
             n_layers: int, track_interval: int, total_steps: int, lr_at=None) -> str:
    """Readable summary for ``--print-schedule``: the groups with their earliest step (every tracked
    ratio below target), their deadline-pace step and, with a hold, the latest held step."""
    p = policy
    pace = (p.deadline - p.start) / p.n_groups if p.n_groups else math.nan
    lines = [f"unlock the next group once stability_ratio < {p.target_ratio:g} for {p.patience} "
             f"tracked step(s) in a row (tracked every {track_interval} steps), from step "
             f"{p.start} on, at least {p.min_interval} steps apart",
             f"deadline: full depth after step {p.deadline} at the latest; pace "
             f"{pace:.1f} steps per group" + (f"; hold_ratio {p.hold_ratio:g} can postpone the "
                                              "pace up to the 'held' column" if p.hold_ratio > 0 else "")]
    earliest = p.earliest(track_interval, total_steps)
    head = f"{'group':>5}  {'depth':>7}  {'earliest':>8}  {'deadline':>8}"
    head += f"  {'held':>6}" if p.hold_ratio > 0 else ""
    head += f"  {'lr@deadline':>11}  blocks" if lr_at else "  blocks"
    lines.append(head)
    lines.append(f"{'start':>5}  {len(initial):>3}/{n_layers:<3}  {'':>8}  {'':>8}"
                 + (f"  {'':>6}" if p.hold_ratio > 0 else "")
                 + (f"  {'':>11}" if lr_at else "") + f"  active {list(initial)}")
    depth = len(initial)
    for k, layers in enumerate(groups):
        depth += len(layers)
        row = f"{k + 1:>5}  {depth:>3}/{n_layers:<3}  {earliest[k]:>8}  {p.latest[k]:>8}"
        row += f"  {p.hard[k]:>6}" if p.hold_ratio > 0 else ""
        row += f"  {lr_at(p.latest[k] + 1):>11.2e}" if lr_at else ""
        lines.append(row + f"  unlock {list(layers)}")
    return "\n".join(lines)
