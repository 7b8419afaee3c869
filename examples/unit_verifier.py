"""A custom verifier: a unit-aware answer checker ("3 km" == "3000 m" == "3000 meters").

Use it from a config without touching grpo-zero's code (see docs/verifiers.md and examples/units.yaml)::

    rewards:
      examples.unit_verifier:unit_reward: {weight: 1.0, kwargs: {rel_tol: 1.0e-6}, on_error: zero}

The contract is the one every reward follows::

    def f(completions: list[str], **columns) -> list[float | None]

``completions`` are the N completion texts; ``columns`` holds every dataset column batched alongside them
(here ``answer``), plus ``prompts`` and ``completion_lengths``; kwargs from the config arrive as keyword
arguments. Return one float per completion, or ``None`` where the reward does not apply (here: a gold
answer without a unit), which leaves the sample out of this reward's mean and adds 0 to the total.
"""

from __future__ import annotations

import math
import re

import rewards
from rewards.extract import extract_answer

# unit -> (dimension, factor to the SI base unit)
UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 1e-3), "cm": ("length", 1e-2), "m": ("length", 1.0), "km": ("length", 1e3),
    "in": ("length", 0.0254), "ft": ("length", 0.3048), "mi": ("length", 1609.344),
    "mg": ("mass", 1e-6), "g": ("mass", 1e-3), "kg": ("mass", 1.0), "t": ("mass", 1e3),
    "ms": ("time", 1e-3), "s": ("time", 1.0), "min": ("time", 60.0), "h": ("time", 3600.0),
    "ml": ("volume", 1e-3), "l": ("volume", 1.0),
}
ALIASES = {
    "millimeter": "mm", "centimeter": "cm", "meter": "m", "metre": "m", "kilometer": "km", "inch": "in",
    "foot": "ft", "feet": "ft", "mile": "mi", "milligram": "mg", "gram": "g", "kilogram": "kg", "ton": "t",
    "tonne": "t", "second": "s", "sec": "s", "minute": "min", "hour": "h", "hr": "h", "millisecond": "ms",
    "liter": "l", "litre": "l", "milliliter": "ml",
}
_QUANTITY = re.compile(r"^\s*([-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+)\s*(?:\\(?:text|mathrm)\{\s*)?([A-Za-z]+)\.?\s*\}?\s*$")


def parse_quantity(text: str) -> tuple[float, str, float] | None:
    """``"3,000 meters"`` -> (3000.0, "length", 3000.0 in SI); ``None`` if it is not a number with a known unit.

    Example:
        >>> parse_quantity("2.5 km")
        (2.5, 'length', 2500.0)
    """
    m = _QUANTITY.match(text.replace("$", ""))
    if m is None:
        return None
    value = float(m.group(1).replace(",", ""))
    unit = m.group(2).lower()
    unit = ALIASES.get(unit.rstrip("s"), ALIASES.get(unit, unit))  # plurals: "meters" -> "meter" -> "m"
    if unit not in UNITS:
        return None
    dimension, factor = UNITS[unit]
    return value, dimension, value * factor


def unit_reward(completions: list[str], answer: list[str], rel_tol: float = 1e-6, **columns) -> list[float | None]:
    """1.0 when the final answer is the gold quantity in any unit of the same dimension, else 0.0.

    Args:
        completions: N completion texts in R1 format (the answer inside ``<answer>…</answer>``).
        answer: N gold answers with a unit, e.g. ``"3 km"``; a gold without a known unit gives ``None``.
        rel_tol: relative tolerance after converting both to SI units.
        **columns: other dataset columns (ignored).

    Example:
        >>> unit_reward(["<think>1 km is 1000 m</think><answer>3000 m</answer>"], answer=["3 km"])
        [1.0]
    """
    out: list[float | None] = []
    wrong_dimension = 0
    for completion, gold_text in zip(completions, answer):
        gold = parse_quantity(str(gold_text))
        if gold is None:
            out.append(None)  # not a quantity with a unit: this reward does not apply
            continue
        pred_text = extract_answer(completion)
        pred = parse_quantity(pred_text) if pred_text else None
        if pred is None:
            out.append(0.0)
        elif pred[1] != gold[1]:
            wrong_dimension += 1
            out.append(0.0)
        else:
            out.append(1.0 if math.isclose(pred[2], gold[2], rel_tol=rel_tol) else 0.0)
    rewards.report("wrong_dimension", wrong_dimension)  # logged as rewards/<name>/wrong_dimension
    return out
