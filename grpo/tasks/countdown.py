"""Countdown (TinyZero): reach a target from 3-4 numbers with + - * / and each number once."""

from __future__ import annotations

from typing import Any

from grpo.tasks.base import Task
from grpo.tasks.loading import dataset_task, spec_from_kwargs
from grpo.tasks.registry import register_task

COUNTDOWN_QUESTION = (
    "Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic operations "
    "(+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return the "
    "final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>"
)  # TinyZero's wording (examples/data_preprocess/countdown.py)


def countdown_row(target: Any, nums: Any) -> dict:
    """A Countdown row: ``question`` in TinyZero's words, ``answer`` = str(target), ``target`` and ``nums`` kept."""
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"target must be an integer, got {target!r}")
    if not isinstance(nums, list) or not nums or not all(isinstance(n, int) and not isinstance(n, bool) for n in nums):
        raise TypeError(f"nums must be a non-empty list of integers, got {nums!r}")
    return {"question": COUNTDOWN_QUESTION.format(nums=nums, target=target), "answer": str(target),
            "target": target, "nums": nums}


@register_task("countdown")
def countdown_task(**kwargs: Any) -> Task:
    """Countdown (TinyZero): reach ``target`` from ``nums`` (3-4 numbers) with + - * / and each number once.

    ``Jiayi-Pan/Countdown-Tasks-3to4`` has one split; the last ``num_eval`` (default 512) rows are held out for
    evaluation. Rows keep ``target`` and ``nums`` for the ``countdown`` reward; ``answer`` is the target.
    """
    kwargs.setdefault("num_eval", 512)
    spec = spec_from_kwargs(kwargs, path="Jiayi-Pan/Countdown-Tasks-3to4", split="train", eval_split=None,
                            template="r1", prefill_think=True)
    return dataset_task("countdown", spec, lambda row: countdown_row(row["target"], row["nums"]), golds=False)
