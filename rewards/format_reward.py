"""``format`` and ``tag_count``: is the completion in the output format the template asks for?

``format`` (strict, 1.0 or 0.0), by ``template``:

- ``r1`` (default): exactly ``<think>…</think>`` then ``<answer>…</answer>``, only whitespace around and
  between them, one of each tag, no tag nested inside a block, a non-empty answer. With
  ``prefilled_think=True`` the prompt already ends with ``<think>`` (TinyZero, Open-Reasoner-Zero), so the
  completion starts inside the think block: ``…</think><answer>…</answer>`` with no ``<think>`` of its own.
- ``boxed`` (Qwen-Math "put your final answer within \\boxed{}"): exactly one balanced, non-empty
  ``\\boxed{…}``, no R1 tags, and after the box only closing math delimiters and punctuation.

``tag_count`` (partial credit, open-r1 style): 0.25 for each of ``<think>``, ``</think>``, ``<answer>``,
``</answer>`` that appears exactly once (with ``prefilled_think``, ``<think>`` earns its 0.25 by being absent).
"""

from __future__ import annotations

import re

from rewards.extract import ANSWER_CLOSE, ANSWER_OPEN, BOX, THINK_CLOSE, THINK_OPEN, box_spans
from rewards.registry import register

_TAG = re.compile("|".join(re.escape(t) for t in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)))
# One think block, one answer block, whitespace only outside them. Tags inside the blocks are rejected
# separately by counting, so "<think><think></think>" cannot pass.
_STRICT = re.compile(rf"\s*{THINK_OPEN}(.*?){THINK_CLOSE}\s*{ANSWER_OPEN}(.*?){ANSWER_CLOSE}\s*", re.DOTALL)
_AFTER_BOX = re.compile(r"(?:\s|\$|\\\]|\\\)|[.!])*")
TEMPLATES = ("r1", "boxed")


def is_r1_format(text: str, prefilled_think: bool = False) -> bool:
    """True when ``text`` is one think block then one non-empty answer block, nothing else.

    Example:
        >>> is_r1_format("reasoning</think><answer>3</answer>", prefilled_think=True)
        True
    """
    if not isinstance(text, str):
        return False
    if prefilled_think:
        if THINK_OPEN in text:
            return False
        text = THINK_OPEN + text
    if len(_TAG.findall(text)) != 4:
        return False
    m = _STRICT.fullmatch(text)
    return m is not None and m.group(2).strip() != ""


def is_boxed_format(text: str) -> bool:
    """True when ``text`` has exactly one balanced, non-empty ``\\boxed{}`` and ends right after it."""
    if not isinstance(text, str) or _TAG.search(text):
        return False
    spans = box_spans(text)
    if spans is None or len(spans) != 1 or not spans[0][2].strip():
        return False
    start, end, _ = spans[0]
    if not text[BOX.match(text, start).end() : end].lstrip(" ").startswith("{"):
        return False  # "\boxed 5" without braces is not the format
    return _AFTER_BOX.fullmatch(text, end) is not None


@register("format")
def format_reward(completions: list[str], template: str = "r1", prefilled_think: bool = False,
                  **columns) -> list[float | None]:
    """1.0 for the strict format of ``template`` (``r1`` or ``boxed``), else 0.0.

    Args:
        completions: N completion texts.
        template: ``r1`` (think then answer tags) or ``boxed`` (one final ``\\boxed{}``).
        prefilled_think: the prompt ends with ``<think>``; the completion starts inside the think block.
        **columns: dataset columns (ignored).

    Example:
        >>> format_reward(["<think>1+2=3</think><answer>3</answer>", "<answer>3</answer>"])
        [1.0, 0.0]
    """
    if template not in TEMPLATES:
        raise ValueError(f"format: template must be one of {', '.join(TEMPLATES)}; got {template!r}")
    if template == "boxed":
        return [1.0 if is_boxed_format(c) else 0.0 for c in completions]
    return [1.0 if is_r1_format(c, prefilled_think) else 0.0 for c in completions]


@register("tag_count")
def tag_count_reward(completions: list[str], prefilled_think: bool = False, **columns) -> list[float | None]:
    """0.25 per R1 tag that appears exactly once (partial credit that shapes the format early in training).

    Example:
        >>> tag_count_reward(["<think>x</think><answer>1</answer>", "<think>x<answer>1</answer>"])
        [1.0, 0.75]
    """
    out: list[float | None] = []
    for c in completions:
        if not isinstance(c, str):
            out.append(0.0)
            continue
        score = 0.25 * sum(c.count(tag) == 1 for tag in (THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE))
        if prefilled_think:
            score += 0.25 * (THINK_OPEN not in c)
        else:
            score += 0.25 * (c.count(THINK_OPEN) == 1)
        out.append(score)
    return out
