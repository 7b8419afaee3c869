"""The one parser of a ``rewards:`` config entry: ``name: weight`` or ``name: {weight, kwargs, on_error, deadline_s}``.

Config validation (``grpo/config.py``), the trainer (``rewards.combine.build_rewards``), the task/reward match
check and ``python -m grpo.evaluate`` all read reward specs through :func:`parse_spec`, so a new spec key is
one edit here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SPEC_KEYS = ("weight", "kwargs", "on_error", "deadline_s")
ON_ERROR = ("raise", "zero")


@dataclass(frozen=True)
class SpecEntry:
    """One reward's config entry, validated.

    Attributes:
        name: the config key (a registered name, ``package.module:function`` or an entry point).
        weight: its weight in the sum.
        kwargs: extra keyword arguments for the function.
        on_error: ``raise`` (stop the run) or ``zero`` (score failing samples 0, count ``errors``).
        deadline_s: when set, the reward runs in the killable worker pool and samples past this many seconds
            score 0 (counted as ``timeouts``); ``None`` runs it in-process.
    """

    name: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    on_error: str = "raise"
    deadline_s: float | None = None


def parse_spec(name: str, value: object) -> SpecEntry:
    """Validate one ``rewards:`` entry.

    Raises:
        ValueError: one line naming the reward and the bad key or value.

    Example:
        >>> parse_spec("format", {"weight": 0.1, "kwargs": {"template": "boxed"}}).kwargs
        {'template': 'boxed'}
    """
    if isinstance(value, dict):
        bad = set(value) - set(SPEC_KEYS)
        if bad:
            raise ValueError(f"reward '{name}': unknown keys {sorted(bad)}; use "
                             "{weight: w, kwargs: {...}, on_error: raise|zero, deadline_s: seconds}")
        weight, kwargs = value.get("weight", 1.0), value.get("kwargs") or {}
        on_error, deadline_s = value.get("on_error", "raise"), value.get("deadline_s")
    else:
        weight, kwargs, on_error, deadline_s = value, {}, "raise", None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"reward '{name}' weight must be a number, got {weight!r}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"reward '{name}': kwargs must be a mapping, got {kwargs!r}")  # noqa: TRY004 - a config value
    if on_error not in ON_ERROR:
        raise ValueError(f"reward '{name}': on_error must be raise or zero, got {on_error!r}")
    if deadline_s is not None and (isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float))
                                   or not deadline_s > 0):
        raise ValueError(f"reward '{name}': deadline_s must be a number of seconds > 0, got {deadline_s!r}")
    return SpecEntry(name, float(weight), dict(kwargs), on_error, None if deadline_s is None else float(deadline_s))


def parse_specs(rewards: dict) -> list[SpecEntry]:
    """Validate a whole ``rewards:`` mapping (see :func:`parse_spec`)."""
    return [parse_spec(name, value) for name, value in rewards.items()]


def reward_kwargs(rewards: dict, name: str) -> dict:
    """The configured kwargs of reward ``name`` (``{}`` when it is not configured or has none)."""
    return parse_spec(name, rewards[name]).kwargs if name in rewards else {}
