"""The one registry style for every pluggable kind: objectives (`loss.kind`), evaluation
protocols (`eval.protocols`), data sources (`data.name`) and backbones (`model.backbone`).

A registry maps each name to where its object lives, "module:ATTRIBUTE", and imports the
module when the name is first asked for (big_vision's import-by-name habit): adding one
is one module that defines the object and one line in its package's registry. A name that
is not there is one ConfigError line naming the config field and the registered names.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterator

from bt_jax.errors import ConfigError


class Registry:
    """name -> "module:ATTRIBUTE", in registration order.

    kind: what it holds ("objective"); field: the config field that names one
    ("loss.kind"); home: the file that lists them, for the error message.
    """

    def __init__(self, kind: str, field: str, entries: dict[str, str], home: str):
        for name, target in entries.items():
            if ":" not in target:
                raise ValueError(f"{kind} {name!r}: {target!r} is not 'module:ATTRIBUTE'.")
        self.kind, self.field, self.home = kind, field, home
        self.entries = dict(entries)

    def get(self, name: str) -> Any:
        """The registered object of `name`; ConfigError naming the registered ones."""
        if name not in self.entries:
            raise ConfigError(f"Unknown {self.field} {name!r}; registered {self.kind}s: "
                              f"{sorted(self.entries)} ({self.home}).")
        module, _, attribute = self.entries[name].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self.entries)

    def modules(self) -> tuple[str, ...]:
        """The modules the registered objects live in (each once)."""
        return tuple(dict.fromkeys(t.partition(":")[0] for t in self.entries.values()))

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def items(self) -> list[tuple[str, Any]]:
        """[(name, object)], every module imported."""
        return [(name, self.get(name)) for name in self.entries]

    def values(self) -> list[Any]:
        """[object], every module imported."""
        return [self.get(name) for name in self.entries]
