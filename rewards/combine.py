"""Turn the ``rewards:`` config into callables and score a batch with their weighted sum."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from rewards import get


@dataclass
class RewardSpec:
    """One reward function from the config with its weight and extra kwargs."""

    name: str
    fn: Callable[..., list]
    weight: float
    kwargs: dict = field(default_factory=dict)


def build_rewards(spec: dict) -> list[RewardSpec]:
    """Resolve ``{name: weight}`` / ``{name: {weight, kwargs}}`` into callables (unknown names list the known)."""
    out = []
    for name, value in spec.items():
        weight, kwargs = (value.get("weight", 1.0), value.get("kwargs", {})) if isinstance(value, dict) else (value, {})
        out.append(RewardSpec(name, get(name), float(weight), dict(kwargs or {})))
    return out


def score(specs: list[RewardSpec], completions: list[str], rows: list[dict], prompts: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of rewards over N completions.

    Args:
        specs: the rewards and weights.
        completions: N completion texts.
        rows: N dataset rows (each row's columns are passed batched, e.g. ``answer=[...]``).
        prompts: N prompt texts.

    Returns:
        total (N,) float, and per reward name a (N,) tensor with NaN where the reward returned ``None``
        (``None`` contributes 0 to the sum and is left out of that reward's mean).
    """
    columns = {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
    columns.pop("prompt", None)  # passed as `prompts`, the TRL name
    total = torch.zeros(len(completions))
    per_reward: dict[str, Tensor] = {}
    for spec in specs:
        values = spec.fn(completions=completions, prompts=prompts, **columns, **spec.kwargs)
        if len(values) != len(completions):
            raise RuntimeError(f"reward '{spec.name}' returned {len(values)} values for {len(completions)} completions")
        vec = torch.tensor([math.nan if v is None else float(v) for v in values])
        per_reward[spec.name] = vec
        total += spec.weight * torch.nan_to_num(vec, nan=0.0)
    return total, per_reward
