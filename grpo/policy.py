"""The policy's side of the update: log-probs of sampled completions, prompt sharing, micro-batching.

Everything here is a function of tensors and a model; no config, tokenizer or accelerator object. The trainer
calls :func:`completion_logprobs` for the policy, the old policy and the reference model alike.

Notation: B prompts, G = num_generations, N = B x G sequences (a prompt's G rows contiguous), P prompt tokens
(left-padded), T completion tokens (right-padded), V vocabulary.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
from torch import Tensor

from grpo import core
from grpo.sampling import truncate_like_sampler


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the HF model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def whole_groups(idx: Tensor, G: int) -> bool:
    """True when ``idx`` (n,) lists whole groups, each as G consecutive rows g*G .. g*G+G-1."""
    if idx.numel() % G:
        return False
    groups = idx.view(-1, G)
    return bool((groups[:, 0] % G == 0).all() and (groups - groups[:, :1] == torch.arange(G, device=idx.device)).all())


def micro_batches(prompt_mask: Tensor, completion_mask: Tensor, G: int, pieces: int) -> list[Tensor]:
    """Row indices of each update micro-batch: whole groups sorted by their longest row, cut into ``pieces``.

    Each piece pads only to its own longest row and can share each prompt's forward among its G rows.

    Args:
        prompt_mask: (N, P); completion_mask: (N, T); G: rows per group; pieces: number of micro-batches
            (at most the number of groups B = N / G).

    Returns:
        ``pieces`` index tensors (on the masks' device), as even as whole groups allow.
    """
    lengths = (prompt_mask.sum(dim=1) + completion_mask.sum(dim=1)).cpu()  # (N,)
    group_len = lengths.view(-1, G).max(dim=1).values  # (B,)
    B = group_len.numel()
    order = torch.argsort(group_len, stable=True)
    rows = (order[:, None] * G + torch.arange(G)[None, :]).reshape(-1)  # groups stay contiguous
    splits = [(i * B) // pieces * G for i in range(1, pieces)]
    return [r.to(prompt_mask.device) for r in torch.tensor_split(rows, splits)]


def _identity(x: Tensor) -> Tensor:
    return x


@contextlib.contextmanager
def lm_head_bypassed(model: torch.nn.Module, enabled: bool = True) -> Iterator[Tensor | None]:
    """Context in which ``model(...).logits`` are the final hidden states (n, T, H) instead of (n, T, V) logits.

    Yields the output projection's weight (V, H) so the caller can apply it fused with the log-softmax
    (:func:`grpo.core.fused_linear_logprobs`), or ``None`` (and leaves the model alone) when that would not be
    the same computation: a head that is not a plain bias-free ``nn.Linear`` (e.g. a LoRA adapter on it),
    logit soft-capping or scaling after the head, or ``enabled`` False (sharded weights under ZeRO-3 / FSDP).
    ``model`` is the unwrapped module (a peft model is fine); the patched head is shared with any DDP wrapper
    around it, which still sees one ordinary forward call.
    """
    inner = model
    head = inner.get_output_embeddings() if enabled and hasattr(inner, "get_output_embeddings") else None
    config = getattr(inner, "config", None)
    rescaled = any(getattr(config, k, None) not in (None, 1, 1.0) for k in
                   ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if type(head) is not torch.nn.Linear or head.bias is not None or rescaled:
        yield None
        return
    head.forward = _identity  # instance attribute: shadows nn.Linear.forward for this call only
    try:
        yield head.weight
    finally:
        del head.forward


def completion_logprobs(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                        completion_mask: Tensor, *, temperature: float, group_size: int | None = None,
                        inner: torch.nn.Module | None = None, with_entropy: bool = False, top_k: int = 0,
                        top_p: float = 1.0, lm_head_chunk_size: int = 0) -> tuple[Tensor, Tensor | None]:
    """Log-probs of the sampled completion tokens. -> (n, T') and entropy (n, T') or None.

    The rows are trimmed to their own widths first (P' = longest real prompt, T' = longest completion among
    them), so a micro-batch of short sequences costs what short sequences need. With ``group_size`` G (rows in
    whole groups of G identical prompts), each prompt runs once and its KV cache (with gradient) serves its G
    completions: same values and gradient, fewer FLOPs. Only the T' completion positions get logits, and
    log-softmax runs in chunks. With ``lm_head_chunk_size`` > 0 the model returns hidden states and the lm_head is
    applied fused with the log-softmax, that many tokens at a time (:func:`grpo.core.fused_linear_logprobs`), so
    (n, T', V) logits never exist.

    Args:
        model: the (possibly wrapped, e.g. DDP) causal LM.
        prompt_ids, prompt_mask: (n, P) left-padded; completion_ids, completion_mask: (n, T) right-padded.
        temperature: the sampling temperature; logits are divided by it, so the tokens are scored under the
            distribution that sampled them.
        group_size: G to share each prompt's forward among its G rows; None runs every row in full.
        inner: the unwrapped model for the shared prompt pass (defaults to ``model``).
        with_entropy: also return the per-token entropy (detached), of the untruncated distribution.
        top_k, top_p: the sampler's truncation: the log-probs are those of the truncated, renormalised
            distribution the tokens were drawn from (``grpo.sampling.truncate_like_sampler``).
        lm_head_chunk_size: tokens per chunk of the fused lm_head + log-softmax; 0 computes all logits at once.
            Pass 0 when the weights are sharded (ZeRO-3 / FSDP): the head's weight is then not whole. Truncated
            sampling (top-k / top-p) needs the full logits, so it uses the unfused path.
    """
    P = int(prompt_mask.sum(dim=1).max().item())
    T = max(int(completion_mask.sum(dim=1).max().item()), 1)
    prompt_ids, completion_ids = prompt_ids[:, -P:], completion_ids[:, :T]
    prompt_mask, completion_mask = prompt_mask[:, -P:], completion_mask[:, :T]
    # With the lm_head bypassed the "logits" below are hidden states (n, T', H).
    fused = lm_head_chunk_size > 0 and not (top_k or top_p < 1.0)
    with lm_head_bypassed(model if inner is None else inner, fused) as head_weight:
        if group_size:
            logits = shared_prefix_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, group_size,
                                          inner=inner)
        else:
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (n, P' + T')
            attention = torch.cat([prompt_mask, completion_mask], dim=1)
            position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)  # left padding must not shift positions
            logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                           logits_to_keep=T + 1).logits[:, :-1]  # (n, T', V): position t predicts token t
    if head_weight is not None:
        return core.fused_linear_logprobs(logits, head_weight, completion_ids, temperature, lm_head_chunk_size,
                                          with_entropy)
    logits = logits / temperature
    entropy = core.entropy_from_logits(logits.detach()) if with_entropy else None
    if top_k or top_p < 1.0:
        logits = truncate_like_sampler(logits, completion_ids, top_k, top_p)
    logprobs = core.selective_log_softmax(logits, completion_ids)
    return logprobs, entropy


def shared_prefix_logits(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                         completion_mask: Tensor, G: int, inner: torch.nn.Module | None = None) -> Tensor:
    """Logits at the completion positions, computing each prompt once for its G rows. -> (n, T', V).

    prompt_ids/mask (n, P'), completion_ids/mask (n, T'); rows come in whole groups of G identical prompts.
    The prompt pass builds a KV cache that keeps its autograd graph; repeated G times it feeds the completion
    pass, so the gradient through the prompt positions is the same as a full forward.

    ``inner`` is the unwrapped module: a wrapped model (DDP) is called once per micro-batch (the completion
    pass), while the prompt pass uses the inner module, whose parameters' gradient hooks still fire once per
    backward.
    """
    from transformers import DynamicCache

    inner = model if inner is None else inner
    T = completion_ids.size(1)
    cache = DynamicCache()
    kw = cache_kwarg(inner)
    pos = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    first = inner(input_ids=prompt_ids[::G], attention_mask=prompt_mask[::G], position_ids=pos[::G],
                  use_cache=True, logits_to_keep=1, **{kw: cache}).logits[:, -1:]  # (B', 1, V)
    first = first.repeat_interleave(G, dim=0)  # (n, 1, V): predicts completion token 0
    if T == 1:
        return first
    cache.batch_repeat_interleave(G)
    attention = torch.cat([prompt_mask, completion_mask[:, : T - 1]], dim=1)
    position_ids = pos[:, -1:] + 1 + torch.arange(T - 1, device=pos.device)[None, :]  # continue after the prompt
    rest = model(input_ids=completion_ids[:, : T - 1], attention_mask=attention, position_ids=position_ids,
                 use_cache=True, **{kw: cache}).logits  # (n, T' - 1, V): predicts tokens 1..T'-1
    return torch.cat([first, rest], dim=1)
