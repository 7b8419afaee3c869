"""The GRPO algorithm family as pure tensor math: advantages, policy losses, aggregation, KL, entropy.

Tensor in, tensor out: nothing here knows about models, tokenizers, accelerators or configs (the verl
``core_algos.py`` idea). Variation points are registered by name and an unknown name lists the known ones.

Notation: N = B x G sequences (B prompts, G generations each, a prompt's G completions contiguous),
T = completion tokens (padded), V = vocabulary. ``mask`` (N, T) is 1 on real completion tokens.

Formulas follow TRL 1.16's ``GRPOTrainer`` exactly (a test cross-checks them):

* advantages: ``(r - group_mean) / (std + 1e-4)``, std unbiased; ``scale="none"`` is Dr. GRPO.
* per-token loss: ``-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3_kl``.
* aggregation (``loss_type``): ``grpo`` per-sequence mean then mean; ``bnpo`` sum / local active tokens;
  ``dr_grpo`` sum / (N * max_completion_length); ``dapo`` sum / active tokens of the global batch.

With one update per batch (``num_iterations == 1``) ``ratio == 1`` and clipping never acts, so the loss
*value* is about 0 while its gradient is the plain policy gradient (TRL #2703): that is expected.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

STD_EPS = 1e-4  # TRL's constant: keeps a near-constant group from producing huge advantages


def _registry(kind: str) -> tuple[dict[str, Callable], Callable[[str], Callable], Callable[[str], Callable]]:
    table: dict[str, Callable] = {}

    def register(name: str) -> Callable:
        def wrap(fn: Callable) -> Callable:
            table[name] = fn
            return fn

        return wrap

    def get(name: str) -> Callable:
        if name not in table:
            raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
        return table[name]

    return table, register, get


ADVANTAGE_ESTIMATORS, register_advantage_estimator, get_advantage_estimator = _registry("advantage estimator")
LOSS_AGGREGATIONS, register_loss_aggregation, get_loss_aggregation = _registry("loss_type")


# --- advantages ----------------------------------------------------------------------------------------


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """Group-relative advantages. rewards (N,) -> (N,).

    ``scale``: ``group`` divides by each group's std, ``batch`` by the std of all N rewards, ``none`` does not
    divide (Dr. GRPO: std scaling up-weights near-constant groups, i.e. too easy or too hard prompts).
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (N,) with N divisible by group_size={group_size}, got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)  # (B, G)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)  # (N,)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1) if group_size > 1 else torch.zeros_like(rewards)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        raise ValueError(f"unknown scale_rewards {scale!r}; known: group, batch, none")
    return centred / (std + STD_EPS)


@register_advantage_estimator("rloo")
def rloo_advantages(rewards: Tensor, group_size: int, scale: str = "none") -> Tensor:
    """REINFORCE leave-one-out: ``r_i - mean_{j != i} r_j`` = ``G / (G - 1) * (r_i - group_mean)``. (N,) -> (N,).

    ``scale`` other than ``none`` divides by the group/batch std as in :func:`grpo_advantages`.
    """
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2 (a leave-one-out baseline needs another sample)")
    return grpo_advantages(rewards, group_size, scale) * (group_size / (group_size - 1))


def compute_advantages(rewards: Tensor, group_size: int, scale: str = "group", estimator: str = "grpo") -> Tensor:
    """Advantages for N = B x G rewards, a prompt's G samples contiguous. rewards (N,) -> (N,)."""
    return get_advantage_estimator(estimator)(rewards, group_size, scale)


def group_reward_std(rewards: Tensor, group_size: int) -> Tensor:
    """Each group's reward std (unbiased). rewards (N,) -> (B,); 0 where all G rewards agree."""
    return rewards.view(-1, group_size).std(dim=1) if group_size > 1 else torch.zeros(rewards.numel())


# --- loss aggregation ----------------------------------------------------------------------------------


