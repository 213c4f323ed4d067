"""``ConfigError``, in a leaf module: anything may raise or catch it without importing the schema."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, located by source (file or command line) and key."""

    def __init__(self, source: str, key: str, why: str) -> None:
        self.source, self.key, self.why = source, key, why
        super().__init__(f"{source}: {key}: {why}" if key else f"{source}: {why}")
