"""Rule rewards and the reward registry.

Contract (the same as TRL's, so functions move both ways)::

    def my_reward(completions: list[str], **columns) -> list[float | None]: ...

``columns`` holds every dataset column batched alongside ``completions`` (e.g. ``answer: list[str]``) plus
``prompts``. ``None`` means "does not apply to this sample". Built-in rewards never raise.

``get(name)`` resolves a registered name, a dotted path ``"package.module:function"``, a registered name in a
module (``"package.module:name"``) or an entry point in group ``grpo_zero.rewards`` (see ``rewards/registry.py``).
A reward may add counters to the step's metrics with ``report(key, value)``; ``rewards.combine.score`` logs them
as ``rewards/<name>/<key>``. This package imports nothing from ``grpo``.

Layout: ``registry`` (names, counters), ``extract`` (the final answer: text normalisation, tags, boxes, cleaning),
``canon`` (the canonical reading of an answer: hedges, units, exact notations), ``numbers`` (exact values, stall
guard), ``golds`` (gold parsing), ``spec`` (the ``{weight, kwargs, on_error, deadline_s}`` spec),
``sandbox`` (killable worker processes), ``combine`` (weighted sum), ``explain`` (CLI), the built-ins.

Built-ins: ``accuracy`` (math answers, bounded in time), ``format`` and ``tag_count`` (R1 output format),
``countdown`` (TinyZero's task), ``overlong`` (DAPO's soft overlong punishment).
"""

from __future__ import annotations

from rewards.registry import (
    ENTRY_POINT_GROUP,
    RewardFn,
    annotate,
    available,
    collect_metrics,
    get,
    register,
    report,
)

# isort: split
# Import the built-ins so they register themselves (they import rewards.registry, never this package: no circle).
from rewards import accuracy, countdown, format, overlong

__all__ = ["ENTRY_POINT_GROUP", "RewardFn", "accuracy", "annotate", "available", "collect_metrics", "countdown",
           "format", "get", "overlong", "register", "report"]
