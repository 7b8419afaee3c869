"""Gold answers: parsed once per dataset row, problems reported as values (row index, reason), not error text.

``check_golds`` is what dataset loading calls: it returns every parsed gold and a :class:`GoldProblem` for each
row whose gold cannot be used, so the caller can drop or report those rows without reading messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from rewards.canon import canonical
from rewards.exact import RELATION, count_candidates, is_pathological, plain_value
from rewards.extract import BOX, box_spans, clean, single
from rewards.normalize import normalize_text
from rewards.sandbox import get_pool


@dataclass(frozen=True)
class Gold:
    """A gold answer parsed once per dataset row.

    Attributes:
        text: the answer as the worker pool receives it (wrappers stripped).
        number: its exact value when it is a plain number (the fast path), else ``None``.
        percent: the gold is written as a percentage ("25\\%").
        items: top-level candidates in the gold (``3, 4`` is 2); a prediction may not offer more.
        relation: the gold itself is an equation (``y = 2x``): compare whole, do not take its right side.
        pathological: the gold itself trips the stall guard (then predictions are not refused for it).
        hedges: hedge words and symbols the gold itself uses (an answer may use those).
        text_answer: the gold as lower-case words (``\\text{north}`` -> ``north``), compared in-process; else None.
        decimal: the gold is written as an integer or a decimal (a ``%`` on the answer is then cosmetic).
        prose: words the gold itself carries (an answer may carry those).
    """

    text: str
    number: Fraction | None
    percent: bool
    items: int
    relation: bool
    pathological: bool
    hedges: frozenset[str] = frozenset()
    text_answer: str | None = None
    decimal: bool = False
    prose: tuple[str, ...] = ()


@dataclass(frozen=True)
class GoldProblem:
    """Why the gold of row ``index`` cannot be used.

    Attributes:
        index: position of the row in the list given to :func:`check_golds`.
        reason: ``not_a_string``, ``empty``, ``several_boxes``, ``unparsable`` (math-verify finds no expression),
            ``timeout`` (parsing took longer than the deadline) or ``worker_failure``.
        gold: the gold as given.
    """

    index: int
    reason: str
    gold: object

    def describe(self) -> str:
        """One line for users: the gold and what is wrong with it (no row number; callers know their rows)."""
        why = {"not_a_string": "is not a string", "empty": "is empty",
               "several_boxes": "holds several different \\boxed{} values",
               "unparsable": "cannot be parsed (math-verify finds no expression in it)",
               "timeout": "cannot be parsed in time (parsing it hit the deadline)",
               "worker_failure": "could not be checked (the math-verify workers failed)"}[self.reason]
        return f"gold answer {self.gold!r} {why}"


class GoldError(ValueError):
    """A gold answer cannot be used; ``problems`` holds the structured reasons."""

    def __init__(self, problems: list[GoldProblem]):
        self.problems = problems
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"row {first.index}: {first.describe()}{more}; fix or drop the row")


# an interval gold may be answered as an inequality ("x \\le 3" for "(-\\infty, 3]"): the class is not a hedge there
_INTERVAL = re.compile(r"^\s*[(\[].*,.*[)\]]\s*$|.*\\infty|.*\\cup", re.DOTALL)
_INEQUALITY = frozenset({"inequality"})
_DECIMAL = re.compile(r"^[-+]?(?:\d[\d,]*)?(?:\.\d+)?\s*(?:\\?%)?$")


@lru_cache(maxsize=1 << 16)
def gold_structure(answer: str) -> Gold | str:
    """The cheap, in-process part of parsing one gold: a :class:`Gold`, or a problem reason code (str)."""
    text = clean(normalize_text(answer))
    if not text:
        return "empty"
    if BOX.search(text):
        spans = box_spans(text)
        if spans:
            one = single([content for _, _, content in spans])
            if one is None:
                return "several_boxes"
            text = clean(one)
    canon = canonical(text)  # the same reading as an answer gets: units go, \pm expands, 3\frac{1}{2} is 7/2
    percent = text.endswith("%")
    text = canon.text or text
    value = plain_value(text)
    return Gold(text=text, number=value[0] if value else None, percent=percent, items=count_candidates(text),
                relation=bool(RELATION.search(text)), pathological=is_pathological(text),
                hedges=canon.hedges | canon.separators | (_INEQUALITY if _INTERVAL.match(text) else frozenset()),
                text_answer=canon.text_answer, decimal=bool(_DECIMAL.match(text)), prose=canon.prose)


_GOLD_CHECKED: dict = {}  # gold text -> math-verify's Result, so reloading a dataset does not re-parse
_RESULT_REASON = {"bad_gold": "unparsable", "timeout": "timeout"}


def check_golds(answers: list, deadline_s: float = 10.0) -> tuple[list[Gold | None], list[GoldProblem]]:
    """Parse many gold answers at once (dataset load); non-numbers are checked by math-verify in the worker pool.

    Returns:
        one :class:`Gold` per answer (``None`` where it has a problem) and the problems, in row order.

    Example:
        >>> golds, problems = check_golds(["12", ""])
        >>> golds[0].number, problems
        (Fraction(12, 1), [GoldProblem(index=1, reason='empty', gold='')])
    """
    golds: list[Gold | None] = []
    problems: dict[int, GoldProblem] = {}
    for i, answer in enumerate(answers):
        if answer is None or not isinstance(answer, (str, int, float, Fraction)) or isinstance(answer, bool):
            golds.append(None)
            problems[i] = GoldProblem(i, "not_a_string", answer)
            continue
        g = gold_structure(str(answer))
        golds.append(g if isinstance(g, Gold) else None)
        if not isinstance(g, Gold):
            problems[i] = GoldProblem(i, g, answer)
    todo = sorted({g.text for g in golds if g is not None and g.number is None} - set(_GOLD_CHECKED))
    fresh = {}
    if todo:
        fresh = dict(zip(todo, get_pool().run([{"op": "gold", "gold": t} for t in todo], deadline_s)))
        _GOLD_CHECKED.update({t: r for t, r in fresh.items() if r.status in ("ok", "bad_gold", "timeout")})
    for i, g in enumerate(golds):
        res = None if g is None else (fresh.get(g.text) or _GOLD_CHECKED.get(g.text))
        if res is not None and not res.ok:
            problems[i] = GoldProblem(i, _RESULT_REASON.get(res.status, "worker_failure"), answers[i])
            golds[i] = None
    return golds, [problems[i] for i in sorted(problems)]


def parse_golds(answers: list, deadline_s: float = 10.0) -> list[Gold]:
    """Parse and check many gold answers; all must be usable.

    Raises:
        GoldError: (a ``ValueError``) with ``problems``, the message naming the first bad row.
    """
    golds, problems = check_golds(answers, deadline_s)
    if problems:
        raise GoldError(problems)
    return golds  # type: ignore[return-value]


def parse_gold(answer: str) -> Gold:
    """Parse one gold answer (cached).

    Raises:
        GoldError: the gold is empty, holds several different boxes, or math-verify cannot parse it.

    Example:
        >>> parse_gold("1,234").number
        Fraction(1234, 1)
    """
    return parse_golds([answer])[0]
