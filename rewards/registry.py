"""The reward registry and the per-call metric sinks; imports nothing from the package, so anything may import it.

``get(name)`` resolves, in order: a registered name, a path ``"package.module:function"``, a ``"module:"``
prefix ``"package.module:name"`` whose module registers ``name`` with ``@rewards.register``, an entry point in
group ``grpo_zero.rewards``, or TRL's dotted form ``"package.module.function"``. A reward adds counters to the
step's metrics with ``report(key, value)`` (logged as ``rewards/<name>/<key>``) and per-sample notes with ``annotate(notes)``
(written to ``completions.jsonl`` beside the sample); both are no-ops outside :func:`collect_metrics`.
"""

from __future__ import annotations

import contextvars
import difflib
import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points

RewardFn = Callable[..., list]

_REGISTRY: dict[str, RewardFn] = {}
ENTRY_POINT_GROUP = "grpo_zero.rewards"


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make ``fn`` findable as ``rewards.get(name)`` and by ``name`` in YAML configs.

    Example:
        >>> @register("always_one")
        ... def always_one(completions, **columns):
        ...     return [1.0] * len(completions)
        >>> get("always_one") is always_one
        True
    """

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


def _import(name: str, module_name: str):
    """Import ``module_name`` for reward ``name``; a missing module says where Python looked."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the plug-in module itself, not one of its imports
            raise KeyError(f"reward {name!r}: no module {module_name!r} on the Python path; run from the folder "
                           f"that holds it (now {os.getcwd()}) or add its folder to PYTHONPATH") from None
        raise KeyError(f"reward {name!r}: cannot import module {module_name!r} ({e})") from None
    except ImportError as e:
        raise KeyError(f"reward {name!r}: cannot import module {module_name!r} ({e})") from None


def _from_module(name: str, module_name: str, attr: str) -> RewardFn:
    """``package.module:attr`` (or ``package.module.attr``): the function ``attr`` of the module, or the name
    ``attr`` it registers."""
    module = _import(name, module_name)
    fn = getattr(module, attr, None)
    if callable(fn):
        return fn
    if attr in _REGISTRY:  # the module ran @rewards.register(attr) on import
        return _REGISTRY[attr]
    public = [a for a in dir(module) if not a.startswith("_") and callable(getattr(module, a))]
    close = difflib.get_close_matches(attr, public, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise KeyError(f"reward {name!r}: module {module_name!r} has no function {attr!r}{hint} and registers no "
                   f"reward {attr!r}")


def _from_entry_point(name: str) -> RewardFn | None:
    """The function of entry point ``name`` in group ``grpo_zero.rewards``; ``None`` if there is none."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                fn = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plug-in must not look like an unknown name
                raise KeyError(f"reward {name!r}: entry point {ep.value!r} failed to load ({type(e).__name__}: {e})") from None
            if not callable(fn):
                raise KeyError(f"reward {name!r}: entry point {ep.value!r} is not a function")
            return fn
    return None


def get(name: str) -> RewardFn:
    """Resolve ``name``: registered name, ``"package.module:function"`` or ``"package.module.function"`` (TRL's
    and open-r1's dotted form), ``"package.module:registered_name"``, or a ``grpo_zero.rewards`` entry point.

    Raises:
        KeyError: nothing matches; the message names the closest known reward and lists the known names.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        return _from_module(name, module_name, attr)
    fn = _from_entry_point(name)
    if fn is not None:
        return fn
    if "." in name:  # module.function: the last dot splits module and function
        module_name, _, attr = name.rpartition(".")
        return _from_module(name, module_name, attr)
    close = difflib.get_close_matches(name, available(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise KeyError(
        f"unknown reward {name!r}{hint}; known rewards: {', '.join(available())} (or give a dotted path "
        "'package.module.function' / 'package.module:function', or 'package.module:name' for a name that module "
        "registers)"
    )


def import_path(fn: RewardFn) -> str | None:
    """``"module:qualname"`` under which a worker process can import ``fn``; ``None`` if it has none."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"


@dataclass
class Sink:
    """What rewards ``report`` (counters), ``annotate`` (per-sample notes) and ``log_metric`` (TRL's scalars) during
    one reward call."""

    counters: dict[str, float] = field(default_factory=dict)
    notes: list[dict] | None = None
    metrics: dict[str, list[float]] = field(default_factory=dict)  # log_metric values, averaged when logged


_SINK: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("reward_sink", default=None)


def report(key: str, value: float) -> None:
    """Add ``value`` to counter ``key`` of the reward being scored (logged as ``rewards/<name>/<key>``).

    A no-op outside :func:`collect_metrics`, so rewards can call it unconditionally.
    """
    sink = _SINK.get()
    if sink is not None:
        sink.counters[key] = sink.counters.get(key, 0.0) + float(value)


def annotate(notes: list[dict]) -> None:
    """Attach one JSON-able dict per sample to the reward being scored (``completions.jsonl`` records them).

    A no-op outside :func:`collect_metrics`.
    """
    sink = _SINK.get()
    if sink is not None:
        sink.notes = list(notes)


@contextmanager
def collect(sink: Sink | None = None) -> Iterator[Sink]:
    """Collect what rewards ``report`` and ``annotate`` inside the ``with`` block (this context only)."""
    sink = sink if sink is not None else Sink()
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


@contextmanager
def collect_metrics() -> Iterator[dict[str, float]]:
    """Collect what rewards ``report`` inside the ``with`` block (this thread/context only) into a dict."""
    with collect() as sink:
        yield sink.counters
