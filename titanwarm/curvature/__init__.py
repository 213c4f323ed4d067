"""Curvature ruler: warm-started λmax of Adam's preconditioned Hessian for stable training.

Public API: :class:`CurvatureTracker`, :class:`CurvatureEstimate`, the ``[curvature]`` config
section :class:`Curvature`. See docs/curvature.md.
"""

import importlib
from typing import TYPE_CHECKING

from titanwarm.curvature.config import Curvature

if TYPE_CHECKING:
    from titanwarm.curvature.tracker import CurvatureEstimate, CurvatureTracker


def __getattr__(name: str):
    # The tracker (and the HVP engine under it) is imported on first use, so that the config
    # schema, which imports curvature.config, loads without it.
    if name in ("CurvatureEstimate", "CurvatureTracker"):
        return getattr(importlib.import_module("titanwarm.curvature.tracker"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Curvature", "CurvatureEstimate", "CurvatureTracker"]
