"""Turn the ``rewards:`` config into callables and score a batch with their weighted sum.

Config forms (YAML)::

    rewards:
      accuracy: 1.0                                   # name: weight
      format: {weight: 0.1, kwargs: {prefilled_think: true}}
      my_pkg.verifiers:units: {weight: 1.0, kwargs: {tolerance: 0.01}, on_error: zero}

``on_error`` says what a reward that raises does: ``raise`` (default) stops the run with one error naming
the reward, the sample index and the exception; ``zero`` scores the failing samples 0 and counts them in
metric ``rewards/<name>/errors``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rewards import collect_metrics, get

ON_ERROR = ("raise", "zero")
SPEC_KEYS = ("weight", "kwargs", "on_error")


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message is one line naming it."""


@dataclass
class RewardSpec:
    """One reward function from the config with its weight, extra kwargs and error policy."""

    name: str
    fn: Callable[..., list]
    weight: float
    kwargs: dict = field(default_factory=dict)
    on_error: str = "raise"


def _check_kwargs(name: str, fn: Callable, kwargs: dict) -> None:
    """A kwarg the function cannot take is a config typo: say so now, not at the first step."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"reward '{name}' takes no kwargs {unknown}; it accepts {sorted(params)}")


def build_rewards(spec: dict) -> list[RewardSpec]:
    """Resolve ``{name: weight}`` / ``{name: {weight, kwargs, on_error}}`` into callables.

    Raises:
        KeyError: unknown reward name (the message lists the known ones).
        ValueError: a bad ``on_error``, unknown spec keys, or kwargs the function does not take.
    """
    out = []
    for name, value in spec.items():
        if isinstance(value, dict):
            bad = set(value) - set(SPEC_KEYS)
            if bad:
                raise ValueError(f"reward '{name}': unknown keys {sorted(bad)}; use {{weight, kwargs, on_error}}")
            weight, kwargs, on_error = value.get("weight", 1.0), value.get("kwargs") or {}, value.get("on_error", "raise")
        else:
            weight, kwargs, on_error = value, {}, "raise"
        if on_error not in ON_ERROR:
            raise ValueError(f"reward '{name}': on_error must be 'raise' or 'zero', got {on_error!r}")
        fn = get(name)
        _check_kwargs(name, fn, kwargs)
        out.append(RewardSpec(name, fn, float(weight), dict(kwargs), on_error))
    return out


def _to_float(spec: RewardSpec, i: int, v: object) -> float:
    """One returned value as a float (NaN for ``None``); anything else is the verifier's bug."""
    if v is None:
        return math.nan
    if isinstance(v, (bool, int, float)) or (isinstance(v, Tensor) and v.numel() == 1):
        x = float(v)
        if math.isfinite(x):
            return x
    raise RewardError(f"reward '{spec.name}' returned {v!r} for sample {i}; a reward returns a finite float or None")


def _call(spec: RewardSpec, completions: list[str], columns: dict) -> list:
    values = spec.fn(completions=completions, **columns, **spec.kwargs)
    if not isinstance(values, (list, tuple)) or len(values) != len(completions):
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
        raise RewardError(f"reward '{spec.name}' returned {got} for {len(completions)} completions; "
                          "return a list with one float or None per completion")
    return list(values)


def _run_one(spec: RewardSpec, completions: list[str], columns: dict) -> tuple[list[float], int]:
    """Call the reward on the batch. On an exception, call it per sample to find the failing ones.

    Returns the N values (NaN = None) and the number of samples that raised (scored 0 under ``zero``).
    """
    try:
        values = _call(spec, completions, columns)
        return [_to_float(spec, i, v) for i, v in enumerate(values)], 0
    except RewardError:
        raise
    except Exception as batch_error:  # noqa: BLE001 - a user verifier may raise anything
        out, errors = [], 0
        for i in range(len(completions)):
            one = {k: v[i : i + 1] for k, v in columns.items()}
            try:
                out.append(_to_float(spec, i, _call(spec, completions[i : i + 1], one)[0]))
            except RewardError:
                raise
            except Exception as e:  # noqa: BLE001
                if spec.on_error == "raise":
                    raise RewardError(
                        f"reward '{spec.name}' failed on sample {i} ({completions[i][:60]!r}...): "
                        f"{type(e).__name__}: {e}; fix the verifier, or set on_error: zero for it in the config"
                    ) from None
                out.append(0.0)
                errors += 1
        if errors == 0 and spec.on_error == "raise":  # only the batch call failed: report that
            raise RewardError(f"reward '{spec.name}' failed on the batch but on no single sample: "
                                  f"{type(batch_error).__name__}: {batch_error}") from None
        return out, errors


def batch_columns(rows: list[dict], prompts: list[str]) -> dict[str, list]:
    """Dataset columns batched for a reward call: ``{column: [value per row]}``, with the prompts as
    ``prompts`` (the TRL name) instead of the rows' ``prompt``."""
    columns = {key: [row.get(key) for row in rows] for key in rows[0]} if rows else {}
    columns.pop("prompt", None)
    columns["prompts"] = list(prompts)
    return columns


def score(specs: list[RewardSpec], completions: list[str], rows: list[dict], prompts: list[str],
          completion_lengths: list[int] | None = None) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
    """Weighted sum of rewards over N completions.

    Args:
        specs: the rewards and weights.
        completions: N completion texts.
        rows: N dataset rows (each row's columns are passed batched, e.g. ``answer=[...]``).
        prompts: N prompt texts.
        completion_lengths: N completion lengths in tokens, passed as column ``completion_lengths``.

    Returns:
        total (N,) float; per reward name a (N,) tensor with NaN where the reward returned ``None`` (``None``
        contributes 0 to the sum and is left out of that reward's mean); and counters for this batch:
        ``rewards/<name>/errors`` (samples scored 0 under ``on_error: zero``) plus whatever each reward
        ``report``-ed, as ``rewards/<name>/<key>`` (e.g. ``rewards/accuracy/timeouts``).

    Raises:
        RewardError: a reward raised under ``on_error: raise``, or returned the wrong number or kind of values.
    """
    columns = batch_columns(rows, prompts)
    if completion_lengths is not None:
        columns["completion_lengths"] = [int(n) for n in completion_lengths]
    total = torch.zeros(len(completions))
    per_reward: dict[str, Tensor] = {}
    metrics: dict[str, float] = {}
    for spec in specs:
        with collect_metrics() as reported:
            values, errors = _run_one(spec, completions, columns)
        vec = torch.tensor(values, dtype=torch.float32)
        per_reward[spec.name] = vec
        total += spec.weight * torch.nan_to_num(vec, nan=0.0)
        metrics[f"rewards/{spec.name}/errors"] = float(errors)
        for key, value in reported.items():
            metrics[f"rewards/{spec.name}/{key}"] = value
    return total, per_reward, metrics
