"""Typed data that crosses module boundaries during a step: the rollout batch a backend returns, the scored
step batch the update consumes, and the update's stats. Tensors and text only: no model, config or accelerator.

Notation: B prompts, G = group size (the config's ``num_generations``), N = B x G rows (a prompt's G rows
contiguous), P prompt tokens (left-padded), T completion tokens (right-padded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor


def pad_to(x: Tensor, width: int, value: int | float, left: bool) -> Tensor:
    """Pad (n, w) to (n, width) with ``value`` on the left or right; wider inputs are returned as they are."""
    extra = width - x.size(1)
    if extra <= 0:
        return x
    pad = x.new_full((x.size(0), extra), value)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


@dataclass
class RolloutBatch:
    """Sampled completions for N = B x G sequences.

    Attributes:
        prompt_ids: (N, P) left-padded prompt token ids.
        prompt_mask: (N, P) 1 on real prompt tokens.
        completion_ids: (N, T) sampled tokens, right-padded after EOS.
        completion_mask: (N, T) 1 on completion tokens up to and including the first EOS.
        truncated: (N,) True where no EOS came within ``max_completion_length`` tokens.
        prompts: N prompt strings (each repeated G times).
        completions: N decoded completions (special tokens removed, up to EOS).
        sampler_logprobs: (N, T) float32 log-probs of the sampled tokens under the distribution the sampler
            actually drew them from (temperature applied; with top-k / top-p the truncated, renormalised
            distribution); 0 on padding and for greedy decoding (a point mass). ``None`` when a backend cannot
            report them. The importance-sampling correction compares them with the trainer's own log-probs.
            0 on tool-output tokens (not sampled).
        tool_mask: (N, T) long, 1 on tool-output tokens appended after a tool call (inside ``completion_mask``);
            ``None`` when tools are off. The loss, KL, entropy and model-length metrics use ``model_mask``.
        tool_calls: per row the calls it made (``grpo.tools.ToolCall``, in order); ``None`` when tools are off.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    truncated: Tensor
    prompts: list[str]
    completions: list[str]
    sampler_logprobs: Tensor | None = None
    tool_mask: Tensor | None = None
    tool_calls: list[list] | None = None

    @property
    def lengths(self) -> Tensor:
        """(N,) completion lengths in tokens (EOS included; tool-output tokens included: all count toward
        ``max_completion_length``)."""
        return self.completion_mask.sum(-1)

    @property
    def model_mask(self) -> Tensor:
        """(N, T) 1 on the tokens the model sampled: ``completion_mask * (1 - tool_mask)``."""
        if self.tool_mask is None:
            return self.completion_mask
        return self.completion_mask * (1 - self.tool_mask.to(self.completion_mask.device))

    @property
    def model_lengths(self) -> Tensor:
        """(N,) tokens the model wrote (EOS included, tool outputs not): what ``completions/*_length`` report."""
        return self.model_mask.sum(-1)

    def tool_records(self) -> list[list[dict]] | None:
        """Per row, its calls as JSON-ready dicts (``ToolCall.as_record()``: name, arguments, output, error,
        seconds, ...): the rewards' ``tool_calls`` column and completions.jsonl. ``None`` when tools are off."""
        if self.tool_calls is None:
            return None
        return [[call.as_record() for call in calls] for calls in self.tool_calls]

    def select(self, idx: list[int] | Tensor) -> RolloutBatch:
        """The rows ``idx`` (same padding widths). -> RolloutBatch of len(idx)."""
        t = torch.as_tensor(idx, dtype=torch.long, device=self.prompt_ids.device)
        rows = t.tolist()
        logp, tools = self.sampler_logprobs, self.tool_mask
        return RolloutBatch(self.prompt_ids[t], self.prompt_mask[t], self.completion_ids[t], self.completion_mask[t],
                            self.truncated[t.to(self.truncated.device)], [self.prompts[i] for i in rows],
                            [self.completions[i] for i in rows], None if logp is None else logp[t.to(logp.device)],
                            None if tools is None else tools[t.to(tools.device)],
                            None if self.tool_calls is None else [self.tool_calls[i] for i in rows])

    @staticmethod
    def concat(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
        """Stack rollout batches: prompts re-padded on the left, completions on the right. -> RolloutBatch."""
        if len(batches) == 1:
            return batches[0]
        P = max(b.prompt_ids.size(1) for b in batches)
        T = max(b.completion_ids.size(1) for b in batches)
        with_logp = all(b.sampler_logprobs is not None for b in batches)
        with_tools = any(b.tool_mask is not None for b in batches)  # a batch without tools: no tool tokens, no calls
        return RolloutBatch(
            torch.cat([pad_to(b.prompt_ids, P, pad_token_id, left=True) for b in batches]),
            torch.cat([pad_to(b.prompt_mask, P, 0, left=True) for b in batches]),
            torch.cat([pad_to(b.completion_ids, T, pad_token_id, left=False) for b in batches]),
            torch.cat([pad_to(b.completion_mask, T, 0, left=False) for b in batches]),
            torch.cat([b.truncated for b in batches]),
            [p for b in batches for p in b.prompts],
            [c for b in batches for c in b.completions],
            torch.cat([pad_to(b.sampler_logprobs, T, 0, left=False) for b in batches]) if with_logp else None,
            torch.cat([pad_to(b.tool_mask if b.tool_mask is not None else torch.zeros_like(b.completion_mask), T, 0,
                              left=False) for b in batches]) if with_tools else None,
            [calls for b in batches for calls in (b.tool_calls or [[] for _ in b.prompts])] if with_tools else None,
        )


@dataclass
class StepBatch:
    """One step's rollout with everything computed on it, row-aligned.

    Attributes:
        rollout: the N sampled completions (ids, masks, text).
        rows: N dataset rows (a prompt's row repeated G times): gold answers and task columns.
        group_size: G, the rows of one prompt's group (consecutive).
        rewards: (N,) weighted reward sums.
        per_reward: reward name -> (N,) values, NaN where the reward returned None.
        advantages: (N,) once computed (``None`` before).
    """

    rollout: RolloutBatch
    rows: list[dict]
    group_size: int
    rewards: Tensor
    per_reward: dict[str, Tensor] = field(default_factory=dict)
    advantages: Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, idx: list[int]) -> StepBatch:
        """The rows ``idx`` (same padding widths). -> StepBatch of len(idx)."""
        t = torch.tensor(idx, dtype=torch.long)
        return StepBatch(self.rollout.select(idx), [self.rows[i] for i in idx], self.group_size, self.rewards[t],
                         {k: v[t] for k, v in self.per_reward.items()},
                         None if self.advantages is None else self.advantages[t])

    @property
    def num_groups(self) -> int:
        """B, the prompts (groups of G rows) in the batch."""
        return len(self.rows) // self.group_size

    def group(self, g: int) -> StepBatch:
        """Group ``g``: rows g*G .. g*G+G-1. -> StepBatch of G."""
        G = self.group_size
        return self.select(list(range(g * G, (g + 1) * G)))

    @staticmethod
    def concat(parts: list[StepBatch], pad_token_id: int) -> StepBatch:
        """Stack batches: prompts re-padded on the left, completions on the right. -> StepBatch."""
        if len(parts) == 1:
            return parts[0]
        names = list(parts[0].per_reward)
        advantages = None if any(p.advantages is None for p in parts) else torch.cat([p.advantages for p in parts])
        return StepBatch(RolloutBatch.concat([p.rollout for p in parts], pad_token_id),
                         [r for p in parts for r in p.rows], parts[0].group_size, torch.cat([p.rewards for p in parts]),
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
