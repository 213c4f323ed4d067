"""The ``[depth_schedule]`` TOML section: when locked transformer blocks join training.

A locked block is an exact identity map held out of the optimizer (see ``archwarm/locks.py``). The
schedule starts with ``initial_layers`` (or ``initial_fraction`` of the depth) active, then unlocks
the rest in groups: the first group after ``start`` optimizer steps, then one every ``interval``
steps, in the block ``order``. ``unlocks`` gives full control instead. ``python train.py --config X
--print-schedule`` prints the resolved timeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNLOCK_INITS = ("noise", "zero_out", "ramp")
ORDERS = ("bottom_up", "top_down", "interleaved")
MODES = ("fixed",)


@dataclass
class DepthSchedule:
    enabled: bool = False
    """Turn architecture warm-up on (blocks start locked and unlock on this schedule)."""
    mode: str = "fixed"
    """"fixed": unlock on the step timeline below."""
    initial_layers: int = -1
    """Blocks active from the first step; -1 uses initial_fraction of the depth instead."""
    initial_fraction: float = 0.5
    """Fraction of the blocks active from the first step (rounded, at least 1)."""
    start: int | str = "warmup_end"
    """The first group unlocks after this many optimizer steps; "warmup_end" means the LR
    scheduler's warmup_steps."""
    interval: int = 500
    """Optimizer steps between two group unlocks."""
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
        n_layers = MODELS.get(cfg.model.name).flavors[cfg.model.flavor].n_layers
        try:
            plan = resolve_schedule(self, n_layers, cfg.lr_scheduler.warmup_steps)
        except ScheduleError as e:
            return [(e.key, e.why)]
        last = plan.events[-1].step if plan.events else 0
        if last >= cfg.training.steps:
            return [("unlocks" if self.unlocks else "interval",
                     f"the last group unlocks after step {last}, but training.steps is "
                     f"{cfg.training.steps}: every block must unlock before the run ends")]
        return []
