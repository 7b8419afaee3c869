"""Rollout basics: the typed batch every backend returns, the sampling math they share, the backend base class
and the registry. Notation: N = B x G sequences (a prompt's G completions contiguous), P = prompt tokens
(left-padded), T = completion tokens (right-padded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpo.rollout.packed import packed_copy, prepacking_available, refresh
from grpo.sampling import warp_logits

ROLLOUT_BACKENDS: dict[str, type] = {}


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
        sampler_logprobs: (N, T) float32 log-probs of the sampled tokens under the distribution the sampler
            actually drew them from (temperature applied; with top-k / top-p the truncated, renormalised
            distribution); 0 on padding and for greedy decoding (a point mass). ``None`` when a backend cannot
            report them. The importance-sampling correction compares them with the trainer's own log-probs.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    truncated: Tensor
    prompts: list[str]
    completions: list[str]
    sampler_logprobs: Tensor | None = None

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


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                greedy: bool = False, with_logprobs: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Sample one token per row. logits (n, V) -> (n,) token ids (and their (n,) float32 log-probs).

    Sampling runs in float32 (:func:`warp_logits`) and draws by inverse CDF (:func:`draw_from_weights`): one
    uniform number per row, not one per vocabulary entry, so a step over a 49k vocabulary costs ~2 ms, not the
    ~20 ms of an exponential race or ``torch.multinomial`` on a CPU. With ``with_logprobs`` it also returns each
    drawn token's log-prob under the distribution it was drawn from (0 for greedy: a point mass).
    """
    if greedy:
        token = logits.argmax(dim=-1)
        return (token, torch.zeros(token.shape, dtype=torch.float32, device=token.device)) if with_logprobs else token
    warped = warp_logits(logits, temperature, top_k, top_p)
    top = warped.amax(dim=-1, keepdim=True)  # (n, 1); finite: warping always keeps the most likely token
    weights = (warped - top).exp_()  # (n, V) unnormalised probabilities, the largest exactly 1
    token, total = draw_from_weights(weights)
    if not with_logprobs:
        return token
    logp = warped.gather(-1, token[:, None]).squeeze(-1) - top.squeeze(-1) - total.log().float()
    return token, logp


