"""``format``: the strict R1-Zero output format.

A completion scores 1.0 when it is exactly ``<think>…</think>`` followed by ``<answer>…</answer>`` (only
whitespace around and between them), with one of each tag and no tags nested inside; else 0.0.
"""

from __future__ import annotations

import re

from rewards import register

_TAG = re.compile(r"</?(?:think|answer)>")
# One think block, one answer block, whitespace only outside them. Tags inside the blocks are rejected
# separately by counting, so "<think><think></think>" cannot pass.
_STRICT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


def is_r1_format(text: str) -> bool:
    """True when ``text`` is one think block then one answer block, nothing else."""
    if len(_TAG.findall(text)) != 4:
        return False
    return _STRICT.fullmatch(text) is not None


@register("format")
def format_reward(completions: list[str], **columns) -> list[float | None]:
    """1.0 for the strict R1 format, else 0.0.

    Example:
        >>> format_reward(["<think>1+2=3</think><answer>3</answer>", "<answer>3</answer>"])
        [1.0, 0.0]
    """
    return [1.0 if isinstance(c, str) and is_r1_format(c) else 0.0 for c in completions]
