"""Adapters that plug titanwarm's framework-agnostic pieces into other training frameworks.

Nothing in ``titanwarm.archwarm`` or ``titanwarm.curvature`` imports from here."""
