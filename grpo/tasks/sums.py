"""The ``sums`` task: "What is a + b?" (or a - b) as a question in words, for instruct models (``template: chat``).

The ``arithmetic`` task writes its prompt in the tiny base model's 28-token format; a real instruct model needs a
plain-language question and its own chat template. This task generates every pair (a, b) with a in
``min_a..max_a`` and b in ``min_b..max_b`` once, holds ``num_eval`` of them out (a fixed draw from its own seed, so
every run and every seed is scored on the same problems, and the train rows never include them), and renders
prompts like a dataset task (``template``, ``system_prompt``). No file and no download: it is how
``configs/smollm2-135m-sums.yaml`` runs offline.

The gold is the integer result (``answer``); ``a`` and ``b`` pass through as columns.
"""

from __future__ import annotations

import random
from typing import Any

from grpo.tasks.base import Task
from grpo.tasks.registry import register_task
from grpo.tasks.templates import TEMPLATES, render_prompt

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}
EVAL_SEED = 4321  # the held-out draw depends on this seed only, never on the run's seed
QUESTION = "What is {a} {op} {b}?"


def sums_rows(min_a: int, max_a: int, min_b: int, max_b: int, op: str) -> list[dict]:
    """Every problem of the task, in a fixed order: ``question``, ``answer`` (a string), ``a``, ``b``.

    Example:
        >>> sums_rows(1, 2, 3, 3, "+")[0]
        {'question': 'What is 1 + 3?', 'answer': '4', 'a': 1, 'b': 3}
    """
    return [{"question": QUESTION.format(a=a, op=op, b=b), "answer": str(OPS[op](a, b)), "a": a, "b": b}
            for a in range(min_a, max_a + 1) for b in range(min_b, max_b + 1)]


@register_task("sums")
def sums_task(min_a: int = 1, max_a: int = 20, min_b: int = 1, max_b: int = 20, op: str = "+", num_eval: int = 64,
              template: str = "chat", system_prompt: str | None = None, prefill_think: bool = False,
              eval_only: bool = False) -> Task:
    """Sums (``op: "+"``) or differences (``op: "-"``) of a in ``min_a..max_a`` and b in ``min_b..max_b``.

    Args:
        min_a, max_a, min_b, max_b: the operand ranges (inclusive, >= 0).
        op: ``+`` or ``-``.
        num_eval: held-out problems (drawn once with a fixed seed; never served for training).
        template, system_prompt, prefill_think: how prompts are rendered (as for the ``dataset`` task);
            ``chat`` needs an instruct model's tokenizer.
        eval_only: accepted for standalone evaluation (the rows are generated, so nothing is skipped).
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}; got {op!r}")
    if not (0 <= min_a <= max_a and 0 <= min_b <= max_b):
        raise ValueError(f"need 0 <= min_a <= max_a and 0 <= min_b <= max_b; got a in {min_a}..{max_a}, b in "
                         f"{min_b}..{max_b}")
    if template not in TEMPLATES and "{question}" not in template:
        raise ValueError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)} or a string with "
                         "{question}")
    rows = sums_rows(min_a, max_a, min_b, max_b, op)
    if not 1 <= num_eval < len(rows):
        raise ValueError(f"num_eval must be between 1 and {len(rows) - 1} (the task has {len(rows)} problems); got "
                         f"{num_eval}")
    held = set(random.Random(EVAL_SEED).sample(range(len(rows)), num_eval))
    evals = [rows[i] for i in sorted(held)]
    train = [r for i, r in enumerate(rows) if i not in held]

    def render(row: dict, tokenizer: Any) -> dict:
        return {**row, "prompt": render_prompt(row["question"], template, tokenizer, system_prompt, prefill_think)}

    return Task("sums", evals, train=train, render=render, template=template, prefill_think=prefill_think,
                system_prompt=system_prompt, stats={"train_rows": len(train), "eval_rows": len(evals)},
                columns=("question", "answer", "a", "b"))
