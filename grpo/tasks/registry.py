"""The task registry: ``task: <name>`` in the config names a factory registered here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TASKS: dict[str, Callable[..., Any]] = {}


def register_task(name: str) -> Callable:
    """Register a task factory under ``name`` (used by the ``task:`` config key). The factory takes the
    ``task_kwargs`` and returns a :class:`grpo.tasks.Task`; a bad kwarg raises ``TypeError`` or ``ValueError``."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        TASKS[name] = fn
        return fn

    return wrap


def get_task(name: str, **kwargs: Any) -> Any:
    """Build the task registered as ``name`` from its ``task_kwargs``; an unknown name lists the known ones.

    Raises:
        ValueError: unknown task name; whatever the factory raises for bad kwargs or data.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)
