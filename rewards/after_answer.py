"""Text after the final answer: does it take the answer back, or state another one? (``after_answer: strict``)

``<answer>12</answer> Actually, it is 13.`` states another answer; ``<answer>8</answer> No wait, that's wrong.``
takes it back without one; ``<answer>12</answer> So the answer is 12.`` only restates it. Numbers that restate
the question's quantities count as other answers (the strict policy, docs/verifiers.md).
"""

from __future__ import annotations

import re

from rewards.exact import plain_value, split_relation
from rewards.extract import clean, stated_answers


def _same_answer(stated: str, answer: str) -> bool:
    """Does text after the answer state the same answer (same cleaned text, or the same plain number)?"""
    a, b = clean(stated), clean(answer)
    sides = split_relation(b) or [b]
    stated_sides = split_relation(a) or [a]
    flat = lambda x: "".join(x.split())
    if flat(stated_sides[-1]) in (flat(b), flat(sides[-1])):
        return True
    va, vb = plain_value(stated_sides[-1]), plain_value(sides[-1])
    if va is not None and vb is not None and va[0] == vb[0]:
        return True
    letter = lambda x: re.sub(r"\\text\{(.*)\}", r"\1", flat(x)).strip("()").upper()
    return len(letter(a)) == 1 and letter(a) == letter(b)  # "(B)" after the answer "B" or "\text{(B)}"


# Words that take the answer back without stating another one: "<answer>8</answer> No wait, that's wrong."
_RETRACTION = re.compile(r"\b(?:wait|wrong|incorrect|mistaken?|actually|instead|scratch that|not (?:right|correct)|"
                         r"recalculat\w*|re-?check\w*|redo|oops)\b", re.IGNORECASE)


def retracted(tail: str) -> bool:
    """True when the text after the answer takes it back (``No wait, that's wrong``), with or without a number.

    Example:
        >>> retracted(" No wait, that is wrong."), retracted(" I hope this helps.")
        (True, False)
    """
    return bool(_RETRACTION.search(tail))


def _without_restatements(tail: str, answer: str) -> str:
    """``tail`` with each whole-token copy of ``answer`` blanked: "So the answer is \\frac{11}{6}." restates it (it
    states no 11 and no 6), while "33" does not restate "3" (str.find, not a regex compiled per answer)."""
    if not answer:
        return tail
    out, start = [], 0
    i = tail.find(answer)
    while i >= 0:
        end = i + len(answer)
        before, after = tail[i - 1 : i], tail[end : end + 2]
        whole = not (before.isalnum() or before in (".", ",", "\\", "_")) and not (
            after[:1].isalnum() or after[:1] in ("{", "^", "_") or (after[:1] in ".," and after[1:2].isdigit()))
        if whole:
            out.append(tail[start:i] + " ")
            start = end
        i = tail.find(answer, end if whole else i + 1)
    return "".join(out) + tail[start:]


def other_answer_after(tail: str, answer: str) -> bool:
    """True when the text after the answer states a different answer (a box, a math span or a number).

    Example:
        >>> other_answer_after(" Actually, the final answer is 13.", "12"), other_answer_after(" So 12.", "12")
        (True, False)
    """
    if not tail.strip():
        return False
    tail = _without_restatements(tail, answer.strip())
    return any(not _same_answer(s, answer) for s in stated_answers(tail))
