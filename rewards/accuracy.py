"""``accuracy``: is the final answer right?

Extracts exactly one final answer: the content of the single ``<answer>`` block. Several answer blocks or
none score 0. Numbers are compared exactly after light normalisation (thousands separators, ``$``, a
trailing ``.0``, unicode minus).
"""

from __future__ import annotations

import re
from fractions import Fraction

from rewards import register

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def extract_answer(text: str) -> str | None:
    """The content of the single ``<answer>`` block, stripped; ``None`` if there are zero or several."""
    if not isinstance(text, str):
        return None
    blocks = _ANSWER.findall(text)
    if len(blocks) != 1 or text.count("<answer>") != 1:
        return None
    return blocks[0].strip()


def parse_number(text: str) -> Fraction | None:
    """Parse a plain number ("1,234", "$5", "-3.50", "7/2", "−4") exactly; ``None`` if it is not one."""
    s = text.strip().replace("\u2212", "-").replace(",", "").lstrip("$").strip()
    if not _NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


@register("accuracy")
def accuracy_reward(completions: list[str], answer: list[str], **columns) -> list[float | None]:
    """1.0 when the single ``<answer>`` block holds the gold number, else 0.0.

    Example:
        >>> accuracy_reward(["<think></think><answer>17</answer>"], answer=["17"])
        [1.0]
    """
    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        gold_value = parse_number(str(gold))
        pred = extract_answer(completion)
        if gold_value is None:
            out.append(None)  # not a numeric gold: this reward does not apply
        elif pred is None:
            out.append(0.0)
        else:
            out.append(1.0 if parse_number(pred) == gold_value else 0.0)
    return out
