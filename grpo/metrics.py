"""Metrics of a step: pure functions of tensors and text, and the one table of how ranks combine each metric.

The pure functions take values already gathered over ranks; :func:`rollout_metrics_over_ranks` gathers the
per-sample values first (so percentiles and stds are over the whole global batch), and :func:`reduce_over_ranks`
combines per-rank scalars (times, counters, update stats) by :data:`REDUCTIONS`. Names follow TRL's, so dashboards
carry over.

Notation: N rows of the global batch, G = num_generations (a prompt's G rows contiguous).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from grpo import core, reasoning
from grpo.batch import RolloutBatch, UpdateStats
from rewards.calling import logged_metric_names

# How per-rank scalars combine into the logged value. Exact metric names; anything not listed is a counter
# (reward timeouts, errors, worker failures...) and is summed over ranks. The update's own metrics take their
# reduction from UpdateStats' fields, so the two cannot disagree.
REDUCTIONS: dict[str, str] = {
    **UpdateStats.reductions(),
    "time/rollout_s": "max",  # the slowest rank sets the pace
    "time/reward_s": "max",
    "dynamic_sampling/rounds": "max",
    "dynamic_sampling/signal_groups_frac": "mean",
    "dynamic_sampling/filled_frac": "mean",
    "sampling/sampling_logp_difference/mean": "mean",  # sampler/trainer mismatch (grpo.correction)
    "sampling/sampling_logp_difference/max": "max",
    "sampling/importance_sampling_ratio/min": "min",
    "sampling/importance_sampling_ratio/mean": "mean",
    "sampling/importance_sampling_ratio/max": "max",
    "tools/calls_per_completion": "mean",  # tool turns (tool_metrics); tools/timeouts is a counter: summed
    "tools/error_rate": "mean",
    "tools/seconds": "mean",
    "tools/output_tokens": "mean",
    "async/trainer_wait_s": "max",  # async rollouts (grpo/worker): the slowest rank's wait sets the pace
    "async/worker_wait_s": "max",
    "async/staleness": "max",
    "weight_sync/seconds": "max",
    "weight_sync/bytes": "sum",
}
DEFAULT_REDUCTION = "sum"


def reduction(name: str) -> str:
    """How ranks combine metric ``name``: ``max``, ``min``, ``mean`` or ``sum`` (counters)."""
    if name in logged_metric_names():  # a reward's log_metric scalar: averaged, as TRL does
        return "mean"
    return REDUCTIONS.get(name, DEFAULT_REDUCTION)


def combine(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Combine per-rank metric dicts by :func:`reduction`. Ranks may hold different keys (a counter only some hit);
    ``mean`` divides by the number of ranks."""
    if len(per_rank) == 1:
        return dict(per_rank[0])
    n = len(per_rank)
    out: dict[str, float] = {}
    for metrics in per_rank:
        for k, v in metrics.items():
            how = reduction(k)
            if how == "max":
                out[k] = max(out.get(k, v), v)
            elif how == "min":
                out[k] = min(out.get(k, v), v)
            elif how == "mean":
                out[k] = out.get(k, 0.0) + v / n
            else:
                out[k] = out.get(k, 0.0) + v
    return out


def reduce_over_ranks(accelerator: Any, metrics: dict[str, float]) -> dict[str, float]:
    """Every rank's ``metrics`` combined by :data:`REDUCTIONS` (all ranks call it; all get the result)."""
    if accelerator.num_processes == 1:
        return metrics
    from accelerate.utils import gather_object

    # gather_object rather than reduce: ranks may hold different keys.
    return combine(gather_object([metrics]))


