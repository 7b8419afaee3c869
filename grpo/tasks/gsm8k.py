"""GSM8K (``openai/gsm8k``): grade-school word problems; the gold is the number after ``####``."""

from __future__ import annotations

from typing import Any

from grpo.tasks.base import Task
from grpo.tasks.golds import check_gold, gsm8k_gold
from grpo.tasks.loading import dataset_task, spec_from_kwargs, text_column
from grpo.tasks.registry import register_task


@register_task("gsm8k")
def gsm8k_task(**kwargs: Any) -> Task:
    """GSM8K (``openai/gsm8k``, config ``main``): train split for training, test split (1319) for eval.

    The gold is the number after ``####`` in the solution, stored in ``answer``; the solution stays in
    ``solution``. Any ``DatasetSpec`` field can be overridden in ``task_kwargs`` (e.g. a local ``path``).
    """
    spec = spec_from_kwargs(kwargs, path="openai/gsm8k", name="main", split="train", eval_split="test",
                            template="r1")

    def normalize(row: dict) -> dict:
        return {"question": text_column(row, "question"), "answer": check_gold(gsm8k_gold(text_column(row, "answer"))),
                "solution": row["answer"]}

    return dataset_task("gsm8k", spec, normalize)
