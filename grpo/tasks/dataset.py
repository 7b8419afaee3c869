"""``task: dataset``: any dataset with a question column and a gold column, by hub name or local file."""

from __future__ import annotations

from typing import Any

from grpo.tasks.base import Task
from grpo.tasks.golds import GOLD_FORMATS, check_gold
from grpo.tasks.loading import dataset_task, spec_from_kwargs, text_column
from grpo.tasks.registry import register_task


@register_task("dataset")
def generic_task(question_field: str = "question", answer_field: str = "answer", gold: str = "raw",
                 keep_columns: list[str] | None = None, **kwargs: Any) -> Task:
    """Any dataset with a question column and a gold column: ``path`` (hub name or local file) is required.

    Args:
        question_field: column holding the problem.
        answer_field: column holding the gold answer.
        gold: how to read the gold: ``raw`` (as is), ``gsm8k`` (after ``####``), ``boxed`` (last ``\\boxed{}``).
        keep_columns: extra columns passed through to rewards (default: all other columns). The source columns of
            ``question_field`` and ``answer_field`` are always kept as well, under their own names.
        **kwargs: ``DatasetSpec`` fields (``path``, ``split``, ``eval_split``, ``template``...).
    """
    if "path" not in kwargs:
        raise TypeError("task 'dataset' needs task_kwargs.path (a hub name or a local .jsonl/.parquet/.csv file)")
    if gold not in GOLD_FORMATS:
        raise TypeError(f"gold must be one of {', '.join(GOLD_FORMATS)}, got {gold!r}")
    own = ("question_field", "answer_field", "gold", "keep_columns")  # listed in the unknown-key error too
    spec = spec_from_kwargs(kwargs, own, eval_split=kwargs.get("eval_split"))  # dataset: no default eval split
    read_gold = GOLD_FORMATS[gold]

    def normalize(row: dict) -> dict:
        # Mapped fields keep their source column too (a reward copied from open-r1 reads ``solution``).
        extra = dict(row)
        if keep_columns is not None:
            extra = {k: row[k] for k in dict.fromkeys([*keep_columns, question_field, answer_field]) if k in row}
        if row.get(answer_field) is None:
            raise KeyError(answer_field)
        extra.pop("prompt", None)  # the rendered prompt is ours
        return {**extra, "question": text_column(row, question_field), "answer": check_gold(read_gold(row[answer_field]))}

    return dataset_task("dataset", spec, normalize)
