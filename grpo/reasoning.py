"""Reasoning signals: cheap text statistics that show reasoning behaviour emerging during RL.

The DeepSeek-R1 paper's "aha moment" is a policy that starts to re-read its own work ("Wait, wait. That's an
aha moment...") and to think longer. Two numbers per step track that offline, with no model in the loop:

- the *reflection ratio*: the share of completions that contain at least one reflection word ("wait",
  "verify", "let me", ...), matched case-insensitively on word boundaries, so "check" matches "Check:" and
  "double-check" but not "checkmate", and "let me" matches "Let  me" across any whitespace;
- the *think length*: how long the ``<think>...</think>`` block is. :func:`think_block` finds the block;
  :func:`mean_think_length` averages any length function over the completions that have one (the trainer
  passes a tokenizer-based count, so ``reasoning/think_length`` is in tokens).

Everything here is pure Python on strings: no torch, no tokenizer, no config.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

from grpo.config import DEFAULT_REFLECTION_WORDS
from rewards.extract import think_block


def reflection_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """Compile ``words`` into one case-insensitive, word-boundary regex; None when ``words`` is empty.

    Args:
        words: phrases such as ``["wait", "let me"]``; regex characters are escaped, inner whitespace
            matches any run of whitespace.

    Example:
        >>> bool(reflection_pattern(["let me"]).search("OK. Let  me see"))
        True
    """
    parts = [r"\s+".join(re.escape(w) for w in phrase.split()) for phrase in words if phrase.strip()]
    if not parts:
        return None
    # (?<!\w) / (?!\w) instead of \b: also correct for phrases that start or end with a non-word character.
    return re.compile(r"(?<!\w)(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")(?!\w)", re.IGNORECASE)


def has_reflection(text: str, words: Iterable[str] = DEFAULT_REFLECTION_WORDS) -> bool:
    """True when ``text`` contains at least one of ``words`` (case-insensitive, whole words only).

    Example:
        >>> has_reflection("Wait, 8+7=15"), has_reflection("await the result")
        (True, False)
    """
    pattern = reflection_pattern(words)
    return bool(pattern and pattern.search(text))


def reflection_flags(completions: list[str], words: Iterable[str] = DEFAULT_REFLECTION_WORDS) -> list[bool]:
    """Per completion: does it contain a reflection word? N texts -> N booleans (pattern compiled once)."""
    pattern = reflection_pattern(words)
    return [bool(pattern and pattern.search(c)) for c in completions]


def reflection_ratio(completions: list[str], words: Iterable[str] = DEFAULT_REFLECTION_WORDS) -> float:
    """Share of ``completions`` that contain at least one reflection word; NaN for an empty list.

    Example:
        >>> reflection_ratio(["Wait, no.", "6+2=8", "let me check"])
        0.6666666666666666
    """
    flags = reflection_flags(completions, words)
    return sum(flags) / len(flags) if flags else math.nan


def think_lengths(completions: list[str], count: Callable[[str], int] = len) -> list[float]:
    """Per completion: ``count`` of its think block, NaN where it has none. Default ``count`` = characters.

    Args:
        completions: N completion texts.
        count: length of one block, e.g. ``lambda s: len(tokenizer(s).input_ids)`` for tokens.
    """
    return [math.nan if (block := think_block(c)) is None else float(count(block)) for c in completions]


def mean_think_length(completions: list[str], count: Callable[[str], int] = len) -> float:
    """Mean think-block length over the completions that have a block (NaN when none has one).

    Completions without a block are left out rather than counted as 0, so the number measures how long
    the model thinks when it does; the format reward tracks how often it does.

    Example:
        >>> mean_think_length(["<think>abcd</think>", "<think>ab</think>x", "no tags"])
        3.0
    """
    values = [v for v in think_lengths(completions, count) if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan
