"""The hub tasks: GSM8K, MATH (train levels 3-5, eval MATH-500), Countdown (TinyZero) and ``dataset`` (any dataset
with a question column and a gold column). Each loads by hub name or from local files given in ``task_kwargs``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpo.tasks.base import Task
from grpo.tasks.golds import GOLD_FORMATS, _require, check_gold, gsm8k_gold, last_boxed
from grpo.tasks.loading import dataset_task, spec_from_kwargs
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
        return {"question": _text(row, "question"), "answer": check_gold(gsm8k_gold(_text(row, "answer"))),
                "solution": row["answer"]}

    return dataset_task("gsm8k", spec, normalize)


def _text(row: dict, key: str) -> str:
    value = row[key]
    if value is None:  # a column absent from some rows of a JSONL file loads as None
        raise KeyError(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column {key!r} is empty or not text")
    return value


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
            gold = _require(last_boxed(_text(row, "solution")), "no 'answer' column and no \\boxed{} in the solution")
        return {"question": _text(row, "problem"), "answer": check_gold(gold), "level": _level(row.get("level"))}

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


@register_task("dataset")
def generic_task(question_field: str = "question", answer_field: str = "answer", gold: str = "raw",
                 keep_columns: list[str] | None = None, **kwargs: Any) -> Task:
    """Any dataset with a question column and a gold column: ``path`` (hub name or local file) is required.

    Args:
        question_field: column holding the problem.
        answer_field: column holding the gold answer.
        gold: how to read the gold: ``raw`` (as is), ``gsm8k`` (after ``####``), ``boxed`` (last ``\\boxed{}``).
        keep_columns: extra columns passed through to rewards (default: all other columns).
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
        extra = {k: v for k, v in row.items() if k not in (question_field, answer_field)}
        if keep_columns is not None:
            extra = {k: row[k] for k in keep_columns}
        if row.get(answer_field) is None:
            raise KeyError(answer_field)
        extra.pop("prompt", None)  # the rendered prompt is ours
        return {**extra, "question": _text(row, question_field), "answer": check_gold(read_gold(row[answer_field]))}

    return dataset_task("dataset", spec, normalize)
