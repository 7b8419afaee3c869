"""How the loss scores what the sampler drew: truncated sampling and the sampler/trainer mismatch correction.

Every backend samples the first completion token from ``softmax(logits / temperature)``, truncated to the top
``top_k`` tokens and the ``top_p`` nucleus when those are set (:func:`warp_logits` below, one function for
compact and hf; vLLM applies the same definitions). The loss scores the same distribution:

* **top-k / top-p.** The trainer's log-probs use the truncated, renormalised distribution: at each completion
  position the logits outside the top k / the nucleus (computed from the trainer's own logits, without
  gradient) are set to -inf before the log-softmax, so ``log pi(token)`` is the log-prob the sampler used and
  the gradient flows through the kept tokens only. The sampled token itself is always kept: the trainer's
  logits differ from the sampler's by rounding, which could move a token on the boundary out of the set and
  make its log-prob -inf. Entropy is still reported for the untruncated policy. Without top-k / top-p (the
  default) nothing changes.
* **Numerical mismatch.** A different engine (vLLM) or precision (a bf16 decode copy) gives slightly different
  probabilities for the same weights. ``vllm_importance_sampling_correction`` reweights the loss by
  ``pi_trainer / pi_sampler`` (TRL's modes and names, ``grpo.correction.sampling_correction_weights``), using the
  backend's ``RolloutBatch.sampler_logprobs``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from grpo import correction


def warp_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """The logits of the distribution a sampler draws from: float32, divided by the temperature, with the tokens
    outside the top k / the top-p nucleus set to -inf. (n, V) -> (n, V) float32.

    ``log_softmax`` of the result is the truncated, renormalised distribution (what ``sampler_logprobs`` holds).
    """
    logits = logits.float() / temperature  # fp32: in bf16 the race below would break ties toward low ids
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) > top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def token_logprobs(warped: Tensor, token: Tensor) -> Tensor:
    """``log_softmax(warped)[token]`` per row without a full-vocabulary log-softmax copy. (n, V), (n,) -> (n,)."""
    return warped.gather(-1, token[:, None]).squeeze(-1) - torch.logsumexp(warped, dim=-1)


def truncate_like_sampler(logits: Tensor, completion_ids: Tensor, top_k: int, top_p: float) -> Tensor:
    """Logits (already divided by the temperature) with the tokens a top-k / top-p sampler could not draw set to
    -inf; the sampled token is always kept. logits (n, T, V), completion_ids (n, T) -> (n, T, V), same dtype."""
    V = logits.size(-1)
    flat = logits.reshape(-1, V)
    with torch.no_grad():  # which tokens are kept is not differentiated, only their renormalised log-probs
        keep = torch.isfinite(warp_logits(flat.detach(), 1.0, top_k, top_p))
        keep.scatter_(-1, completion_ids.reshape(-1, 1), True)
    return flat.masked_fill(~keep, float("-inf")).view_as(logits)


def sampling_correction_enabled(cfg: Any, decode_copy: bool = False) -> bool:
    """Whether the loss is reweighted by the sampler/trainer ratio: ``vllm_importance_sampling_correction``, where
    ``None`` (auto) means on for the vllm backend (as TRL) and when decoding from a bf16 copy of float32 weights
    (``decode_copy``, grpo/precision.py), off for compact / hf decoding with the very weights the trainer scores
    (their mismatch is float rounding; set it true to measure it)."""
    value = cfg.vllm_importance_sampling_correction
    return (cfg.rollout_backend == "vllm" or decode_copy) if value is None else bool(value)


def sampling_weights(cfg: Any, batch: Any, idx: Tensor, old: Tensor, mask: Tensor,
                     sums: dict[str, float] | None, micro_steps: int) -> Tensor | None:
    """Sampler/trainer importance weights for rows ``idx`` of ``batch`` (a ``grpo.rollout.RolloutBatch``;
    ``grpo.correction``), or ``None`` when the batch has no sampler log-probs. old, mask (n, T') -> (n, T') or (n, 1).

    With ``sums``, merges this micro-batch's ``sampling/*`` metrics into it: mean over the ``micro_steps``
    micro-batches, min of the minima, max of the maxima.
    """
    if batch.sampler_logprobs is None:
        return None
    sampler = batch.sampler_logprobs[idx.to(batch.sampler_logprobs.device)][:, : old.size(1)].to(old.device)
    weights = correction.sampling_correction_weights(old, sampler, mask, cfg.vllm_importance_sampling_mode,
                                                     cfg.vllm_importance_sampling_clip_max,
                                                     cfg.vllm_importance_sampling_clip_min)
    if sums is not None:
        for k, v in correction.sampling_correction_metrics(old, sampler, mask, weights).items():
            if k.endswith("/max"):
                sums[k] = max(sums.get(k, v), v)
            elif k.endswith("/min"):
                sums[k] = min(sums.get(k, v), v)
            else:
                sums[k] = sums.get(k, 0.0) + v / micro_steps
    return weights