def draw_from_weights(weights: Tensor, block: int = 256) -> tuple[Tensor, Tensor]:
    """One index per row with probability ``weights / weights.sum()``. weights (n, V) >= 0, each row with a
    positive entry -> indices (n,) long and the row totals (n,) float64.

    Inverse CDF in two levels (a float32 cumulative sum over a 49k-entry row would blur the weights of rare tokens,
    and a float64 one costs ~6 ms per step on a CPU): pick a block of ``block`` entries from the float64 cumulative
    sum of the blocks' masses, then the entry inside it from the block's own float64 cumulative sum. The uniform
    draw stays strictly below each level's total, so a zero-weight entry (cut by top-k / top-p) is never drawn.
    """
    n, V = weights.shape
    pad = (-V) % block
    w = torch.nn.functional.pad(weights, (0, pad)).view(n, -1, block)  # (n, nb, block); padding weighs 0
    mass = w.sum(dim=-1).double()  # (n, nb); a float32 sum of 256 entries is exact to ~1e-7 of the block's mass
    cdf = mass.cumsum(dim=-1)  # (n, nb)
    total = cdf[:, -1:]  # (n, 1)
    u = torch.rand(total.shape, dtype=torch.float64, device=weights.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    b = torch.searchsorted(cdf, u, right=True)  # (n, 1): cdf[b-1] <= u < cdf[b], so block b has weight
    before = torch.cat([torch.zeros_like(total), cdf[:, :-1]], dim=1).gather(1, b)  # (n, 1), exactly cdf[b-1]
    inner = w.gather(1, b[:, :, None].expand(n, 1, block)).squeeze(1).cumsum(dim=-1, dtype=torch.float64)
    r = torch.minimum(u - before, torch.nextafter(inner[:, -1:], torch.zeros_like(total)))  # (n, 1), >= 0
    j = torch.searchsorted(inner, r, right=True)
    return (b * block + j).squeeze(-1), total.squeeze(-1)


def cast_copy(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """A frozen copy of ``model`` with its parameters in ``dtype`` (buffers keep theirs)."""
    import copy

    twin = copy.deepcopy(model).requires_grad_(False)
    for p in twin.parameters():
        p.data = p.data.to(dtype)
    return twin


class _Backend:
    """Shared parts of the backends: tokenising prompts, building the RolloutBatch."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_completion_length: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, generation_kwargs: dict | None = None, prompt_bucket: int = 0,
                 decode_dtype: torch.dtype | None = None, cpu_prepacked_decode: bool = False):
        self.tokenizer = tokenizer
        self.cpu_prepacked_decode = cpu_prepacked_decode  # decode from a oneDNN-packed copy (grpo/rollout/packed.py)
        self.decode_dtype = decode_dtype  # a decode copy of the weights in this dtype (grpo/precision.py); None = no
        self._decode_copy: PreTrainedModel | None = None
        self._copy_stale = True
        self.max_completion_length = max_completion_length
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.generation_kwargs = dict(generation_kwargs or {})
        self.prompt_bucket = prompt_bucket
        eos = tokenizer.eos_token_id
        self.eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def encode(self, prompts: list[str], num_generations: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Left-padded prompt ids and mask, each prompt repeated G times. -> (N, P), (N, P)."""
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if self.prompt_bucket > 1:  # pad P up to a multiple so compiled graphs see few distinct shapes
            width = -(-ids.size(1) // self.prompt_bucket) * self.prompt_bucket
            ids, mask = _pad_to(ids, width, self.tokenizer.pad_token_id, left=True), _pad_to(mask, width, 0, left=True)
        return (ids.repeat_interleave(num_generations, dim=0).to(device),
                mask.repeat_interleave(num_generations, dim=0).to(device))

    def finish(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, prompts: list[str],
               num_generations: int, sampler_logprobs: Tensor | None = None) -> RolloutBatch:
        """Mask after the first EOS, decode, and package. completion_ids (N, T), sampler_logprobs (N, T) or None
        -> RolloutBatch."""
        tok = self.tokenizer
        mask, truncated = completion_mask_from_ids(completion_ids, self.eos_ids)
        completion_ids = completion_ids.masked_fill(mask == 0, tok.pad_token_id)
        width = int(mask.sum(dim=1).max().item()) if mask.numel() else 0
        completion_ids, mask = completion_ids[:, :width], mask[:, :width]  # no all-padding columns
        if sampler_logprobs is not None:
            sampler_logprobs = sampler_logprobs[:, :width].float().masked_fill(mask == 0, 0.0)
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        return RolloutBatch(prompt_ids, prompt_mask, completion_ids, mask, truncated,
                            [p for p in prompts for _ in range(num_generations)], texts, sampler_logprobs)

    def sync_weights(self, model: PreTrainedModel) -> None:
        """The policy's weights changed (after an optimizer step): a decode copy is refreshed before the next
        rollout. Decoding with the training model itself needs nothing."""
        self._copy_stale = True

    def decode_model(self, model: PreTrainedModel) -> PreTrainedModel:
        """The model to decode with: ``model`` itself, or a copy made once and refreshed in place when stale
        (:func:`grpo.rollout.packed.refresh`): in ``decode_dtype`` (under bf16 autocast a float32 model re-casts
        every weight at every decode step; the copy is cast once per optimizer step; buffers such as rotary
        frequencies stay float32), or, on a CPU with ``cpu_prepacked_decode``, with its large linear weights packed
        for oneDNN (:mod:`grpo.rollout.packed`)."""
        make = self._copy_maker(model)
        if make is None:
            return model
        if self._decode_copy is None:
            self._decode_copy = make(model)
        elif self._copy_stale:
            refresh(self._decode_copy, model)
        self._copy_stale = False
        return self._decode_copy

    def _copy_maker(self, model: PreTrainedModel) -> Callable[[PreTrainedModel], PreTrainedModel] | None:
        """How this backend's decode copy of ``model`` is made, or None to decode with ``model`` itself."""
        if hasattr(model, "get_base_model"):  # LoRA: the adapters change every step; decode with the model
            return None
        if self.decode_dtype is not None and next(model.parameters()).dtype != self.decode_dtype:
            return lambda m: cast_copy(m, self.decode_dtype)
        if self.cpu_prepacked_decode and prepacking_available(model):
            return packed_copy
        return None

    def metrics(self) -> dict[str, float]:
        """Backend counters for the step's metrics (none by default)."""
        return {}

    def mark_stale(self) -> None:
        """The policy's weights changed outside an update (e.g. loaded from a checkpoint): a backend with its own
        copy of the weights pushes them before the next rollout."""
        self._copy_stale = True

    @torch.no_grad()
    def generate(self, model: PreTrainedModel, prompts: list[str], num_generations: int = 1, greedy: bool = False,
                 max_new_tokens: int | None = None) -> RolloutBatch:
        """Sample ``num_generations`` completions per prompt (greedy: the argmax). B prompts -> RolloutBatch of
        N = B x G, whatever the backend."""
        max_new = max_new_tokens or self.max_completion_length
        model = self.decode_model(model)
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = self.encode(prompts, num_generations, device)
        was_training = model.training
        model.eval()
        try:
            completion_ids, sampler_logprobs = self.decode(model, prompt_ids, prompt_mask, num_generations, greedy,
                                                           max_new)
        finally:
            model.train(was_training)
        return self.finish(prompt_ids, prompt_mask, completion_ids, prompts, num_generations, sampler_logprobs)

    def decode(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int,
               greedy: bool, max_new: int) -> tuple[Tensor, Tensor | None]:
        """The backend's sampling loop. prompt_ids, prompt_mask (N, P), G copies of each prompt adjacent ->
        completion ids (N, T <= max_new) and the sampler's log-probs of those tokens (N, T) float32 (or None);
        anything after an EOS is ignored by :meth:`finish`."""
        raise NotImplementedError



def make_backend(name: str, tokenizer: PreTrainedTokenizerBase, **kwargs) -> _Backend:
    """Build the rollout backend registered as ``name`` (``compact``, ``hf`` or ``vllm``)."""
    if name not in ROLLOUT_BACKENDS:
        raise ValueError(f"unknown rollout_backend {name!r}; known: {', '.join(sorted(ROLLOUT_BACKENDS))}")
    cls = ROLLOUT_BACKENDS[name]
    own = {"hf": ("compile_generation",),
           "vllm": ("model_name_or_path", "gpu_memory_utilization", "max_model_len", "seed", "enable_sleep_mode")}
    common = ("max_completion_length", "temperature", "top_p", "top_k", "generation_kwargs", "prompt_bucket",
              "decode_dtype", "cpu_prepacked_decode")
    args = {k: v for k, v in kwargs.items() if k in common or k in own.get(name, ())}
    return cls(tokenizer, **args)


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
    logp = batch.sampler_logprobs
    return RolloutBatch(batch.prompt_ids[t], batch.prompt_mask[t], batch.completion_ids[t], batch.completion_mask[t],
                        batch.truncated[t.to(batch.truncated.device)], [batch.prompts[i] for i in idx],
                        [batch.completions[i] for i in idx], None if logp is None else logp[t.to(logp.device)])


def concat(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Stack rollout batches: prompts re-padded on the left, completions on the right. -> RolloutBatch."""
    if len(batches) == 1:
        return batches[0]
    P = max(b.prompt_ids.size(1) for b in batches)
    T = max(b.completion_ids.size(1) for b in batches)
    with_logp = all(b.sampler_logprobs is not None for b in batches)
    return RolloutBatch(
        torch.cat([_pad_to(b.prompt_ids, P, pad_token_id, left=True) for b in batches]),
        torch.cat([_pad_to(b.prompt_mask, P, 0, left=True) for b in batches]),
        torch.cat([_pad_to(b.completion_ids, T, pad_token_id, left=False) for b in batches]),
        torch.cat([_pad_to(b.completion_mask, T, 0, left=False) for b in batches]),
        torch.cat([b.truncated for b in batches]),
        [p for b in batches for p in b.prompts],
        [c for b in batches for c in b.completions],
        torch.cat([_pad_to(b.sampler_logprobs, T, 0, left=False) for b in batches]) if with_logp else None,
    )


def backend_for_run(cfg: Any, tokenizer: PreTrainedTokenizerBase, model_path: str, decode_dtype: Any = None) -> _Backend:
    """The rollout backend a run's config asks for (``cfg`` is a ``GRPOConfig``, read but not imported here;
    ``model_path`` the resolved model folder, which vLLM loads itself)."""
    return make_backend(
        cfg.rollout_backend, tokenizer, max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
        top_p=cfg.top_p, top_k=cfg.top_k, generation_kwargs=cfg.generation_kwargs, prompt_bucket=cfg.prompt_bucket,
        compile_generation=cfg.compile_generation, model_name_or_path=model_path,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, seed=cfg.seed,  # vllm adds the rank
        enable_sleep_mode=cfg.vllm_enable_sleep_mode, decode_dtype=decode_dtype,
        cpu_prepacked_decode=cfg.cpu_prepacked_decode)
