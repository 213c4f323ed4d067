"""Curvature ruler: warm-started λmax of Adam's preconditioned Hessian for stable training.

Public API: :class:`CurvatureTracker`, :class:`CurvatureEstimate`, the ``[curvature]`` config
section :class:`Curvature`. See docs/curvature.md.
"""

from titanwarm.curvature.config import Curvature
from titanwarm.curvature.tracker import CurvatureEstimate, CurvatureTracker

__all__ = ["Curvature", "CurvatureEstimate", "CurvatureTracker"]
