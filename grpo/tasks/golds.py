"""Gold answers: reading them from a dataset's columns and checking, at load time, that the accuracy reward can
parse every one (a bad gold is a bad row, named by its index, never a silent 0 during training)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpo.errors import DataError


def last_boxed(text: str) -> str | None:
    r"""Content of the last top-level ``\boxed{...}`` (or ``\fbox{...}``) in ``text``; ``None`` if none.

    Uses the rewards' own box scanner, so a gold is read exactly as an answer is.

    Example:
        >>> last_boxed(r"so $x = \boxed{\frac{1}{2}}$.")
        '\\frac{1}{2}'
    """
    from rewards.accuracy import boxed_contents

    boxes = boxed_contents(text)
    return boxes[-1].strip() if boxes else None


def gsm8k_gold(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, without thousands separators ("1,000" -> "1000")."""
    if "####" not in solution:
        raise ValueError("no '####' before the final answer")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise ValueError("empty answer after '####'")
    return gold


def check_gold(answer: str) -> str:
    """A gold answer's cheap per-row check (non-empty); the accuracy reward parses all golds in one batch later."""
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("empty gold answer")
    return answer.strip()


def first_bad_gold(answers: list[str]) -> tuple[int | None, str] | None:
    """The first gold the accuracy reward cannot parse, as (index or None, reason); ``None`` when all parse.

    ``rewards.accuracy.parse_golds`` reports a bad gold as ``ValueError("row i: reason")``; this is the one place
    that reads that text. The rewards side is moving to structured (index, reason) problems, and then this
    function returns them as they come.
    """
    from rewards import accuracy  # rewards import nothing from grpo, so this cannot cycle

    parse = getattr(accuracy, "parse_golds", None)
    if parse is None:  # a rewards package without a batch gold parser: nothing to check
        return None
    try:
        parse(answers)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        head, _, reason = msg.partition(":")
        k = head.removeprefix("row ")
        if not (msg.startswith("row ") and reason and k.isdigit() and int(k) < len(answers)):
            return None, msg[:200]
        return int(k), reason.strip().removesuffix("; fix or drop the row")[:200]
    return None


def validate_golds(rows: list[dict], indices: list[int], source: str, on_bad_row: str) -> tuple[list[dict], list[str]]:
    """Parse every row's ``answer`` as the accuracy reward will, once, at load time.

    Args:
        rows: normalised rows; ``indices[k]`` is row k's index in the raw dataset (for messages).

    Returns:
        (rows whose gold parses, reasons for the rows dropped). With ``on_bad_row == "error"`` the first bad
        gold raises :class:`DataError` naming its dataset row.
    """
    rows, indices, dropped = list(rows), list(indices), []
    while rows:
        problem = first_bad_gold([r["answer"] for r in rows])
        if problem is None:
            break
        k, reason = problem
        if k is None:
            raise DataError(f"{source}: gold answers cannot be parsed: {reason}")
        if on_bad_row == "error":
            raise DataError(f"{source}: bad row {indices[k]}: {reason}; fix the data or set "
                            "task_kwargs.on_bad_row: skip")
        dropped.append(f"row {indices[k]}: {reason}")
        del rows[k], indices[k]  # rows before k passed; parse the rest again
    return rows, dropped


GOLD_FORMATS: dict[str, Callable[[Any], str]] = {
    "raw": lambda v: str(v).strip(),
    "gsm8k": lambda v: gsm8k_gold(str(v)),
    "boxed": lambda v: _require(last_boxed(str(v)), "no \\boxed{} answer in the solution"),
}


def _require(value: str | None, why: str) -> str:
    if value is None:
        raise ValueError(why)
    return value
