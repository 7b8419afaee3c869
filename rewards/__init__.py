"""Rule rewards and the reward registry.

Contract (the same as TRL's, so functions move both ways)::

    def my_reward(completions: list[str], **columns) -> list[float | None]: ...

``columns`` holds every dataset column batched alongside ``completions`` (e.g. ``answer: list[str]``) plus
``prompts``. ``None`` means "does not apply to this sample". Built-in rewards never raise.

``get(name)`` resolves a registered name, a dotted path ``"package.module:function"`` or an entry point in
group ``grpo_zero.rewards``. This package imports nothing from ``grpo``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable

RewardFn = Callable[..., list]

_REGISTRY: dict[str, RewardFn] = {}
ENTRY_POINT_GROUP = "grpo_zero.rewards"


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make ``fn`` findable as ``rewards.get(name)`` and by ``name`` in YAML configs."""

    def wrap(fn: RewardFn) -> RewardFn:
        _REGISTRY[name] = fn
        fn.reward_name = name  # type: ignore[attr-defined]
        return fn

    return wrap


def available() -> list[str]:
    """Names of the registered rewards and of installed entry points."""
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get(name: str) -> RewardFn:
    """Resolve ``name``: registered name, ``"package.module:function"``, or a ``grpo_zero.rewards`` entry point.

    Raises:
        KeyError: nothing matches; the message lists the known names.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise KeyError(f"reward {name!r}: cannot import module {module_name!r} ({e})") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise KeyError(f"reward {name!r}: module {module_name!r} has no function {attr!r}")
        return fn
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise KeyError(
        f"unknown reward {name!r}; known rewards: {', '.join(available())} "
        "(or give a dotted path 'package.module:function')"
    )


# Import the built-ins so they register themselves.
from rewards import accuracy as _accuracy  # noqa: E402,F401
from rewards import format as _format  # noqa: E402,F401
