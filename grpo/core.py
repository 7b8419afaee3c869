"""The GRPO algorithm family as pure tensor math: advantages, policy losses, aggregation, KL. Tensor in, tensor
out: nothing here knows about models, tokenizers, accelerators or configs. Variation points are registered by
name (grpo/registry.py) and an unknown name lists the known ones. Log-probs and entropy: grpo/logprobs.py.

Notation: N = B x G sequences (B prompts, G generations each, a prompt's G completions contiguous),
T = completion tokens (padded), V = vocabulary. ``mask`` (N, T) is 1 on real completion tokens.

Formulas follow TRL 1.16's ``GRPOTrainer`` / ``RLOOTrainer`` exactly (``tests/test_core.py`` runs TRL's own
code on the same inputs and compares):

* advantages (``grpo``): ``(r - group_mean) / (std + 1e-4)``, std unbiased (Bessel), of the group
  (``scale="group"``), of the whole batch (``"batch"``), or no division (``"none"``: Dr. GRPO).
  ``rloo``: ``r_i - mean_{j != i} r_j``, optionally standardised over the group or batch.
* per-token loss: ``-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3_kl``, ratio per
  token (GRPO) or per sequence (GSPO).
* aggregation (``loss_type``): ``grpo`` per-sequence mean then mean; ``bnpo`` sum / local active tokens;
  ``dr_grpo`` sum / (N * max_completion_length); ``dapo`` sum / active tokens of the global batch.

With one update per batch (``num_iterations == 1``) ``ratio == 1`` and clipping never acts, so the loss
*value* is about 0 while its gradient is the plain policy gradient (TRL #2703): that is expected.

NaN rewards mean "no reward applies to this sample" (TRL's convention): they are left out of the group
statistics and get advantage 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from grpo.registry import make_registry

STD_EPS = 1e-4  # TRL's constant: keeps a near-constant group from producing huge advantages

ADVANTAGE_ESTIMATORS, register_advantage_estimator, get_advantage_estimator = make_registry("advantage_estimator")
REWARD_SCALES, register_reward_scale, get_reward_scale = make_registry("scale_rewards")
LOSS_AGGREGATIONS, _register_aggregation, get_loss_aggregation = make_registry("loss_type")
IMPORTANCE_LEVELS, register_importance_level, get_importance_level = make_registry("importance_sampling_level")


# --- statistics that ignore NaN (unscored samples) ------------------------------------------------------


def nanstd(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Unbiased (Bessel) std ignoring NaNs, as TRL's ``nanstd``; NaN where fewer than 2 values count.

    Args:
        x: any shape.
        dim: the dimension to reduce; ``None`` reduces all.
        keepdim: keep the reduced dimension (size 1).
    """
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * count / (count - 1)
    std = torch.where(count > 1, var, torch.full_like(var, float("nan"))).sqrt()
    if keepdim:
        return std
    return std.reshape(()) if dim is None else std.squeeze(dim)


# --- advantages ----------------------------------------------------------------------------------------


def _check_rewards(rewards: Tensor, group_size: int) -> None:
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int (num_generations), got {group_size!r}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be (N,) with N divisible by group_size={group_size}, got shape {tuple(rewards.shape)}; "
            "pass one reward per completion, a prompt's G completions contiguous"
        )


@register_reward_scale("group")
def _group_std(values: Tensor, group_size: int) -> Tensor:
    """Each sample's group std (unbiased, NaN-aware). (N,) -> (N,); 0 when G == 1 (TRL's eval-time case)."""
    if group_size == 1:
        return torch.zeros_like(values)
    return nanstd(values.view(-1, group_size), dim=1).repeat_interleave(group_size)


@register_reward_scale("batch")
def _batch_std(values: Tensor, group_size: int) -> Tensor:
    """The std of all N values (unbiased, NaN-aware), broadcast. (N,) -> (N,); 0 when N == 1."""
    return nanstd(values).expand_as(values) if values.numel() > 1 else torch.zeros_like(values)


@register_reward_scale("none")
def _no_scale(values: Tensor, group_size: int) -> Tensor:
    """No division (Dr. GRPO): returns zeros, so ``x / (0 + 1e-4)`` is never taken (see callers)."""
    return torch.zeros_like(values)


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """Group-relative advantages ``(r - group_mean) / (std + 1e-4)``. rewards (N,) -> (N,).

    Args:
        rewards: (N,) one scalar reward per completion; NaN = unscored (left out, advantage 0).
        group_size: G, completions per prompt.
        scale: ``group`` divides by each group's std (GRPO), ``batch`` by the std of all N rewards
            (more robust, Hu et al. REINFORCE++), ``none`` does not divide (Dr. GRPO: std scaling
            up-weights near-constant groups, i.e. too easy or too hard prompts).
    """
    _check_rewards(rewards, group_size)
    std_fn = get_reward_scale(scale)
    grouped = rewards.view(-1, group_size)  # (B, G)
    centred = (rewards - torch.nanmean(grouped, dim=1).repeat_interleave(group_size))  # (N,)
    adv = centred if scale == "none" else centred / (std_fn(rewards, group_size) + STD_EPS)
    return torch.nan_to_num(adv, nan=0.0)


