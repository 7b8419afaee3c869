"""Rollout backends: prompts in, a typed batch of sampled completions out.

Backends are registered by name (``ROLLOUT_BACKENDS``); the trainer only sees :class:`RolloutBatch`.
Notation: N = B x G sequences (a prompt's G completions contiguous), P = prompt tokens (left-padded),
T = completion tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

ROLLOUT_BACKENDS: dict[str, Callable[..., "HFGenerateBackend"]] = {}


def register_backend(name: str) -> Callable:
    """Register a rollout backend class under ``name``."""

    def wrap(cls: type) -> type:
        ROLLOUT_BACKENDS[name] = cls
        return cls

    return wrap


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
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    truncated: Tensor
    prompts: list[str]
    completions: list[str]

    @property
    def lengths(self) -> Tensor:
        """(N,) completion lengths in tokens (EOS included)."""
        return self.completion_mask.sum(-1)


def completion_mask_from_ids(completion_ids: Tensor, eos_token_id: int | list[int]) -> tuple[Tensor, Tensor]:
    """Mask up to and including the first EOS. completion_ids (N, T) -> mask (N, T) long, truncated (N,) bool."""
    eos_ids = torch.tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos_ids)  # (N, T)
    has_eos = is_eos.any(dim=1)
    T = completion_ids.size(1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, T, dtype=torch.long))
    mask = (torch.arange(T, device=completion_ids.device)[None, :] <= first_eos[:, None]).long()
    return mask, ~has_eos


@register_backend("hf")
class HFGenerateBackend:
    """Sampling with ``model.generate`` (transformers). Works wherever the model runs: CPU, GPU, DDP."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_completion_length: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0):
        self.tokenizer = tokenizer
        self.max_completion_length = max_completion_length
        # top_k=0 / top_p=1 mean "off": leave them unset so generate does not warn or add a no-op processor.
        self.sampling = dict(do_sample=True, temperature=temperature, top_k=None, top_p=None)
        if top_k > 0:
            self.sampling["top_k"] = top_k
        if top_p < 1.0:
            self.sampling["top_p"] = top_p

    def _generation_config(self, greedy: bool, max_new_tokens: int) -> GenerationConfig:
        tok = self.tokenizer
        opts = dict(do_sample=False) if greedy else dict(self.sampling)
        return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, **opts)

    @torch.no_grad()
    def generate(self, model: PreTrainedModel, prompts: list[str], num_generations: int = 1, greedy: bool = False,
                 max_new_tokens: int | None = None) -> RolloutBatch:
        """Sample ``num_generations`` completions for each prompt. B prompts -> RolloutBatch of N = B x G."""
        tok = self.tokenizer
        max_new_tokens = max_new_tokens or self.max_completion_length
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
        device = next(model.parameters()).device
        prompt_ids = enc["input_ids"].repeat_interleave(num_generations, dim=0).to(device)  # (N, P)
        prompt_mask = enc["attention_mask"].repeat_interleave(num_generations, dim=0).to(device)  # (N, P)
        was_training = model.training
        model.eval()
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                             generation_config=self._generation_config(greedy, max_new_tokens))
        model.train(was_training)
        completion_ids = out[:, prompt_ids.size(1):]  # (N, T)
        mask, truncated = completion_mask_from_ids(completion_ids, tok.eos_token_id)
        completion_ids = completion_ids.masked_fill(mask == 0, tok.pad_token_id)
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        return RolloutBatch(prompt_ids, prompt_mask, completion_ids, mask, truncated,
                            [p for p in prompts for _ in range(num_generations)], texts)


def _pad_to(x: Tensor, width: int, value: int, left: bool) -> Tensor:
    """Pad (n, w) to (n, width) with ``value`` on the left or right."""
    extra = width - x.size(1)
    if extra <= 0:
        return x
    pad = x.new_full((x.size(0), extra), value)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def select(batch: RolloutBatch, idx: list[int]) -> RolloutBatch:
    """The sequences ``idx`` of ``batch`` (same padding widths). -> RolloutBatch of len(idx)."""
    t = torch.tensor(idx, dtype=torch.long, device=batch.prompt_ids.device)
    return RolloutBatch(batch.prompt_ids[t], batch.prompt_mask[t], batch.completion_ids[t], batch.completion_mask[t],
                        batch.truncated[t.to(batch.truncated.device)], [batch.prompts[i] for i in idx],
                        [batch.completions[i] for i in idx])


def concat(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Stack rollout batches: prompts re-padded on the left, completions on the right. -> RolloutBatch."""
    if len(batches) == 1:
        return batches[0]
    P = max(b.prompt_ids.size(1) for b in batches)
    T = max(b.completion_ids.size(1) for b in batches)
    return RolloutBatch(
        torch.cat([_pad_to(b.prompt_ids, P, pad_token_id, left=True) for b in batches]),
        torch.cat([_pad_to(b.prompt_mask, P, 0, left=True) for b in batches]),
        torch.cat([_pad_to(b.completion_ids, T, pad_token_id, left=False) for b in batches]),
        torch.cat([_pad_to(b.completion_mask, T, 0, left=False) for b in batches]),
        torch.cat([b.truncated for b in batches]),
        [p for b in batches for p in b.prompts],
        [c for b in batches for c in b.completions],
    )
