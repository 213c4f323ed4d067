"""Load-time checks of the ``[optimizer]`` keys that Muon and NuMuon read (see config/sections.py)."""

from __future__ import annotations

from typing import Any

from titanwarm.optim.orthogonalize import RANK_SCHEDULES, UPDATE_SCALES


def problems(opt: Any) -> list[tuple[str, str]]:
    """(key, why) for every Muon/NuMuon key of ``opt`` (an ``[optimizer]`` section) out of range."""
    checks = [
        ("momentum", 0 <= opt.momentum < 1, "a number in [0, 1)"),
        ("ns_steps", 1 <= opt.ns_steps < 100, "an integer in [1, 99]"),
        ("ns_coefficients", len(opt.ns_coefficients) == 3, "three numbers [a, b, c]"),
        ("ns_eps", opt.ns_eps > 0, "a number > 0"),
        ("update_scale", opt.update_scale in UPDATE_SCALES, f"one of {', '.join(UPDATE_SCALES)}"),
        ("adamw_modules", all(isinstance(m, str) and m and "." not in m for m in opt.adamw_modules),
         "module-name components (no dots), e.g. [\"tok_embeddings\", \"output\"]"),
        ("rank_fraction", 0 < opt.rank_fraction <= 1, "a number in (0, 1]"),
        ("rank_fraction_final", opt.rank_fraction_final == -1 or 0 < opt.rank_fraction_final <= 1,
         "-1 or a number in (0, 1]"),
        ("rank_schedule", opt.rank_schedule in RANK_SCHEDULES, f"one of {', '.join(RANK_SCHEDULES)}"),
        ("rank_hold_fraction", 0 <= opt.rank_hold_fraction <= 1, "a number in [0, 1]"),
        ("krylov_oversample", opt.krylov_oversample >= 0, "an integer >= 0"),
        ("krylov_iters", opt.krylov_iters >= 0, "an integer >= 0"),
    ]
    found = [(key, f"{getattr(opt, key)!r} is out of range; allowed: {what}")
             for key, ok, what in checks if not ok]
    if (not found and opt.rank_schedule != "constant" and opt.rank_fraction_final != -1
            and opt.rank_fraction_final > opt.rank_fraction):
        found.append(("rank_fraction_final", f"{opt.rank_fraction_final} exceeds rank_fraction "
                                             f"{opt.rank_fraction}; the schedule only decays"))
    return found
