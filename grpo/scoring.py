"""Scoring sampled completions under a model: their log-probs, prompt sharing, micro-batching.

Everything here is a function of a batch slice, frozen options and a model; no config, tokenizer or accelerator
object. The update calls :func:`completion_logprobs` for the policy, the old policy and the reference model alike.

The loss scores the distribution the sampler drew from: every backend samples ``softmax(logits / temperature)``
truncated to the top ``top_k`` tokens and the ``top_p`` nucleus (``grpo.logprobs.warp_logits``), and the log-probs
here use the same truncated, renormalised distribution (the sampled token is always kept: the trainer's logits
differ from the sampler's by rounding, which could move a token on the boundary out of the set). Entropy is
reported for the untruncated policy. A remaining numerical mismatch (vLLM, a bf16 decode copy) is corrected by
importance weights in :mod:`grpo.correction`.

Notation: B prompts, G = num_generations, N = B x G sequences (a prompt's G rows contiguous), P prompt tokens
(left-padded), T completion tokens (right-padded), V vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from grpo.batch import RolloutBatch
from grpo.hf_compat import cache_kwarg
from grpo.logprobs import entropy_from_logits, fused_linear_logprobs, selective_log_softmax, truncate_like_sampler


@dataclass(frozen=True)
class ScoringOptions:
    """How completions are scored, fixed for a run.

    Attributes:
        temperature: the sampling temperature; logits are divided by it, so the tokens are scored under the
            distribution that sampled them.
        top_k, top_p: the sampler's truncation (the log-probs are those of the truncated distribution).
        lm_head_chunk_size: tokens per chunk of the fused lm_head + log-softmax; 0 computes all logits at once
            (and must be 0 when the weights are sharded, ZeRO-3 / FSDP: the head's weight is then not whole).
        share_prompts: run each prompt once for its G rows (needs the KV cache, so not with gradient
            checkpointing).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    lm_head_chunk_size: int = 0
    share_prompts: bool = True


def whole_groups(rows: RolloutBatch, group_size: int) -> bool:
    """True when ``rows`` come as whole groups: each run of G = ``group_size`` consecutive rows holds one prompt's G
    copies."""
    n, G = rows.prompt_ids.size(0), group_size
    if n % G:
        return False
    ids, mask = rows.prompt_ids.view(n // G, G, -1), rows.prompt_mask.view(n // G, G, -1)
    return bool((ids == ids[:, :1]).all() and (mask == mask[:, :1]).all())


def micro_batches(prompt_mask: Tensor, completion_mask: Tensor, group_size: int, pieces: int) -> list[Tensor]:
    """Row indices of each update micro-batch: whole groups sorted by their longest row, cut into ``pieces``.

    Each piece pads only to its own longest row and can share each prompt's forward among its G rows.

    Args:
        prompt_mask: (N, P); completion_mask: (N, T); group_size: G, rows per group; pieces: number of micro-batches
            (at most the number of groups B = N / G).

    Returns:
        ``pieces`` index tensors (on the masks' device), as even as whole groups allow.
    """
    G = group_size
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
    (:func:`grpo.logprobs.fused_linear_logprobs`), or ``None`` (and leaves the model alone) when that would not be
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


def completion_logprobs(model: torch.nn.Module, rows: RolloutBatch, options: ScoringOptions,
                        group_size: int | None = None, *, inner: torch.nn.Module | None = None,
                        with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs of the sampled completion tokens of ``rows``. -> (n, T') and entropy (n, T') or None.

    The rows are trimmed to their own widths first (P' = longest real prompt, T' = longest completion among
    them), so a micro-batch of short sequences costs what short sequences need. With ``group_size`` G and
    ``options.share_prompts`` (rows in whole groups of G identical prompts), each prompt runs once and its KV
    cache (with gradient) serves its G completions: same values and gradient, fewer FLOPs. Only the T' completion
    positions get logits, and log-softmax runs in chunks. With ``lm_head_chunk_size`` > 0 the model returns hidden
    states and the lm_head is applied fused with the log-softmax, that many tokens at a time
    (:func:`grpo.logprobs.fused_linear_logprobs`), so (n, T', V) logits never exist; truncated sampling (top-k /
    top-p) needs the full logits, so it uses the unfused path.

    Args:
        model: the (possibly wrapped, e.g. DDP) causal LM.
        rows: n rows of a rollout batch (``RolloutBatch.select``): prompt_ids/mask (n, P) left-padded,
            completion_ids/mask (n, T) right-padded.
        options: temperature, truncation, head chunking, prompt sharing.
        group_size: G when ``rows`` are whole groups of G (the shared prompt pass needs it); None = every row
            in full.
        inner: the unwrapped model for the shared prompt pass (defaults to ``model``).
        with_entropy: also return the per-token entropy (detached), of the untruncated distribution.
    """
    opts = options
    P = int(rows.prompt_mask.sum(dim=1).max().item())
    T = max(int(rows.completion_mask.sum(dim=1).max().item()), 1)
    prompt_ids, completion_ids = rows.prompt_ids[:, -P:], rows.completion_ids[:, :T]
    prompt_mask, completion_mask = rows.prompt_mask[:, -P:], rows.completion_mask[:, :T]
    share = group_size if opts.share_prompts and group_size and whole_groups(rows, group_size) else None
    truncated = bool(opts.top_k or opts.top_p < 1.0)
    # With the lm_head bypassed the "logits" below are hidden states (n, T', H).
    with lm_head_bypassed(model if inner is None else inner, opts.lm_head_chunk_size > 0 and not truncated) as head:
        if share:
            logits = shared_prefix_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, share,
                                          inner=inner)
        else:
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (n, P' + T')
            attention = torch.cat([prompt_mask, completion_mask], dim=1)
            position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)  # left padding must not shift positions
            logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                           logits_to_keep=T + 1).logits[:, :-1]  # (n, T', V): position t predicts token t
    if head is not None:
        return fused_linear_logprobs(logits, head, completion_ids, opts.temperature, opts.lm_head_chunk_size,
                                     with_entropy)
    logits = logits / opts.temperature
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    if truncated:
        logits = truncate_like_sampler(logits, completion_ids, opts.top_k, opts.top_p)
    return selective_log_softmax(logits, completion_ids), entropy


def shared_prefix_logits(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                         completion_mask: Tensor, group_size: int, inner: torch.nn.Module | None = None) -> Tensor:
    """Logits at the completion positions, computing each prompt once for its G = ``group_size`` rows. -> (n, T', V).

    prompt_ids/mask (n, P'), completion_ids/mask (n, T'); rows come in whole groups of G identical prompts.
    The prompt pass builds a KV cache that keeps its autograd graph; repeated G times it feeds the completion
    pass, so the gradient through the prompt positions is the same as a full forward.

    ``inner`` is the unwrapped module: a wrapped model (DDP) is called once per micro-batch (the completion
    pass), while the prompt pass uses the inner module, whose parameters' gradient hooks still fire once per
    backward.
    """
    from transformers import DynamicCache

    G = group_size
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