def rollout_metrics(rewards: Tensor, lengths: Tensor, truncated: Tensor, per_reward: dict[str, Tensor],
                    group_size: int) -> dict[str, float]:
    """Reward and length statistics of the global batch.

    Args:
        rewards: (N,) weighted reward sums; lengths: (N,) completion tokens (EOS included), float;
        truncated: (N,) 1.0 where cut at max length; per_reward: name -> (N,) values, NaN = None;
        group_size: G.

    Returns:
        ``reward``, ``reward_std`` (mean within-group std), ``frac_reward_zero_std``, ``completions/{mean,min,max,
        p10,p90}_length``, ``completions/clipped_ratio``, ``completions/count`` and ``rewards/<name>/mean``.
    """
    group_std = core.group_reward_std(rewards, group_size)  # (B,)
    m = {
        "reward": rewards.mean().item(),
        "reward_std": group_std.mean().item(),
        "frac_reward_zero_std": (group_std < 1e-8).float().mean().item(),
        "completions/mean_length": lengths.mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/p10_length": torch.quantile(lengths, 0.1).item(),
        "completions/p90_length": torch.quantile(lengths, 0.9).item(),
        "completions/clipped_ratio": truncated.mean().item(),
        "completions/count": lengths.numel(),  # over all ranks: shows every rank contributed
    }
    for name, values in per_reward.items():
        m[f"rewards/{name}/mean"] = nanmean(values)
    return m


def tool_metrics(rollout: RolloutBatch) -> dict[str, float]:
    """This rank's tool-turn metrics ({} when tools are off).

    Returns:
        ``tools/calls_per_completion`` (calls per row), ``tools/error_rate`` (share of calls that failed, timeouts
        included), ``tools/timeouts`` (calls stopped at their time limit, a count), ``tools/seconds`` (mean seconds
        per call) and ``tools/output_tokens`` (tool-output tokens per row, not in ``completions/*_length``).
    """
    if rollout.tool_calls is None:
        return {}
    n = max(len(rollout.tool_calls), 1)
    calls = [c for row in rollout.tool_calls for c in row]
    per_call = max(len(calls), 1)
    tool_tokens = rollout.tool_mask.sum().item() if rollout.tool_mask is not None else 0
    return {"tools/calls_per_completion": len(calls) / n,
            "tools/error_rate": sum(c.error is not None for c in calls) / per_call,
            "tools/timeouts": float(sum(bool(c.timed_out) for c in calls)),
            "tools/seconds": sum(c.seconds for c in calls) / per_call,
            "tools/output_tokens": tool_tokens / n}


def reasoning_values(completions: list[str], reflection_words: list[str],
                     count_tokens: Callable[[list[str]], list[int]] | None = None) -> dict[str, Tensor]:
    """Per-sample reasoning signals of this rank's completions (see :mod:`grpo.reasoning`).

    Returns:
        ``reasoning/reflection_ratio`` -> (n,) 0/1 flags (only when ``reflection_words``), and
        ``reasoning/think_length`` -> (n,) tokens in the think block (``reasoning/think_chars``, characters, when
        no ``count_tokens``), NaN where a completion has no think block.
    """
    out: dict[str, Tensor] = {}
    if reflection_words:
        out["reasoning/reflection_ratio"] = torch.tensor(reasoning.reflection_flags(completions, reflection_words),
                                                         dtype=torch.float)
    blocks = [reasoning.think_block(c) for c in completions]
    present = [b for b in blocks if b is not None]
    if count_tokens is not None:
        counts, key = iter(count_tokens(present) if present else []), "reasoning/think_length"
    else:
        counts, key = iter([len(b) for b in present]), "reasoning/think_chars"
    out[key] = torch.tensor([math.nan if b is None else float(next(counts)) for b in blocks], dtype=torch.float)
    return out


def nanmean(values: Tensor) -> float:
    """Mean of the non-NaN entries of ``values``; NaN when there are none."""
    valid = values[~torch.isnan(values)]
    return valid.mean().item() if valid.numel() else math.nan


def rollout_metrics_over_ranks(accelerator: Any, rewards: Tensor, lengths: Tensor, truncated: Tensor,
                               per_reward: dict[str, Tensor], completions: list[str], group_size: int,
                               reflection_words: list[str],
                               count_tokens: Callable[[list[str]], list[int]] | None = None) -> dict[str, float]:
    """:func:`rollout_metrics` and the reasoning signals over every rank's samples (all ranks call it).

    Args:
        rewards, lengths, truncated: this rank's (n,); per_reward: name -> (n,); completions: n texts.
    """
    def gather(t: Tensor) -> Tensor:
        return accelerator.gather(t.to(accelerator.device).float()).cpu()

    m = rollout_metrics(gather(rewards), gather(lengths), gather(truncated),
                        {name: gather(v) for name, v in per_reward.items()}, group_size)
    for key, values in reasoning_values(completions, reflection_words, count_tokens).items():
        m[key] = nanmean(gather(values))
    return m
