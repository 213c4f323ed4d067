"""Configuration: the TOML schema (``sections``), its loader and load-time validation."""

from titanwarm.config.loader import ConfigError, load_config, to_toml
from titanwarm.config.sections import JobConfig

__all__ = ["ConfigError", "JobConfig", "load_config", "to_toml"]
