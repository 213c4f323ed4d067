"""The ``[depth_schedule]`` TOML section: when locked transformer blocks join training.

A locked block is an exact identity map held out of the optimizer (see ``archwarm/locks.py``). The
schedule starts with ``initial_layers`` (or ``initial_fraction`` of the depth) active, then unlocks
the rest in groups: the first group after ``start`` optimizer steps, then one every ``interval``
steps, in the block ``order``. ``unlocks`` gives full control instead. ``mode = "curvature"`` keeps
the groups and their order but lets the curvature tracker decide when each one unlocks (see
``archwarm/curvature_policy.py`` and docs/architecture_warmup.md). ``python train.py --config X
--print-schedule`` prints the resolved timeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNLOCK_INITS = ("noise", "zero_out", "ramp")
ORDERS = ("bottom_up", "top_down", "interleaved")
MODES = ("fixed", "curvature")


@dataclass
class DepthSchedule:
    enabled: bool = False
    """Turn architecture warm-up on (blocks start locked and unlock on this schedule)."""
    mode: str = "fixed"
    """"fixed": unlock on the step timeline below. "curvature": same groups and order, but after
    `start` the next group unlocks once the [curvature] tracker's stability_ratio has stayed below
    target_ratio for `patience` tracked steps (at least min_interval steps after the previous
    unlock), and at the latest on the all_unlocked_by deadline pace; needs [curvature] enabled."""
    initial_layers: int = -1
    """Blocks active from the first step; -1 uses initial_fraction of the depth instead."""
    initial_fraction: float = 0.5
    """Fraction of the blocks active from the first step (rounded, at least 1)."""
    start: int | str = "warmup_end"
    """The first group unlocks after this many optimizer steps; "warmup_end" means the LR
    scheduler's warmup_steps."""
    interval: int = 500
    """Optimizer steps between two group unlocks (fixed mode)."""
    group_size: int = -1
    """Blocks per unlock group; -1 unlocks the locked blocks in 4 groups (ceil(locked / 4) each)."""
    order: list[int] | str = "bottom_up"
    """Which blocks are active first and which unlock next: "bottom_up" (default: the active
    model is exactly a truncated Llama and grows upward, as in progressive stacking), "top_down",
    "interleaved" (bit-reversal order: active blocks spread evenly over the depth), or an explicit
    list of every block index in activation order."""
    unlocks: list[dict] = field(default_factory=list)
    """Explicit timeline, e.g. [{step = 100, layers = [4, 5]}, {step = 300, layers = [6, 7]}]:
    after optimizer step `step` the listed blocks unlock; blocks listed nowhere are active from
    the start. When given, it replaces initial_*, start, interval, group_size and order."""
    target_ratio: float = 0.5
    """Curvature mode: a tracked step counts as safe when stability_ratio (lr * lambda_max /
    threshold) is below this."""
    patience: int = 3
    """Curvature mode: safe tracked steps in a row (measured since the previous unlock) before the
    next group unlocks."""
    min_interval: int = 100
    """Curvature mode: optimizer steps at least between two unlocks."""
    all_unlocked_by: int | float = 0.8
    """Curvature mode deadline: every block is unlocked after this step at the latest. An integer
    is a step (e.g. 1500); a number in (0, 1) with a decimal point is a fraction of training.steps
    (e.g. 0.8). Group k (of n) is forced out after step start + (k + 1) * (deadline - start) // n
    at the latest, whatever the ratio."""
    hold_ratio: float = 0.0
    """Curvature mode: if stability_ratio exceeds this after an unlock, the next unlock waits until
    the ratio has been below target_ratio for `patience` tracked steps again, and even the deadline
    pace waits (as far as the deadline allows: then the remaining groups go min_interval apart,
    the last one on the deadline). 0 turns the hold off; otherwise >= target_ratio."""
    unlock_init: str = "noise"
    """How an unlocked block's weights start (its norm weights keep their init): "noise" (every
    weight ~ N(0, noise_std^2): output and Jacobian within O(noise_std^2) of identity), "zero_out"
    (inner projections wq/wk/wv/w1/w3 re-initialised as at model init, output projections wo/w2
    zero: exact identity, trains at once) or "ramp" (normal init, branch outputs scaled by a gate
    rising linearly 0 -> 1 over ramp_steps: exact identity at unlock)."""
    noise_std: float = 1e-3
    """Standard deviation of the "noise" unlock init."""
    ramp_steps: int = 100
    """Steps of the "ramp" gate from 0 to 1."""
    unlock_lr_warmup_steps: int = 0
    """Newly unlocked blocks get their LR scaled up linearly from 0 over this many steps (0: off)."""
    skip_locked: bool = True
    """Skip locked blocks' compute (forward and backward). false runs them through their zero
    weights (the paper's "no graph change" form); the results are identical."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        """Load-time checks: values, and that the resolved timeline fits the model and the run."""
        from titanwarm.archwarm.schedule import ScheduleError, resolve_schedule
        from titanwarm.registry import MODELS

        if not self.enabled:
            return []
        checks = [
            ("mode", self.mode in MODES, f"allowed: {', '.join(MODES)}"),
            ("unlock_init", self.unlock_init in UNLOCK_INITS, f"allowed: {', '.join(UNLOCK_INITS)}"),
            ("initial_layers", self.initial_layers == -1 or self.initial_layers >= 1, "-1 or >= 1"),
            ("initial_fraction", 0 < self.initial_fraction <= 1, "a number in (0, 1]"),
            ("interval", self.interval >= 1, "an integer >= 1"),
            ("group_size", self.group_size == -1 or self.group_size >= 1, "-1 or >= 1"),
            ("noise_std", self.noise_std > 0, "a number > 0"),
            ("ramp_steps", self.ramp_steps >= 1, "an integer >= 1"),
            ("unlock_lr_warmup_steps", self.unlock_lr_warmup_steps >= 0, "an integer >= 0"),
            ("start", self.start == "warmup_end" or (isinstance(self.start, int) and self.start >= 1),
             '"warmup_end" or a step >= 1'),
            ("order", isinstance(self.order, list) or self.order in ORDERS,
             f"{', '.join(ORDERS)} or a list of block indices"),
        ]
        bad = [(key, f"{getattr(self, key)!r} is not allowed; allowed: {what}")
               for key, ok, what in checks if not ok]
        if bad:
            return bad
        if self.mode == "curvature":
            bad = self._curvature_value_problems(cfg)
            if bad:
                return bad
        n_layers = MODELS.get(cfg.model.name).flavors[cfg.model.flavor].n_layers
        try:
            plan = resolve_schedule(self, n_layers, cfg.lr_scheduler.warmup_steps)
        except ScheduleError as e:
            return [(e.key, e.why)]
        if self.mode == "curvature":
            return self._deadline_problems(cfg, plan)
        return []  # blocks that unlock only after the last step: a warning (locked_at_end), not an error

    def _curvature_value_problems(self, cfg) -> list[tuple[str, str]]:
        """mode = "curvature": the tracker is on, and the policy's keys are in range."""
        by = self.all_unlocked_by
        checks = [
            ("mode", cfg.curvature.enabled,
             'mode = "curvature" reads the tracker\'s stability_ratio: set [curvature] enabled = true'),
            ("unlocks", not self.unlocks,
             'an explicit unlocks timeline cannot be used with mode = "curvature" (the policy picks '
             "the steps; give initial_*, group_size and order instead)"),
            ("target_ratio", self.target_ratio > 0, "must be a number > 0"),
            ("patience", self.patience >= 1, "must be an integer >= 1"),
            ("min_interval", self.min_interval >= 1, "must be an integer >= 1"),
            ("hold_ratio", self.hold_ratio == 0 or self.hold_ratio >= self.target_ratio,
             f"must be 0 (off) or >= target_ratio ({self.target_ratio})"),
            ("all_unlocked_by", (isinstance(by, int) and by >= 1) or (isinstance(by, float) and 0 < by < 1),
             "must be a step (an integer >= 1) or a fraction of training.steps in (0, 1), e.g. 0.8"),
        ]
        return [(key, f"{getattr(self, key)!r}: {why}") for key, ok, why in checks if not ok]

    def _deadline_problems(self, cfg, plan) -> list[tuple[str, str]]:
        """mode = "curvature": the deadline leaves every group min_interval steps after start (a
        deadline at or past the run's end is a shortened run: warned about, see locked_at_end)."""
        from titanwarm.archwarm.curvature_policy import deadline_step

        n_groups = len(plan.events)
        if not n_groups:
            return []
        start = plan.events[0].step
        if start >= cfg.training.steps:
            return []  # a shortened run: no group can unlock before it ends (a warning at start)
        deadline = deadline_step(self.all_unlocked_by, cfg.training.steps)
        if (deadline - start) // n_groups < self.min_interval:
            return [("all_unlocked_by",
                     f"resolves to step {deadline}: {n_groups} group(s) from start step {start} leave "
                     f"{(deadline - start) // n_groups} steps per group, fewer than min_interval "
                     f"{self.min_interval}; move the deadline later, start earlier, or lower "
                     "min_interval / the number of groups (group_size)")]
        return []
