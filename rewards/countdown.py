"""``countdown``: TinyZero's Countdown task. Does the equation reach the target using each number once?

The final answer (the single ``<answer>`` block, as for ``accuracy``) must be an expression such as
``(25 - 5) * 4 / 2`` or ``(25 - 5) * 4 / 2 = 40``: only the given numbers, each used exactly once, combined
with ``+ - * /`` and parentheses, evaluating exactly to ``target``. It is parsed by ``rewards.arith`` (a
small recursive-descent parser over exact fractions), never ``eval``-ed. Unary minus is not allowed
(``-3`` is not one of the numbers).

Columns: ``target`` (int) and ``nums`` (list of ints). Scores: 1.0 correct; ``format_score`` (default 0.0;
TinyZero uses 0.1) when an expression was given but is wrong; 0.0 when there is no single answer or the
answer is not an arithmetic expression.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

from rewards.arith import ArithError, evaluate
from rewards.extract import clean, extract_answer
from rewards.registry import register


def check_equation(equation: str, target: float, nums: list[int]) -> bool | None:
    """True if ``equation`` uses each of ``nums`` once and equals ``target``; False if wrong; None if unparseable.

    Example:
        >>> check_equation("(25 - 5) * 4 / 2", 40, [2, 4, 5, 25])
        True
    """
    expr = clean(equation).replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/").replace("×", "*")
    if "=" in expr:  # "... = 40": the left side is the equation; the right must be the target if present
        expr, _, rhs = expr.partition("=")
        try:
            if evaluate(rhs, allow_unary=False).value != Fraction(target):
                return False
        except (ArithError, ValueError, TypeError):
            return False
    try:
        parsed = evaluate(expr, allow_unary=False)
    except ArithError:
        return None
    if any(n.denominator != 1 for n in parsed.numbers):
        return False  # only the given integers may appear
    if Counter(int(n) for n in parsed.numbers) != Counter(int(n) for n in nums):
        return False
    return parsed.value == Fraction(target)


@register("countdown")
def countdown_reward(completions: list[str], target: list, nums: list, format_score: float = 0.0,
                     answer_format: str = "r1", **columns) -> list[float | None]:
    """1.0 for a right equation, ``format_score`` for a wrong one, 0.0 for none. Never raises on completion text.

    Args:
        completions: N completion texts.
        target: N targets.
        nums: N lists of the numbers to use, each exactly once.
        format_score: score of a well-formed but wrong equation (TinyZero: 0.1).
        answer_format: where the equation is: ``r1`` (``<answer>`` block), ``boxed`` or ``auto``.
        **columns: other dataset columns (ignored).

    Example:
        >>> countdown_reward(["<think>25-5=20</think><answer>(25-5)*4/2</answer>"], target=[40], nums=[[2, 4, 5, 25]])
        [1.0]
    """
    out: list[float | None] = []
    for completion, t, ns in zip(completions, target, nums):
        equation = extract_answer(completion, answer_format)
        verdict = None if equation is None else check_equation(equation, t, list(ns))
        out.append(1.0 if verdict else (0.0 if verdict is None else float(format_score)))
    return out
