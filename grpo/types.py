"""Typed data that crosses module boundaries during a step: the scored rollout batch and the update's stats.

Notation: B prompts, G = num_generations, N = B x G rows (a prompt's G rows contiguous), T completion tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from grpo.rollout import RolloutBatch, concat, select


@dataclass
class StepBatch:
    """One step's rollout with everything computed on it, row-aligned.

    Attributes:
        rollout: the N sampled completions (ids, masks, text).
        rows: N dataset rows (a prompt's row repeated G times): gold answers and task columns.
        rewards: (N,) weighted reward sums.
        per_reward: reward name -> (N,) values, NaN where the reward returned None.
        advantages: (N,) once computed (``None`` before).
    """

    rollout: RolloutBatch
    rows: list[dict]
    rewards: Tensor
    per_reward: dict[str, Tensor] = field(default_factory=dict)
    advantages: Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, idx: list[int]) -> StepBatch:
        """The rows ``idx`` (same padding widths). -> StepBatch of len(idx)."""
        t = torch.tensor(idx, dtype=torch.long)
        return StepBatch(select(self.rollout, idx), [self.rows[i] for i in idx], self.rewards[t],
                         {k: v[t] for k, v in self.per_reward.items()},
                         None if self.advantages is None else self.advantages[t])

    def group(self, g: int, G: int) -> StepBatch:
        """Group ``g``: rows g*G .. g*G+G-1. -> StepBatch of G."""
        return self.select(list(range(g * G, (g + 1) * G)))

    @staticmethod
    def concat(parts: list[StepBatch], pad_token_id: int) -> StepBatch:
        """Stack batches: prompts re-padded on the left, completions on the right. -> StepBatch."""
        if len(parts) == 1:
            return parts[0]
        names = list(parts[0].per_reward)
        advantages = None if any(p.advantages is None for p in parts) else torch.cat([p.advantages for p in parts])
        return StepBatch(concat([p.rollout for p in parts], pad_token_id), [r for p in parts for r in p.rows],
                         torch.cat([p.rewards for p in parts]),
                         {k: torch.cat([p.per_reward[k] for p in parts]) for k in names}, advantages)


_METRIC_NAMES = {"clip_ratio_low": "clip_ratio/low", "clip_ratio_high": "clip_ratio/high"}  # field -> TRL's name


def _stat(reduce: str, help: str) -> object:
    """A stats field: ``reduce`` says how ranks combine it (``mean``, ``max``, ``sum``)."""
    return field(default=0.0, metadata={"reduce": reduce, "help": help})


@dataclass
class UpdateStats:
    """What one step's update measured. Each field says how it was averaged within the step (``help``) and how
    ranks combine it (``reduce``); every rank already holds the same value for ``grad_norm`` (after DDP's
    all-reduce) and for ``loss`` under data-parallel averaging."""

    loss: float = _stat("mean", "share-weighted sum over micro-batches, mean over num_iterations")
    grad_norm: float = _stat("mean", "mean over the num_iterations optimizer steps (before clipping)")
    entropy: float = _stat("mean", "token-weighted mean over the first pass; NaN when no update ran")
    clip_ratio: float = _stat("mean", "mean over micro-batches and iterations")
    clip_ratio_low: float = _stat("mean", "as clip_ratio, the lower bound only")
    clip_ratio_high: float = _stat("mean", "as clip_ratio, the upper bound only")
    kl: float | None = field(default=None, metadata={"reduce": "mean", "help": "mean k3 KL (beta > 0 or a reference)"})
    skipped_update: float = _stat("max", "1 when every advantage was zero (and beta == 0): no optimizer step")
    skipped_nonfinite: float = _stat("max", "optimizer steps dropped because the gradient was not finite (every rank "
                                     "takes the same branch: the norm is computed after the all-reduce)")
    sampling: dict = field(default_factory=dict, metadata={
        "reduce": "per key, grpo.metrics.REDUCTIONS", "help": "sampler/trainer mismatch (sampling/*), first pass; "
        "only with vllm_importance_sampling_correction"})

    @classmethod
    def reductions(cls) -> dict[str, str]:
        """Logged metric name -> how ranks combine it, from each field's ``reduce`` (``sampling/*``: its own keys)."""
        return {_METRIC_NAMES.get(f.name, f.name): f.metadata["reduce"] for f in fields(cls) if f.name != "sampling"}

    def add_loss_metrics(self, loss_metrics: dict[str, float]) -> None:
        """Take ``clip_ratio``, ``clip_ratio/low``, ``clip_ratio/high`` and ``kl`` from averaged loss metrics."""
        self.clip_ratio = loss_metrics.get("clip_ratio", 0.0)
        self.clip_ratio_low = loss_metrics.get("clip_ratio/low", 0.0)
        self.clip_ratio_high = loss_metrics.get("clip_ratio/high", 0.0)
        self.kl = loss_metrics.get("kl")

    @staticmethod
    def skipped() -> UpdateStats:
        """The stats of a step whose update was skipped (no signal)."""
        return UpdateStats(skipped_update=1.0, entropy=math.nan)

    def as_metrics(self) -> dict[str, float]:
        """Metric names as logged (TRL's: ``clip_ratio/low``, ...); ``kl`` only when measured."""
        if self.skipped_update:  # no update ran: no loss terms, clipping or entropy to report
            return {"loss": 0.0, "grad_norm": 0.0, "skipped_update": 1.0, "skipped_nonfinite": 0.0}
        out = {_METRIC_NAMES.get(f.name, f.name): getattr(self, f.name) for f in fields(self) if f.name != "sampling"}
        out.update(self.sampling)
        if self.kl is None:
            out.pop("kl")
        return out
