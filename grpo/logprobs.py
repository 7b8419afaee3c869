"""Log-probs and entropy of sampled tokens without holding full-vocabulary copies: pure tensor math.

Also the distribution a sampler draws from (temperature, top-k, top-p: :func:`warp_logits`), shared by the rollout
backends that sample from it and the loss that scores it (:func:`truncate_like_sampler`), so both use one
definition. Notation: n rows, T tokens, V vocabulary, H hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor

# --- log-probs and entropy without holding full-vocabulary copies ---------------------------------------
# Both run forward *and* backward in row chunks (custom autograd functions that recompute the softmax
# per chunk), so beyond the logits and their gradient only ``chunk_size`` x V floats exist at a time.
# Half-precision logits are computed in float32 (logsumexp in bf16 is too coarse); float64 stays float64.


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _ChunkedSelectiveLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits)[index]`` for (M, V) logits, (M,) index; backward ``g * (onehot - softmax)``."""

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor, chunk_size: int) -> Tensor:
        out = logits.new_empty(index.shape, dtype=_compute_dtype(logits.dtype))  # (M,)
        lse = torch.empty_like(out)  # (M,) logsumexp, kept so backward needs no second reduction
        for s in range(0, logits.size(0), chunk_size):
            rows = logits[s : s + chunk_size].to(out.dtype)  # (c, V)
            lse[s : s + chunk_size] = torch.logsumexp(rows, dim=-1)
            picked = rows.gather(-1, index[s : s + chunk_size, None]).squeeze(-1)  # (c,)
            out[s : s + chunk_size] = picked - lse[s : s + chunk_size]
        ctx.save_for_backward(logits, index, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        logits, index, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.size(0), ctx.chunk_size):
            e = s + ctx.chunk_size
            g = grad_out[s:e, None].to(lse.dtype)  # (c, 1)
            chunk = -g * torch.exp(logits[s:e].to(lse.dtype) - lse[s:e, None])  # (c, V): -g * softmax
            chunk.scatter_add_(-1, index[s:e, None], g)
            grad[s:e] = chunk.to(logits.dtype)
        return grad, None, None


class _ChunkedEntropy(torch.autograd.Function):
    """Softmax entropy of (M, V) logits -> (M,); backward ``dH/dz = -p * (log p + H)``."""

    @staticmethod
    def forward(ctx, logits: Tensor, chunk_size: int) -> Tensor:
        out = logits.new_empty(logits.shape[:1], dtype=_compute_dtype(logits.dtype))  # (M,)
        for s in range(0, logits.size(0), chunk_size):
            logp = torch.log_softmax(logits[s : s + chunk_size].to(out.dtype), dim=-1)  # (c, V)
            out[s : s + chunk_size] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(logits, out)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        logits, ent = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.size(0), ctx.chunk_size):
            e = s + ctx.chunk_size
            logp = torch.log_softmax(logits[s:e].to(ent.dtype), dim=-1)  # (c, V)
            grad[s:e] = (-grad_out[s:e, None].to(ent.dtype) * logp.exp() * (logp + ent[s:e, None])).to(logits.dtype)
        return grad, None


def _check_chunk(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def selective_log_softmax(logits: Tensor, index: Tensor, chunk_size: int = 256) -> Tensor:
    """``log_softmax(logits).gather(index)`` in row chunks, forward and backward. (..., V), (...) -> (...).

    Args:
        logits: (..., V), e.g. (N, T, V); any float dtype (half precision is computed in float32).
        index: (...) int64 token ids, e.g. (N, T).
        chunk_size: rows of V processed at a time.

    Returns:
        (...) log-probs, float32 (float64 for float64 logits), differentiable w.r.t. ``logits``.
    """
    _check_chunk(chunk_size)
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"index shape {tuple(index.shape)} must be logits' without V: {tuple(logits.shape[:-1])}")
    flat = _ChunkedSelectiveLogSoftmax.apply(logits.reshape(-1, logits.size(-1)), index.reshape(-1), chunk_size)
    return flat.view(index.shape)


def entropy_from_logits(logits: Tensor, chunk_size: int = 256) -> Tensor:
    """Entropy (nats) of each row's softmax, in row chunks, forward and backward. logits (..., V) -> (...).

    Args:
        logits: (..., V), e.g. (N, T, V); half precision is computed in float32.
        chunk_size: rows of V processed at a time.

    Returns:
        (...) entropies, float32 (float64 for float64 logits), differentiable w.r.t. ``logits``.
    """
    _check_chunk(chunk_size)
    return _ChunkedEntropy.apply(logits.reshape(-1, logits.size(-1)), chunk_size).view(logits.shape[:-1])