@register_advantage_estimator("rloo")
def rloo_advantages(rewards: Tensor, group_size: int, scale: str = "none") -> Tensor:
    """REINFORCE leave-one-out: ``A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean)``. (N,) -> (N,).

    The baseline averages over the scored siblings only, as TRL's ``RLOOTrainer``. ``scale``: ``none`` keeps the
    raw leave-one-out advantages (Ahmadian et al. 2024; TRL's default), ``batch`` standardises them over the batch,
    ``(A - mean(A)) / (std(A) + 1e-4)`` (TRL's ``normalize_advantages=True``), ``group`` does the same within
    each group.

    Args:
        rewards: (N,) rewards, NaN = unscored.
        group_size: G >= 2 (a leave-one-out baseline needs a sibling).
        scale: ``none``, ``group`` or ``batch``.
    """
    _check_rewards(rewards, group_size)
    std_fn = get_reward_scale(scale)
    if group_size < 2:
        raise ValueError("advantage_estimator='rloo' needs num_generations >= 2 (the baseline is the other samples)")
    grouped = rewards.view(-1, group_size)  # (B, G)
    scored = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)  # (B, 1)
    baseline = (torch.nansum(grouped, dim=1, keepdim=True) - grouped) / (scored - 1)  # (B, G)
    adv = rewards - baseline.view(-1)  # (N,); NaN where unscored or the only scored sample
    if scale == "group":
        adv = adv - torch.nanmean(adv.view(-1, group_size), dim=1).repeat_interleave(group_size)
    elif scale == "batch":
        adv = adv - torch.nanmean(adv)
    if scale != "none":
        adv = adv / (std_fn(adv, group_size) + STD_EPS)
    return torch.nan_to_num(adv, nan=0.0)


def compute_advantages(rewards: Tensor, group_size: int, scale: str = "group", estimator: str = "grpo") -> Tensor:
    """Advantages for N = B x G rewards, a prompt's G samples contiguous. rewards (N,) -> (N,).

    Args:
        rewards: (N,) total reward per completion; NaN = unscored (advantage 0, left out of the statistics).
        group_size: G, completions per prompt.
        scale: ``scale_rewards``: ``group``, ``batch`` or ``none``.
        estimator: a registered estimator: ``grpo`` or ``rloo``.
    """
    return get_advantage_estimator(estimator)(rewards, group_size, scale)


def group_reward_std(rewards: Tensor, group_size: int) -> Tensor:
    """Each group's reward std (unbiased). rewards (N,) -> (B,); 0 where all G rewards agree or G == 1."""
    _check_rewards(rewards, group_size)
    if group_size == 1:
        return torch.zeros(rewards.numel(), dtype=rewards.dtype)
    return torch.nan_to_num(nanstd(rewards.view(-1, group_size), dim=1), nan=0.0)


# --- loss aggregation: each reduces per_token (N, T) to a scalar and declares what the update loop needs ---------


@dataclass(frozen=True)
class Aggregation:
    """A registered ``loss_type``: the reduction and the two facts the update loop needs about it.

    Attributes:
        fn: ``(per_token (N, T), mask (N, T), max_completion_length, normalizer) -> scalar``.
        global_tokens: the normaliser is the active tokens of the whole (all ranks, all micro-batches) batch
            divided by the world size; the loop computes it once per step and passes it as ``normalizer``.
    """

    fn: Callable[[Tensor, Tensor, int | None, float | None], Tensor]
    global_tokens: bool = False

    def __call__(self, per_token: Tensor, mask: Tensor, max_completion_length: int | None,
                 normalizer: float | None) -> Tensor:
        """The aggregated loss. per_token, mask (N, T) -> scalar."""
        return self.fn(per_token, mask, max_completion_length, normalizer)

    def micro_share(self, rows: int, total_rows: int) -> float:
        """The weight of a micro-batch of ``rows`` of ``total_rows`` in the step's loss: a mean over the
        micro-batch's own rows or tokens stands for ``rows / total_rows`` of the batch mean; a sum over a global
        normaliser is already its exact share."""
        return 1.0 if self.global_tokens else rows / total_rows


def register_loss_aggregation(name: str, global_tokens: bool = False) -> Callable:
    """Register an aggregation function as ``loss_type`` ``name`` (see :class:`Aggregation`)."""

    def wrap(fn: Callable) -> Callable:
        _register_aggregation(name)(Aggregation(fn, global_tokens))
        return fn

    return wrap


