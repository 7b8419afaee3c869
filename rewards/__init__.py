"""Rule rewards and the reward registry.

Contract (TRL's ``GRPOTrainer`` calling convention, so functions move both ways; see ``rewards/calling.py``)::

    def my_reward(completions: list[str], **columns) -> list[float | None]: ...

``columns`` holds every dataset column batched alongside ``completions`` (e.g. ``answer: list[str]``) plus
``prompts``, ``completion_ids``, ``completion_lengths``, ``trainer_state``, ``log_extra`` and ``log_metric``.
Under ``template: chat`` prompts and completions are conversational (lists of message dicts), as in TRL; the
built-ins accept both forms. ``async def`` rewards are awaited. ``None`` means "does not apply to this sample".
Built-in rewards never raise.

``get(name)`` resolves a registered name, a path ``"package.module:function"`` or ``"package.module.function"``
(TRL's form), a registered name in a module (``"package.module:name"``) or an entry point in group
``grpo_zero.rewards`` (see ``rewards/registry.py``).
A reward may add counters to the step's metrics with ``report(key, value)``; ``rewards.combine.score`` logs them
as ``rewards/<name>/<key>``. This package imports nothing from ``grpo``.

Layout: ``registry`` (names, counters), ``calling`` (TRL's calling convention), ``extract`` (the final answer:
text normalisation, tags, boxes, cleaning), ``canon`` (the canonical reading of an answer: hedges, units, exact
notations), ``exact`` (exact values, stall guard), ``golds`` (gold parsing), ``spec`` (the ``{weight, kwargs,
on_error, deadline_s}`` spec), ``sandbox`` (killable worker processes), ``combine`` (weighted sum), ``explain``
(CLI), the built-ins.

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
from rewards import accuracy, countdown, format_reward, overlong
from rewards.calling import TrainerState, accepts_messages

# The built-ins read text; registered wrapped, they also take TRL's conversational completions (template: chat).
for _name in ("accuracy", "countdown", "format", "overlong", "tag_count"):
    register(_name)(accepts_messages(get(_name)))

__all__ = ["ENTRY_POINT_GROUP", "RewardFn", "TrainerState", "accepts_messages", "accuracy", "annotate", "available",
           "collect_metrics", "countdown", "format_reward", "get", "overlong", "register", "report"]
