"""Rule rewards and the reward registry.

Contract (the same as TRL's, so functions move both ways)::

    def my_reward(completions: list[str], **columns) -> list[float | None]: ...

``columns`` holds every dataset column batched alongside ``completions`` (e.g. ``answer: list[str]``) plus
``prompts``. ``None`` means "does not apply to this sample". Built-in rewards never raise.

``get(name)`` resolves a registered name, a dotted path ``"package.module:function"`` or an entry point in
group ``grpo_zero.rewards``. A reward may add counters to the step's metrics with ``report(key, value)``;
``rewards.combine.score`` logs them as ``rewards/<name>/<key>``. This package imports nothing from ``grpo``.

Built-ins: ``accuracy`` (math answers, bounded in time), ``format`` and ``tag_count`` (R1 output format),
``countdown`` (TinyZero's task), ``overlong`` (DAPO's soft overlong punishment).
"""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points

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
            try:
                fn = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plug-in must not look like an unknown name
                raise KeyError(f"reward {name!r}: entry point {ep.value!r} failed to load ({type(e).__name__}: {e})") from None
            if not callable(fn):
                raise KeyError(f"reward {name!r}: entry point {ep.value!r} is not a function")
            return fn
    raise KeyError(
        f"unknown reward {name!r}; known rewards: {', '.join(available())} "
        "(or give a dotted path 'package.module:function')"
    )


_METRICS: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("reward_metrics", default=None)


def report(key: str, value: float) -> None:
    """Add ``value`` to counter ``key`` of the reward being scored (logged as ``rewards/<name>/<key>``).

    A no-op outside :func:`collect_metrics`, so rewards can call it unconditionally.
    """
    sink = _METRICS.get()
    if sink is not None:
        sink[key] = sink.get(key, 0.0) + float(value)


@contextmanager
def collect_metrics() -> Iterator[dict[str, float]]:
    """Collect what rewards ``report`` inside the ``with`` block (this thread/context only) into a dict."""
    sink: dict[str, float] = {}
    token = _METRICS.set(sink)
    try:
        yield sink
    finally:
        _METRICS.reset(token)


# Import the built-ins so they register themselves.
from rewards import accuracy as _accuracy  # noqa: F401
from rewards import countdown as _countdown  # noqa: F401
from rewards import format as _format  # noqa: F401
from rewards import overlong as _overlong  # noqa: F401
