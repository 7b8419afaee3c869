"""``answer_format: last_number``: the last number in the completion is its answer.

This is lm-evaluation-harness's "flexible-extract" convention (the second metric of its GSM8K tasks, next to the
strict "#### N" match): an instruct model that answers in prose (``To add 7 and 5 ... 7 + 5 = 12.``) writes no
``\\boxed{}`` and no tags, so a boxed or R1 reward scores it 0 however right it is, while its last number is the
answer it ended on. Use it for such models, with a plain ``chat`` template.

Its weakness, stated: it cannot tell a hedge from an answer. ``It is 12, or maybe 13`` is read as 13, ``12. Check:
12 - 5 = 7`` as 7, and a completion that lists several candidates scores whichever comes last. Prefer ``r1`` or
``boxed`` once the model follows a format; this one is for starting where the model is.

What counts as a number: an optional sign (a ``-`` that follows a letter, digit or ``)`` is an operator, not a
sign), digits with optional thousands separators in groups of three (``1,234``), and an optional decimal part.
``$`` and ``%`` around it are cosmetic (the accuracy reward's exact comparison cleans them). A sentence's full
stop is not a decimal point (``is 12.`` reads 12).
"""

from __future__ import annotations

import re

from rewards.extract import Extraction
from rewards.normalize import normalize_text

LAST_NUMBER = "last_number"
# a sign only where it cannot be a binary minus; thousands groups of exactly three digits; a decimal part needs
# a digit after the point (so the full stop of "is 12." is not part of the number)
_NUMBER = re.compile(r"(?:(?<![\w)\].])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")


def numbers_in(text: str) -> list[str]:
    """Every number in ``text``, in order, as written (separators kept, sign kept).

    Example:
        >>> numbers_in("7 + 5 = 12, and 1,234.5 - 3 is -2 (not 10-3)")
        ['7', '5', '12', '1,234.5', '3', '-2', '10', '3']
    """
    return [m.group(0) for m in _NUMBER.finditer(text)]


def find_last_number(text: str, max_chars: int = 65536) -> Extraction:
    """The completion's last number as its final answer, with the same reason codes as :func:`find_answer`.

    Args:
        text: the completion.
        max_chars: longer completions have no answer (reason ``too_long``), as for the other formats.

    Returns:
        An :class:`~rewards.extract.Extraction`: ``answer`` the last number (``None`` with reason ``no_answer``
        when there is none); ``tail`` is empty, since no number follows the last one.

    Example:
        >>> find_last_number("To add 7 and 5, we add them: 7 + 5 = 12.")
        Extraction(answer='12', reason=None, tail='')
    """
    if not isinstance(text, str):
        return Extraction(None, "no_answer")
    if len(text) > max_chars:
        return Extraction(None, "too_long")
    found = numbers_in(normalize_text(text))  # as the other formats read it: "１２" is 12, a zero-width space is gone
    if not found:
        return Extraction(None, "no_answer")
    return Extraction(found[-1], None, "")