@register_loss_aggregation("grpo")
def aggregate_grpo(
    per_token: Tensor, mask: Tensor, max_completion_length: int | None, normalizer: float | None
) -> Tensor:
    """Mean over each sequence's tokens, then over sequences: ``mean_i (sum_t l_it m_it / |o_i|)``. -> scalar.

    Length-biased: a long wrong answer's tokens each get a smaller push (Dr. GRPO, section 3.1).
    """
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@register_loss_aggregation("bnpo")
def aggregate_bnpo(
    per_token: Tensor, mask: Tensor, max_completion_length: int | None, normalizer: float | None
) -> Tensor:
    """Sum over active tokens of this (local) batch / their count: ``sum l m / sum m``. -> scalar."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@register_loss_aggregation("dr_grpo")
def aggregate_dr_grpo(
    per_token: Tensor, mask: Tensor, max_completion_length: int | None, normalizer: float | None
) -> Tensor:
    """Sum / (N * max_completion_length): a constant, so no length bias (Dr. GRPO). -> scalar."""
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length (a positive int): it is the normaliser")
    return (per_token * mask).sum() / (per_token.size(0) * max_completion_length)


@register_loss_aggregation("dapo", global_tokens=True)
def aggregate_dapo(
    per_token: Tensor, mask: Tensor, max_completion_length: int | None, normalizer: float | None
) -> Tensor:
    """Sum / active tokens of the *global* batch (``normalizer``; defaults to this batch's count). -> scalar.

    Under data parallelism or micro-batching pass ``normalizer = global_active_tokens / world_size`` (TRL's
    ``num_items_in_batch / num_processes``): DDP averages gradients over ranks, so the summed micro-batch
    losses are the sum over all tokens / all active tokens (DAPO's token-level loss).
    """
    if normalizer is None:
        denom = mask.sum().clamp(min=1.0)
    else:  # may be < 1 (one token over two ranks); only a batch with no tokens at all gives 0 (then the sum is 0)
        denom = float(normalizer) if normalizer > 0 else 1.0
    return (per_token * mask).sum() / denom


# --- importance weights ------------------------------------------------------------------------------------


@register_importance_level("token")
def token_log_weights(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """Per-token log-ratio ``logp - old_logp`` (GRPO/PPO). (N, T) -> (N, T)."""
    return log_ratio


@register_importance_level("sequence")
def sequence_log_weights(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """GSPO's length-normalised sequence log-ratio ``mean_t (logp - old_logp)``. (N, T) -> (N, 1)."""
    return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)


# --- the policy loss -----------------------------------------------------------------------------------


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(policy || ref): ``exp(ref - logp) - (ref - logp) - 1`` >= 0. (N, T) -> (N, T)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1. x, mask broadcastable -> scalar."""
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass(frozen=True)
class LossOptions:
    """How the policy loss is computed: the run's algorithm choices, checked once when built.

    Attributes:
        loss_type: aggregation: ``grpo``, ``bnpo``, ``dr_grpo`` or ``dapo`` (see the module docstring).
        epsilon: lower clip range, ratio >= ``1 - epsilon``.
        epsilon_high: upper clip range, ratio <= ``1 + epsilon_high``; ``None`` = ``epsilon`` (DAPO's
            clip-higher: 0.2 / 0.28).
        max_completion_length: the normaliser of ``dr_grpo``.
        beta: weight of the k3 KL penalty, added per token before aggregation.
        importance_sampling_level: ``token`` (GRPO) or ``sequence`` (GSPO: one ratio per sequence,
            ``exp(mean_t(logp - old_logp))``).
        use_bias_correction_kl: multiply the k3 term by the (differentiable) importance ratio, as TRL 1.16 does
            by default (DeepSeek-V3.2): the samples come from the old policy, and weighting by ``ratio`` makes
            the KL gradient the unbiased reverse-KL gradient, even on-policy where its value is 1.

    Raises:
        ValueError: an unknown ``loss_type`` or level, or a negative clip range (one line; the config turns it
            into a ConfigError).
    """

    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    max_completion_length: int | None = None
    beta: float = 0.0
    importance_sampling_level: str = "token"
    use_bias_correction_kl: bool = True

    def __post_init__(self) -> None:
        get_loss_aggregation(self.loss_type)
        get_importance_level(self.importance_sampling_level)
        if self.epsilon < 0 or self.upper_clip < 0:
            raise ValueError(f"clip ranges must be >= 0, got epsilon={self.epsilon}, epsilon_high={self.epsilon_high}")

    @property
    def upper_clip(self) -> float:
        """The upper clip range: ``epsilon_high``, or ``epsilon`` when unset."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def aggregation(self) -> Aggregation:
        """The registered aggregation of ``loss_type``."""
        return get_loss_aggregation(self.loss_type)


def _check_loss_inputs(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                       ref_logprobs: Tensor | None, beta: float) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (N, T), got shape {tuple(logprobs.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("mask", mask), ("ref_logprobs", ref_logprobs)):
        if t is not None and t.shape != logprobs.shape:
            raise ValueError(f"{name} must have the shape of logprobs {tuple(logprobs.shape)}, got {tuple(t.shape)}")
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(f"advantages must be (N,) = {tuple(logprobs.shape[:1])}, got {tuple(advantages.shape)}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("beta != 0 needs ref_logprobs (reference-model log-probs); pass them or set beta=0")


def policy_loss(logprobs: Tensor, old_logprobs: Tensor | None, advantages: Tensor, mask: Tensor,
                options: LossOptions | None = None, *, ref_logprobs: Tensor | None = None,
                normalizer: float | None = None, sampling_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate loss (PPO/GRPO) plus the k3 KL penalty, aggregated by ``options.loss_type``.

    Args:
        logprobs: (N, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: (N, T) the same under the policy that sampled them (no grad); ``None`` means on-policy
            (``logprobs.detach()``, TRL's shortcut when ``num_iterations == 1``).
        advantages: (N,) one advantage per sequence ((N, T) per-token advantages are accepted too).
        mask: (N, T) 1 on completion tokens that count.
        options: the algorithm's choices (:class:`LossOptions`; default: DAPO's token-level loss, no KL).
        ref_logprobs: (N, T) reference-model log-probs; needed when ``options.beta != 0``.
        normalizer: for an aggregation with ``global_tokens`` (``dapo``): active tokens of the global batch
            divided by the world size; ``None`` = this batch's own count.
        sampling_weights: (N, T) or (N, 1) sampler/trainer importance weights
            (``grpo.correction.sampling_correction_weights``); they multiply the clipped surrogate per token, not
            the KL term (TRL's order). ``None`` = no correction.

    Returns:
        ``(loss, metrics)``: scalar loss; detached floats ``clip_ratio`` (share of active tokens, or of
        sequences at ``sequence`` level, where clipping removed the gradient), ``clip_ratio/low``,
        ``clip_ratio/high`` and, when ``ref_logprobs`` is given, ``kl`` (masked mean of the KL term, ratio-weighted
        when ``use_bias_correction_kl``, as TRL logs it).
    """
    opts = LossOptions() if options is None else options
    epsilon, epsilon_high, beta = opts.epsilon, opts.upper_clip, opts.beta
    old_logprobs = logprobs.detach() if old_logprobs is None else old_logprobs
    _check_loss_inputs(logprobs, old_logprobs, advantages, mask, ref_logprobs, beta)
    mask = mask.to(logprobs.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (N, 1) or (N, T)

    log_w = get_importance_level(opts.importance_sampling_level)(logprobs - old_logprobs, mask)  # (N, T) or (N, 1)
    ratio = torch.exp(log_w)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv).expand_as(mask)  # (N, T)
    if sampling_weights is not None:
        per_token = per_token * sampling_weights.to(per_token.dtype)  # (N, T) or (N, 1): broadcasts
    metrics: dict[str, float] = {}
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)  # (N, T)
        if opts.use_bias_correction_kl:
            kl = kl * ratio  # ratio (N, T) or (N, 1): E_old[ratio * k3] = E_current[k3]
        if beta != 0.0:
            per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask).item()
    loss = opts.aggregation(per_token, mask, opts.max_completion_length, normalizer)
    return loss, {**metrics, **_clip_metrics(ratio.detach(), adv, mask, epsilon, epsilon_high)}


def _clip_metrics(ratio: Tensor, adv: Tensor, mask: Tensor, epsilon: float, epsilon_high: float) -> dict[str, float]:
    """Shares where clipping removed the gradient: ``clip_ratio/low``, ``clip_ratio/high``, ``clip_ratio``. TRL
    averages over active tokens, or over sequences when there is one ratio per sequence. ratio (N, T) or (N, 1)."""
    low = (ratio < 1 - epsilon) & (adv < 0)  # the min picked the clipped term: no gradient
    high = (ratio > 1 + epsilon_high) & (adv > 0)
    weight = mask if low.size(-1) == mask.size(-1) else torch.ones_like(low, dtype=mask.dtype)
    return {"clip_ratio/low": masked_mean(low.to(mask.dtype), weight).item(),
            "clip_ratio/high": masked_mean(high.to(mask.dtype), weight).item(),
            "clip_ratio": masked_mean((low | high).to(mask.dtype), weight).item()}

