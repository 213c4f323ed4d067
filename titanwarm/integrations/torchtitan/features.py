"""Which torchtitan glue fits the installed torchtitan, by its features (not its version string).

- ``train_spec`` (torchtitan <= 0.2.x, TOML configs): ``torchtitan.protocols.train_spec`` exists;
  the glue wraps a ``TrainSpec``'s builders (``train_spec.py``, ``register.py``, ``config.py``).
- ``trainer`` (torchtitan 0.3.x, Python configs): ``torchtitan.config.configurable`` exists and
  ``Trainer`` has a nested ``Config``; the glue subclasses the ``Trainer`` (``trainer.py``,
  ``recipes.py``).

Both checks only look for modules (``importlib.util.find_spec``), so a later release that keeps
these extension points keeps working, and one that drops them fails with :func:`require`'s line.
"""

from __future__ import annotations

import importlib.util


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def has_train_spec_registry() -> bool:
    """torchtitan's ``TrainSpec`` registry (``torchtitan.protocols.train_spec``, <= 0.2.x)."""
    return _has_module("torchtitan.protocols.train_spec")


def has_configurable_trainer() -> bool:
    """torchtitan's ``Configurable`` components and ``Trainer.Config`` (0.3.x)."""
    return _has_module("torchtitan.config.configurable") and _has_module("torchtitan.trainer")


def glue() -> str:
    """``"trainer"`` (0.3.x), ``"train_spec"`` (<= 0.2.x); raises ImportError for neither."""
    if has_configurable_trainer():
        return "trainer"
    if has_train_spec_registry():
        return "train_spec"
    raise ImportError(f"titanwarm: torchtitan {installed_version()} has neither a TrainSpec registry "
                      "(<= 0.2.x) nor a configurable Trainer (0.3.x); see docs/torchtitan.md")


def require(kind: str) -> None:
    """Raise ImportError with one line saying which module to use instead, unless the installed
    torchtitan has the extension points of glue ``kind``."""
    if glue() == kind:
        return
    installed = glue()
    use = {"trainer": "--module titanwarm.integrations.torchtitan.recipes --config <recipe>",
           "train_spec": "[job] custom_config_module and [experimental] custom_import "
                         "(titanwarm.integrations.torchtitan.config / .register)"}
    raise ImportError(f"titanwarm: torchtitan {installed_version()} has the {installed} extension points, "
                      f"not the {kind} ones; use {use[installed]} (see docs/torchtitan.md)")


def installed_version() -> str:
    """The installed torchtitan distribution's version (for messages only)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("torchtitan")
    except PackageNotFoundError:
        return "(not installed)"
