"""Gold answers: reading them from a dataset's columns and checking, at load time, that the accuracy reward can
parse every one (a bad gold is a bad row, named by its index, never a silent 0 during training)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpo.errors import DataError
from rewards.extract import last_boxed  # the one box scanner (rewards/extract.py); math.py reads golds with it


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


def first_bad_gold(answers: list[str]) -> tuple[int, str] | None:
    """The first gold the accuracy reward cannot parse, as (index, reason); ``None`` when all parse.

    ``rewards.golds.check_golds`` reports problems as structured (index, reason) values; no error text is read.

    Example:
        >>> first_bad_gold(["1", ""])
        (1, "gold answer '' is empty")
    """
    from rewards.golds import check_golds  # rewards import nothing from grpo, so this cannot cycle

    _, problems = check_golds(answers)
    return (problems[0].index, problems[0].describe()) if problems else None


def validate_golds(rows: list[dict], indices: list[int], source: str, on_bad_row: str) -> tuple[list[dict], list[str]]:
    """Parse every row's ``answer`` as the accuracy reward will, once, at load time (``rewards.golds.check_golds``:
    problems come back as (index, reason) values, not error text).

    Args:
        rows: normalised rows; ``indices[k]`` is row k's index in the raw dataset (for messages).

    Returns:
        (rows whose gold parses, reasons for the rows dropped). With ``on_bad_row == "error"`` the first bad
        gold raises :class:`DataError` naming its dataset row.
    """
    from rewards.golds import check_golds  # starts math-verify workers only when a dataset is loaded

    _, problems = check_golds([r["answer"] for r in rows])
    if problems and on_bad_row == "error":
        first = problems[0]
        raise DataError(f"{source}: bad row {indices[first.index]}: {first.describe()}; fix the data or set "
                        "task_kwargs.on_bad_row: skip")
    bad = {p.index for p in problems}
    dropped = [f"row {indices[p.index]}: {p.describe()}" for p in problems]
    return [r for k, r in enumerate(rows) if k not in bad], dropped


GOLD_FORMATS: dict[str, Callable[[Any], str]] = {
    "raw": lambda v: str(v).strip(),
    "gsm8k": lambda v: gsm8k_gold(str(v)),
    "boxed": lambda v: require_gold(last_boxed(str(v)), "no \\boxed{} answer in the solution"),
}


def require_gold(value: str | None, why: str) -> str:
    """``value``, or ValueError(``why``) when the gold answer could not be found (the loader turns it into one line
    naming the row)."""
    if value is None:
        raise ValueError(why)
    return value