# --- lm_head fused with the log-softmax: no (n, T, V) logits at all ---------------------------------------
# The update needs only log p(token) (and, without gradient, the entropy) at each completion position. Fusing
# the output projection into the chunked log-softmax (the idea of Liger's fused-linear GRPO loss) keeps only
# ``chunk_size`` x V logits at a time, in forward and backward. The backward recomputes each chunk's logits
# from the saved hidden states: one more (chunk x H x V) matmul per chunk, in exchange for never storing
# (n, T, V) logits, their log-softmax or their gradient.


class _FusedLinearLogProbs(torch.autograd.Function):
    """``log_softmax(h @ W.T / temperature)[target]`` for (M, H) hidden, (V, H) weight, (M,) target -> (M,).

    Backward, with ``p`` the softmax and ``d = g * (onehot(target) - p) / temperature`` (c, V) per chunk:
    ``dh = d @ W`` and ``dW = d.T @ h``.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, temperature: float, chunk_size: int,
                with_entropy: bool) -> tuple[Tensor, Tensor]:
        dtype = _compute_dtype(hidden.dtype)
        M = hidden.size(0)
        out = hidden.new_empty((M,), dtype=dtype)
        lse = torch.empty_like(out)  # (M,) kept so backward needs no second reduction
        entropy = hidden.new_empty((M,) if with_entropy else (0,), dtype=dtype)
        for s in range(0, M, chunk_size):
            e = s + chunk_size
            logits = (hidden[s:e] @ weight.T).to(dtype).div_(temperature)  # (c, V); in place: one chunk buffer
            lse[s:e] = torch.logsumexp(logits, dim=-1)
            out[s:e] = logits.gather(-1, target[s:e, None]).squeeze(-1) - lse[s:e]
            if with_entropy:
                logp = logits - lse[s:e, None]
                entropy[s:e] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(hidden, weight, target, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor, grad_entropy: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, target, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None  # the first chunk's product becomes it: no (V, H) zeros to allocate and add to
        for s in range(0, hidden.size(0), ctx.chunk_size):
            e = s + ctx.chunk_size
            # (c, V) recomputed, then turned in place into g * (onehot - softmax) / temperature: one chunk buffer
            d = (hidden[s:e] @ weight.T).to(lse.dtype).div_(ctx.temperature)
            g = grad_out[s:e, None].to(lse.dtype)  # (c, 1)
            d.sub_(lse[s:e, None]).exp_().mul_(-g)
            d.scatter_add_(-1, target[s:e, None], g)
            d = d.div_(ctx.temperature).to(hidden.dtype)  # through the 1 / temperature scaling
            if need_h:
                grad_h[s:e] = d @ weight
            if need_w:
                part = (d.T @ hidden[s:e]).to(lse.dtype)  # (V, H)
                grad_w = part if grad_w is None else grad_w.add_(part)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


def fused_linear_logprobs(hidden: Tensor, weight: Tensor, target: Tensor, temperature: float = 1.0,
                          chunk_size: int = 512, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``target`` under ``softmax(hidden @ weight.T / temperature)``, never holding (n, T, V).

    The same values and gradients (w.r.t. ``hidden`` and ``weight``) as computing the logits with the model's
    ``lm_head`` and then :func:`selective_log_softmax`, up to float rounding; only ``chunk_size`` x V logits
    exist at a time, forward and backward.

    Args:
        hidden: (n, T, H) final hidden states (after the model's last norm), at the positions predicting ``target``.
        weight: (V, H) output projection (``lm_head.weight``, tied or not); no bias.
        target: (n, T) int64 token ids.
        temperature: logits are divided by it (score tokens under the distribution that sampled them).
        chunk_size: tokens (rows of n x T) per chunk.
        with_entropy: also return the softmax entropy per token (no gradient).

    Returns:
        log-probs (n, T) float32 (float64 for float64 inputs), differentiable; entropy (n, T) or None.
    """
    _check_chunk(chunk_size)
    if hidden.shape[:-1] != target.shape or hidden.size(-1) != weight.size(1):
        raise ValueError(f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and target {tuple(target.shape)} "
                         "must be (n, T, H), (V, H) and (n, T)")
    flat_h = hidden.reshape(-1, hidden.size(-1))
    logprobs, entropy = _FusedLinearLogProbs.apply(flat_h, weight, target.reshape(-1), float(temperature), chunk_size,
                                                   with_entropy)
    return logprobs.view(target.shape), entropy.view(target.shape) if with_entropy else None


# --- the sampler's distribution ----------------------------------------------------------------------


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
