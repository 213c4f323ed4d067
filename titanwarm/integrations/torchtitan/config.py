"""``[job] custom_config_module = "titanwarm.integrations.torchtitan.config"``.

torchtitan 0.2.2's ``ConfigManager`` imports this module's ``JobConfig`` and merges it into its own
(``ConfigManager._merge_configs``: sections only present here are added as they are). The sections
are titanwarm's own dataclasses, so the keys, defaults and meanings are exactly those of titanwarm's
``[depth_schedule]`` (``archwarm/config.py``) and ``[curvature]`` (``curvature/config.py``).

No ``from __future__ import annotations`` here on purpose: torchtitan converts the TOML tables into
nested dataclasses only when ``field.type`` is the class itself, not a string.
"""

from dataclasses import dataclass, field

from titanwarm.archwarm.config import DepthSchedule
from titanwarm.curvature.config import Curvature


@dataclass
class JobConfig:
    depth_schedule: DepthSchedule = field(default_factory=DepthSchedule)
    """Architecture warm-up: locked blocks and their unlock schedule (see docs/torchtitan.md)."""
    curvature: Curvature = field(default_factory=Curvature)
    """Warm-started lambda_max tracking of Adam's preconditioned Hessian."""