@register_loss_aggregation("grpo")
def aggregate_grpo(per_token: Tensor, mask: Tensor, max_completion_length: int | None, normalizer: float | None) -> Tensor:
    """Mean over each sequence's tokens, then over sequences (per_token, mask: (N, T) -> scalar).

    Length-biased: a long wrong answer's tokens each get a smaller push (Dr. GRPO, section 3.1).
    """
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@register_loss_aggregation("bnpo")
def aggregate_bnpo(per_token: Tensor, mask: Tensor, max_completion_length: int | None, normalizer: float | None) -> Tensor:
    """Sum over active tokens of this (local) batch / their count. (N, T) -> scalar."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@register_loss_aggregation("dr_grpo")
def aggregate_dr_grpo(per_token: Tensor, mask: Tensor, max_completion_length: int | None, normalizer: float | None) -> Tensor:
    """Sum / (N * max_completion_length): a constant, so no length bias. (N, T) -> scalar."""
    if max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length")
    return (per_token * mask).sum() / (per_token.size(0) * max_completion_length)


@register_loss_aggregation("dapo")
def aggregate_dapo(per_token: Tensor, mask: Tensor, max_completion_length: int | None, normalizer: float | None) -> Tensor:
    """Sum / active tokens of the *global* batch (``normalizer``; defaults to this batch's count). (N, T) -> scalar.

    Under data parallelism pass ``normalizer = global_active_tokens / world_size``: DDP averages gradients
    over ranks, so the result is the sum over all ranks' tokens / all active tokens (DAPO's token-level loss).
    """
    denom = mask.sum().clamp(min=1.0) if normalizer is None else max(float(normalizer), 1e-8)
    return (per_token * mask).sum() / denom


# --- the policy loss -----------------------------------------------------------------------------------


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(policy || ref): ``exp(ref - logp) - (ref - logp) - 1`` >= 0. (N, T) -> (N, T)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1. x, mask broadcastable -> scalar."""
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: str = "dapo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    max_completion_length: int | None = None,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    importance_sampling_level: str = "token",
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate loss (PPO/GRPO), aggregated by ``loss_type``.

    Args:
        logprobs: (N, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: (N, T) the same under the policy that sampled them (no grad).
        advantages: (N,) one advantage per sequence.
        mask: (N, T) 1 on completion tokens that count.
        loss_type: aggregation: ``grpo``, ``bnpo``, ``dr_grpo`` or ``dapo`` (see module docstring).
        epsilon, epsilon_high: clip range ``[1 - epsilon, 1 + epsilon_high]``; ``epsilon_high`` defaults
            to ``epsilon`` (DAPO's clip-higher uses 0.2 / 0.28).
        max_completion_length: the normaliser of ``dr_grpo``.
        ref_logprobs: (N, T) reference-model log-probs, needed when ``beta > 0``.
        beta: weight of the k3 KL penalty.
        importance_sampling_level: ``token`` (GRPO) or ``sequence`` (GSPO: one ratio per sequence,
            ``exp(mean_t(logp - old_logp))``).
        normalizer: ``dapo`` only: active tokens of the global batch divided by the world size.

    Returns:
        ``(loss, metrics)``: scalar loss; detached floats ``clip_ratio`` (share of active tokens where
        clipping removed the gradient), ``clip_ratio/low``, ``clip_ratio/high`` and ``kl`` (mean k3).
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logprobs.dtype)
    adv = advantages.unsqueeze(1)  # (N, 1)
    log_ratio = logprobs - old_logprobs  # (N, T)
    if importance_sampling_level == "token":
        log_w = log_ratio
    elif importance_sampling_level == "sequence":
        log_w = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # (N, 1)
    else:
        raise ValueError(f"unknown importance_sampling_level {importance_sampling_level!r}; known: token, sequence")
    ratio = torch.exp(log_w)  # (N, T) or (N, 1)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)  # (N, T) or (N, 1)
    per_token = per_token.expand_as(mask)
    metrics: dict[str, float] = {}
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = k3_kl(logprobs, ref_logprobs)
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask).item()
    loss = get_loss_aggregation(loss_type)(per_token, mask, max_completion_length, normalizer)

    with torch.no_grad():
        low = ((ratio < 1 - epsilon) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        metrics["clip_ratio/low"] = masked_mean(low, mask).item()
        metrics["clip_ratio/high"] = masked_mean(high, mask).item()
        metrics["clip_ratio"] = masked_mean(low + high, mask).item()
    return loss, metrics


# --- log-probs and entropy without holding full-vocabulary copies ---------------------------------------


def selective_log_softmax(logits: Tensor, index: Tensor, chunk_size: int = 256) -> Tensor:
    """``log_softmax(logits).gather(index)`` in row chunks. logits (..., V), index (...) -> (...).

    Only ``chunk_size`` rows of float32 log-softmax exist at a time, instead of (N, T, V).
    """
    flat_logits = logits.reshape(-1, logits.size(-1))
    flat_index = index.reshape(-1)
    out = []
    for start in range(0, flat_logits.size(0), chunk_size):
        rows = flat_logits[start : start + chunk_size].float()
        picked = rows.gather(-1, flat_index[start : start + chunk_size, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(out).view(index.shape) if out else flat_logits.new_zeros(index.shape, dtype=torch.float32)


def entropy_from_logits(logits: Tensor, chunk_size: int = 256) -> Tensor:
    """Entropy (nats) of each row's softmax, in row chunks. logits (..., V) -> (...)."""
    flat = logits.reshape(-1, logits.size(-1))
    out = []
    for start in range(0, flat.size(0), chunk_size):
        logp = torch.log_softmax(flat[start : start + chunk_size].float(), dim=-1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out).view(logits.shape[:-1]) if out else flat.new_zeros(logits.shape[:-1], dtype=torch.float32)
