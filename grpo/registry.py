"""Name -> function tables for the variation points (losses, estimators, scalings, corrections, ...).

One small helper so every registry behaves alike: ``register(name)`` decorates, ``get(name)`` returns the entry
or raises one line listing the known names. It imports nothing from the package, so the pure math modules can
use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def make_registry(kind: str) -> tuple[dict[str, Any], Callable[[str], Callable], Callable[[str], Any]]:
    """A name -> entry table, its ``register(name)`` decorator and a ``get(name)`` whose error lists known names.

    Args:
        kind: what the names choose, as the config key users write (e.g. ``loss_type``), for the error line.
    """
    table: dict[str, Any] = {}

    def register(name: str) -> Callable:
        def wrap(fn: Any) -> Any:
            table[name] = fn
            return fn

        return wrap

    def get(name: str) -> Any:
        if name not in table:
            raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
        return table[name]

    return table, register, get
