"""Name -> component registries (models, optimizers, LR schedules, datasets, tokenizers).

Every pluggable piece of titanwarm is looked up by the name written in the TOML file. A fork adds its
own piece without editing titanwarm: put ``@DATASETS.register("my_data")`` (or any other registry)
in a module and name that module in ``[job] custom_import``; the trainer imports it before it reads
any component name.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of components of one kind (e.g. every dataset builder)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` adds the decorated object under ``name``."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        """Add ``obj`` under ``name``; registering a taken name is an error (two plugins collide)."""
        if name in self._items and self._items[name] is not obj:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Return the component called ``name``; a KeyError lists the known names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """One line saying ``name`` is unknown, with a close match and the allowed names."""
        close = difflib.get_close_matches(name, list(self._items), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._items))}"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


MODELS: Registry = Registry("model")
"""model name -> ``ModelSpec`` (model class, flavors, parallelize function)."""
OPTIMIZERS: Registry = Registry("optimizer")
"""optimizer name -> ``build(param_groups, cfg) -> torch.optim.Optimizer``."""
LR_SCHEDULES: Registry = Registry("lr schedule")
"""decay type -> ``factor(progress in [0, 1]) -> float`` (1 at the start of decay)."""
DATASETS: Registry = Registry("dataset")
"""dataset name -> ``documents(cfg, split) -> Iterator[str]``."""
TOKENIZERS: Registry = Registry("tokenizer format")
"""tokenizer format -> ``load(path) -> Tokenizer``."""


def import_custom(module: str) -> None:
    """Import a user's module (``[job] custom_import``) so that its registrations take effect."""
    if module:
        importlib.import_module(module)
