"""MATH: train on levels 3-5 of the Hendrycks MATH train problems, evaluate on MATH-500 (boxed answers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpo.tasks.base import Task
from grpo.tasks.golds import check_gold, last_boxed, require_gold
from grpo.tasks.loading import dataset_task, spec_from_kwargs, text_column
from grpo.tasks.registry import register_task


def _level(value: Any) -> int | None:
    """MATH levels come as 3 or "Level 3" (and "Level ?" for a few rows)."""
    s = str(value).replace("Level", "").strip()
    return int(s) if s.isdigit() else None


def _math_normalize(levels: list[int] | None) -> Callable[[dict], dict | None]:
    def normalize(row: dict) -> dict | None:
        if levels is not None and _level(row.get("level")) not in levels:
            return None  # filtered out, not bad
        gold = row.get("answer")
        if not (isinstance(gold, str) and gold.strip()):
            gold = require_gold(last_boxed(text_column(row, "solution")), "no 'answer' column and no \\boxed{} in the solution")
        sources = {k: row[k] for k in ("problem", "solution") if k in row}  # kept for rewards that read them (open-r1)
        return {**sources, "question": text_column(row, "problem"), "answer": check_gold(gold),
                "level": _level(row.get("level"))}

    return normalize


@register_task("math")
def math_task(levels: list[int] | None = (3, 4, 5), **kwargs: Any) -> Task:
    r"""MATH: train on levels 3-5 of the 7.5k train problems, evaluate on MATH-500.

    Train: ``DigitalLearningGmbH/MATH-lighteval`` (the original Hendrycks MATH, as the Dr. GRPO / SimpleRL
    recipes use it). Eval: ``HuggingFaceH4/MATH-500``. The gold is the ``answer`` column when present, else
    the last ``\boxed{}`` of ``solution``. ``levels: null`` keeps every level; the eval set is never filtered.
    """
    spec = spec_from_kwargs(kwargs, ("levels",), path="DigitalLearningGmbH/MATH-lighteval", name="default",
                            split="train", eval_path="HuggingFaceH4/MATH-500", eval_split="test", template="qwen_math")
    if levels is not None and (isinstance(levels, (str, int)) or not all(isinstance(x, int) for x in levels)):
        raise TypeError(f"levels must be a list of ints like [3, 4, 5] or null, got {levels!r}")
    return dataset_task("math", spec, _math_normalize(list(levels) if levels is not None else None),
                        _math_normalize(None))
