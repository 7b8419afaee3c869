"""Sampler/trainer mismatch correction (TRL's ``vllm_importance_sampling_*``) as pure tensor math.

The sampler (vLLM, or a bf16 decode copy) and the trainer compute slightly different log-probs for the same
tokens, so the samples come from a policy a little off the one the loss differentiates. TRL 1.16 reweights the
per-token loss by the truncated or masked importance ratio pi_trainer / pi_sampler (Yao et al., "Your efficient
RL framework secretly brings you off-policy RL training", 2025). Each mode takes the log-ratio
``(old_logprobs - sampler_logprobs) * mask`` (N, T) (NaN -> 0: a token the sampler could not score gets ratio 1)
and returns the weights, (N, T) per token or (N, 1) per sequence. Like ``grpo/core.py``: tensors in, tensors out;
``tests/test_core.py`` runs TRL's own code on the same inputs.

Notation: N sequences, T completion tokens; ``mask`` (N, T) is 1 on tokens that count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from grpo.registry import make_registry

SAMPLING_CORRECTIONS, register_sampling_correction, get_sampling_correction = make_registry(
    "vllm_importance_sampling_mode")


def _clip_bounds(clip_min: float | None, clip_max: float | None) -> tuple[float, float]:
    return (-math.inf if clip_min is None else clip_min), (math.inf if clip_max is None else clip_max)


@register_sampling_correction("token_truncate")
def _token_truncate(log_ratio: Tensor, clip_min: float | None, clip_max: float | None) -> Tensor:
    """Per-token ratio clipped to [clip_min, clip_max] (truncated IS). (N, T) -> (N, T)."""
    return torch.clamp(torch.exp(log_ratio), min=clip_min, max=clip_max)


@register_sampling_correction("token_mask")
def _token_mask(log_ratio: Tensor, clip_min: float | None, clip_max: float | None) -> Tensor:
    """Per-token ratio, 0 where it leaves [clip_min, clip_max] (masked IS). (N, T) -> (N, T)."""
    ratio = torch.exp(log_ratio)
    lo, hi = _clip_bounds(clip_min, clip_max)
    return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)


@register_sampling_correction("sequence_truncate")
def _sequence_truncate(log_ratio: Tensor, clip_min: float | None, clip_max: float | None) -> Tensor:
    """One ratio per sequence, ``exp(sum_t log_ratio)``, clipped. (N, T) -> (N, 1)."""
    return _token_truncate(log_ratio.sum(dim=-1, keepdim=True), clip_min, clip_max)


@register_sampling_correction("sequence_mask")
def _sequence_mask(log_ratio: Tensor, clip_min: float | None, clip_max: float | None) -> Tensor:
    """One ratio per sequence; a sequence whose ratio leaves [clip_min, clip_max] gets weight 0. (N, T) -> (N, 1)."""
    return _token_mask(log_ratio.sum(dim=-1, keepdim=True), clip_min, clip_max)


def sampling_correction_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor,
                                options: CorrectionOptions | None = None) -> Tensor:
    """Importance weights ``pi_trainer / pi_sampler`` that correct the loss for the sampler/trainer mismatch.

    The same math as TRL 1.16's ``vllm_importance_sampling_correction`` (``tests/test_core.py`` runs TRL's code
    on the same inputs). Multiply the per-token policy loss by the result (:func:`policy_loss`'s
    ``sampling_weights``); the KL term is not reweighted, as in TRL.

    Args:
        old_logprobs: (N, T) the trainer's log-probs of the sampled tokens under the sampling-time policy (no grad).
        sampler_logprobs: (N, T) the sampler's own log-probs of the same tokens (``RolloutBatch.sampler_logprobs``);
            NaN where the sampler gave none (weight 1 there).
        mask: (N, T) 1 on completion tokens that count; other positions do not enter a sequence's ratio.
        options: the mode (``token_truncate``, ``token_mask``, ``sequence_truncate`` or ``sequence_mask``, TRL's
            default), the upper bound C_max (TRL's default 3.0) and the lower bound C_min (``None`` = none);
            default :class:`CorrectionOptions`.

    Returns:
        (N, T) weights for ``token_*`` modes, (N, 1) for ``sequence_*`` modes; detached.
    """
    if old_logprobs.shape != sampler_logprobs.shape or old_logprobs.shape != mask.shape:
        raise ValueError(f"old_logprobs {tuple(old_logprobs.shape)}, sampler_logprobs {tuple(sampler_logprobs.shape)} "
                         f"and mask {tuple(mask.shape)} must have one shape (N, T)")
    opts = CorrectionOptions() if options is None else options
    log_ratio = torch.nan_to_num((old_logprobs.detach() - sampler_logprobs) * mask, nan=0.0)
    return get_sampling_correction(opts.mode)(log_ratio, opts.clip_min, opts.clip_max).detach()


def sampling_correction_metrics(old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor,
                                weights: Tensor) -> dict[str, float]:
    """TRL's mismatch metrics for one batch: ``sampling/sampling_logp_difference/{mean,max}`` (|old - sampler| over
    active tokens, NaN left out) and ``sampling/importance_sampling_ratio/{min,mean,max}`` (over active tokens, or
    over sequences for (N, 1) weights). Shapes as :func:`sampling_correction_weights`."""
    active = mask.bool()
    delta = (old_logprobs.detach() - sampler_logprobs).abs()[active & ~torch.isnan(sampler_logprobs)]
    flat = weights.flatten() if weights.size(-1) == 1 else weights[active]
    zero = torch.tensor(0.0)
    return {
        "sampling/sampling_logp_difference/mean": (delta.mean() if delta.numel() else zero).item(),
        "sampling/sampling_logp_difference/max": (delta.max() if delta.numel() else zero).item(),
        "sampling/importance_sampling_ratio/min": (flat.min() if flat.numel() else zero).item(),
        "sampling/importance_sampling_ratio/mean": (flat.mean() if flat.numel() else zero).item(),
        "sampling/importance_sampling_ratio/max": (flat.max() if flat.numel() else zero).item(),
    }


@dataclass(frozen=True)
class CorrectionOptions:
    """The run's correction choices (TRL's ``vllm_importance_sampling_mode`` / ``_clip_max`` / ``_clip_min``),
    checked once when built: the one place these bounds are validated.

    Raises:
        ValueError: an unknown mode, ``clip_min >= clip_max``, or a ``*_truncate`` mode with no bound.
    """

    mode: str = "sequence_mask"
    clip_max: float | None = 3.0
    clip_min: float | None = None

    def __post_init__(self) -> None:
        get_sampling_correction(self.mode)
        if self.clip_min is not None and self.clip_max is not None and self.clip_min >= self.clip_max:
            raise ValueError(f"vllm_importance_sampling_clip_min ({self.clip_min}) must be below "
                             f"vllm_importance_sampling_clip_max ({self.clip_max})")
        if self.mode.endswith("_truncate") and self.clip_min is None and self.clip_max is None:
            raise ValueError(f"vllm_importance_sampling_mode {self.mode!r} needs vllm_importance_sampling_clip_max "
                             "or vllm_importance_sampling_clip_min")


def correction_enabled(setting: bool | None, rollout_backend: str, decode_copy: bool = False,
                       async_rollouts: bool = False) -> bool:
    """Whether the loss is reweighted by the sampler/trainer ratio. ``setting`` is
    ``vllm_importance_sampling_correction``: ``None`` (auto) means on for the vllm backend (as TRL), when decoding
    from a bf16 copy of float32 weights (``decode_copy``, grpo/precision.py) and with async rollouts (the sampler's
    weights are ``max_staleness`` steps old), off for compact / hf decoding with the very weights the trainer scores
    (their mismatch is float rounding; set it true to measure it)."""
    return (rollout_backend == "vllm" or decode_copy or async_rollouts) if setting is None else bool(setting)


def correct(sampler_logprobs: Tensor, old_logprobs: Tensor, mask: Tensor,
            options: CorrectionOptions) -> tuple[Tensor, dict[str, float]]:
    """Importance weights and TRL's ``sampling/*`` metrics for one micro-batch.

    Args:
        sampler_logprobs: (n, T) the sampler's log-probs of these rows (``RolloutBatch.sampler_logprobs``), at
            least as wide as ``old_logprobs``; trimmed here.
        old_logprobs, mask: (n, T') the trainer's sampling-time log-probs and the loss mask.
        options: the mode and bounds.

    Returns:
        weights (n, T') or (n, 1), detached, and the metrics of :func:`sampling_correction_metrics`.
    """
    sampler = sampler_logprobs[:, : old_logprobs.size(1)].to(old_logprobs.device)
    weights = sampling_correction_weights(old_logprobs, sampler, mask, options)
    return weights, sampling_correction_metrics(old_logprobs, sampler, mask, weights)
