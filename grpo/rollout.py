"""Rollout backends: prompts in, a typed batch of sampled completions out.

Backends are registered by name (``ROLLOUT_BACKENDS``); the trainer only sees :class:`RolloutBatch`.
Notation: N = B x G sequences (a prompt's G completions contiguous), P = prompt tokens (left-padded),
T = completion tokens (right-padded).
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from grpo.policy import cache_kwarg

ROLLOUT_BACKENDS: dict[str, type] = {}
log = logging.getLogger(__name__)


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


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                greedy: bool = False, with_logprobs: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Sample one token per row. logits (n, V) -> (n,) token ids (and their (n,) float32 log-probs).

    Sampling runs in float32 (:func:`warp_logits`) and uses the exponential race (``argmax(p / E)``,
    ``E ~ Exp(1)``), which draws exactly from ``p`` without a cumulative sum. With ``with_logprobs`` it also
    returns each drawn token's log-prob under the distribution it was drawn from (0 for greedy: a point mass).
    """
    if greedy:
        token = logits.argmax(dim=-1)
        return (token, torch.zeros(token.shape, dtype=torch.float32, device=token.device)) if with_logprobs else token
    warped = warp_logits(logits, temperature, top_k, top_p)
    probs = warped.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0)
    token = (probs / race).argmax(dim=-1)
    return (token, token_logprobs(warped, token)) if with_logprobs else token


class _Backend:
    """Shared parts of the backends: tokenising prompts, building the RolloutBatch."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_completion_length: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, generation_kwargs: dict | None = None, prompt_bucket: int = 0,
                 decode_dtype: torch.dtype | None = None):
        self.tokenizer = tokenizer
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
        """The model to decode with: ``model`` itself, or its ``decode_dtype`` copy (made once, refreshed in place
        when stale). Under bf16 autocast a float32 model re-casts every weight at every decode step; the copy
        is cast once per optimizer step. Buffers (rotary frequencies) stay float32."""
        params = list(model.parameters())
        if self.decode_dtype is None or hasattr(model, "get_base_model") or params[0].dtype == self.decode_dtype:
            return model
        if self._decode_copy is None:
            import copy

            self._decode_copy = copy.deepcopy(model).requires_grad_(False)
            for p in self._decode_copy.parameters():
                p.data = p.data.to(self.decode_dtype)
            self._copy_stale = False
        elif self._copy_stale:
            with torch.no_grad():
                for c, p in zip(self._decode_copy.parameters(), params):
                    c.copy_(p)
            self._copy_stale = False
        return self._decode_copy

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


@register_backend("compact")
class CompactSampler(_Backend):
    """Decode loop over the model's own forward with a KV cache that drops finished sequences.

    ``model.generate`` keeps computing every row until the longest one ends; here a row that emits EOS
    leaves the batch (and its KV cache rows are freed), so a step costs what the live rows need. Same
    distribution as ``generate`` with temperature / top-k / top-p sampling.
    """

    def decode(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int,
               greedy: bool, max_new: int) -> tuple[Tensor, Tensor]:
        """Prefill once per prompt, then decode only the live rows. (N, P) -> completion ids (N, max_new) and the
        sampler's log-probs of them (N, max_new) float32."""
        from transformers import DynamicCache

        device = prompt_ids.device
        N, G = prompt_ids.size(0), num_generations
        out = torch.full((N, max_new), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        out_logp = torch.zeros((N, max_new), dtype=torch.float32, device=device)
        eos = torch.tensor(self.eos_ids, device=device)
        suppress_ids = self.generation_kwargs.get("suppress_tokens") or []
        suppress = torch.tensor(suppress_ids, dtype=torch.long, device=device) if suppress_ids else None  # once
        min_new = int(self.generation_kwargs.get("min_new_tokens", 0))
        check_every = finished_check_interval(device)
        cache = DynamicCache()
        kw = cache_kwarg(model)
        mask = prompt_mask
        pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
        # Prefill each prompt once, then copy its KV cache to its G samples (G x less prefill work).
        logits = model(input_ids=prompt_ids[::G], attention_mask=mask[::G], position_ids=pos[::G], **{kw: cache},
                       use_cache=True, logits_to_keep=1).logits[:, -1]  # (B, V)
        if G > 1:
            cache.batch_repeat_interleave(G)
            logits = logits.repeat_interleave(G, dim=0)  # (N, V)
        next_pos = pos[:, -1] + 1  # (n,)
        live = torch.arange(N, device=device)  # original row of each live sequence
        done = torch.zeros(N, dtype=torch.bool, device=device)  # (n,) emitted EOS; stays on the device
        for t in range(max_new):
            if suppress is not None:
                logits = logits.index_fill(-1, suppress, float("-inf"))
            if t < min_new:
                logits = logits.index_fill(-1, eos, float("-inf"))
            token, logp = sample_next(logits, self.temperature, self.top_k, self.top_p, greedy, with_logprobs=True)
            out[live, t] = token  # a row past its EOS writes tokens that finish() masks out
            out_logp[live, t] = logp
            if t == max_new - 1:
                break
            done = done | torch.isin(token, eos)
            # Dropping finished rows needs their count on the host (a GPU sync): only every check_every steps.
            if (t + 1) % check_every == 0:
                n_done = int(done.sum())
                if n_done == done.numel():
                    break
                if n_done:
                    keep = (~done).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    live, token, mask, next_pos, done = live[keep], token[keep], mask[keep], next_pos[keep], done[keep]
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                           **{kw: cache}, use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
        return out, out_logp


def finished_check_interval(device: torch.device) -> int:
    """Decode steps between checks for finished rows in :class:`CompactSampler`.

    On CPU a check is free and dropping rows at once saves work (and keeps the RNG stream, hence the default
    run's numbers, as they were). On a GPU each check is a device-to-host sync that stalls the launch queue;
    checking every 8 steps costs at most 7 extra steps of a finished row and lets the GPU run ahead.
    """
    return 1 if device.type == "cpu" else 8


CACHE_LEN_STEP = 256  # static cache lengths are multiples of this: a few shapes, at most 255 unused slots
BATCH_BUCKET_MIN = 8


def batch_bucket(n: int) -> int:
    """Rows a compiled decode runs with: the next power of two >= n (at least 8), so training batches, eval
    batches and their last partial chunk map to a few shapes. n -> bucket."""
    bucket = BATCH_BUCKET_MIN
    while bucket < n:
        bucket *= 2
    return bucket


def pad_rows(x: Tensor, rows: int) -> Tensor:
    """(n, w) -> (rows, w), extra rows copying the last one (a real prompt: no all-padding row, whose attention
    would be empty). Their outputs are dropped."""
    extra = rows - x.size(0)
    return x if extra <= 0 else torch.cat([x, x[-1:].expand(extra, -1)], dim=0)


def recompile_limit() -> int:
    """torch's limit on recompilations per function (``recompile_limit``, formerly ``cache_size_limit``)."""
    cfg = torch._dynamo.config
    return int(getattr(cfg, "recompile_limit", getattr(cfg, "cache_size_limit", 8)))


class _Warp:
    """A transformers logits processor applying :func:`warp_logits` (temperature, top-k, top-p): the same code as
    the compact sampler, so both backends draw from one distribution."""

    def __init__(self, temperature: float, top_k: int, top_p: float):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return warp_logits(scores, self.temperature, self.top_k, self.top_p)


class _RecordLogprobs:
    """The last logits processor: remembers each step's final scores and, once the sampled token shows up in
    ``input_ids`` on the next call, its log-prob. Holds one (N, V) tensor at a time, never all T steps."""

    def __init__(self) -> None:
        self.steps: list[Tensor] = []  # (N,) log-prob of token t
        self.pending: Tensor | None = None  # (N, V) scores of the step whose token is not known yet

    def resolve(self, token: Tensor) -> None:
        """Log-prob of ``token`` (N,) under the pending step's distribution."""
        if self.pending is not None:
            self.steps.append(token_logprobs(self.pending, token))
            self.pending = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self.resolve(input_ids[:, -1])
        self.pending = scores.float()
        return scores

    def logprobs(self, completion_ids: Tensor) -> Tensor:
        """(N, T) log-probs of the returned completion ids (generate may have run and undone extra steps)."""
        T = completion_ids.size(1)
        if len(self.steps) < T:
            self.resolve(completion_ids[:, len(self.steps)])
        return torch.stack(self.steps[:T], dim=1) if T else completion_ids.new_zeros((completion_ids.size(0), 0),
                                                                                     dtype=torch.float32)


# GenerationConfig fields that reshape the distribution after the temperature, in transformers' own warper stage
# (after every custom logits processor): the log-probs the loss and ``sampler_logprobs`` use could not see them.
_UNSCORED_WARPERS = ("min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h")
# Our own options: set them as top-level keys, not in generation_kwargs.
_OWN_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "do_sample")


def check_hf_generation_kwargs(generation_kwargs: dict) -> None:
    """Raise ``ValueError`` (one line) for generation_kwargs the hf backend cannot sample and score alike."""
    for key in generation_kwargs:
        if key in _OWN_SAMPLING_KEYS:
            raise ValueError(f"generation_kwargs: set {key} as its own config key (--{key}), not in generation_kwargs")
        if key in _UNSCORED_WARPERS:
            raise ValueError(f"generation_kwargs: {key} reshapes the sampling distribution after the log-probs are "
                             f"taken, so the loss would score another distribution; use top_k / top_p instead")


@contextlib.contextmanager
def neutral_generation_config(model: PreTrainedModel):
    """Within the context, ``model.generate`` inherits nothing from the model's own ``generation_config``.

    transformers fills every field left ``None`` in the config passed to ``generate`` from the model's
    ``generation_config`` (an instruct model's top_p, top_k, repetition_penalty...), then from global defaults
    (``top_k=50``). The model's config is swapped for a blank one here; the backend sets every sampling field.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: generate runs here
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


@register_backend("hf")
class HFGenerateBackend(_Backend):
    """Sampling with ``model.generate`` (transformers), explicitly neutral.

    Nothing comes from the model's ``generation_config``: sampling is the softmax at ``temperature``, truncated
    only by our ``top_k`` / ``top_p`` (applied by the same code as the compact sampler), plus whatever the user
    sets in ``generation_kwargs`` (``min_new_tokens``, ``suppress_tokens``, ``repetition_penalty``...).
    The sampler's log-probs of the drawn tokens are recorded as ``sampler_logprobs``.

    With ``compile_generation`` (GPU) it uses transformers' supported compile path: a static KV cache and
    ``CompileConfig(fullgraph=True, mode="reduce-overhead")``. GRPO's shapes change every step, so prompts
    are padded to a multiple of ``prompt_bucket`` tokens and the batch size is fixed, letting the compiled
    CUDA graphs be reused instead of recompiled.
    """

    def __init__(self, *args, compile_generation: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        check_hf_generation_kwargs(self.generation_kwargs)
        self.compile_generation = compile_generation
        self.cache_len = 0  # static cache length: grows in CACHE_LEN_STEP steps, never shrinks
        self._caches: dict[int, object] = {}  # batch bucket -> its StaticCache (same tensors: CUDA graphs replay)
        self.compiled_shapes: set[tuple[int, int]] = set()  # (batch bucket, cache length) decoded so far

    def _generation_config(self, greedy: bool, max_new_tokens: int) -> GenerationConfig:
        """The full GenerationConfig: every field that shapes sampling is set (none left for transformers to fill)."""
        tok = self.tokenizer
        # temperature 1, top_k 0, top_p 1: transformers adds no warper of its own; _Warp does ours (see decode).
        opts: dict = {"do_sample": not greedy, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
                      "num_beams": 1, "renormalize_logits": False}
        if self.compile_generation:  # the static cache is ours (see decode): no cache_implementation here
            from transformers import CompileConfig

            opts.update(compile_config=CompileConfig(fullgraph=True, mode="reduce-overhead"))
        return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, **{**opts, **self.generation_kwargs})

    def _static_cache(self, model: PreTrainedModel, batch: int, needed: int) -> object:
        """The StaticCache for a batch bucket, emptied; its length only grows (in CACHE_LEN_STEP steps), so training
        and eval batches, and longer prompts within the same step, reuse the compiled decode graphs."""
        from transformers import StaticCache

        length = -(-needed // CACHE_LEN_STEP) * CACHE_LEN_STEP
        if length > self.cache_len:
            self.cache_len = length
            self._caches.clear()  # shorter caches would not fit the next long prompt; free them
        if batch not in self._caches:
            self._caches[batch] = StaticCache(config=model.config, max_cache_len=self.cache_len)
        cache = self._caches[batch]
        cache.reset()
        self._note_shape((batch, self.cache_len))
        return cache

    def _note_shape(self, shape: tuple[int, int]) -> None:
        """Report each new decode shape: each costs a compilation, and past torch's recompile limit decoding falls
        back to eager without a word."""
        if shape in self.compiled_shapes:
            return
        self.compiled_shapes.add(shape)
        limit = recompile_limit()
        if len(self.compiled_shapes) > 1:
            log.warning("hf compile: new decode shape (batch %d, cache %d): compiling again (%d shapes so far; torch "
                        "falls back to eager after %d)", shape[0], shape[1], len(self.compiled_shapes), limit)

    def metrics(self) -> dict[str, float]:
        """``compile/shapes``: decode shapes compiled so far (with ``compile_generation``)."""
        return {"compile/shapes": float(len(self.compiled_shapes))} if self.compile_generation else {}

    def decode(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int,
               greedy: bool, max_new: int) -> tuple[Tensor, Tensor]:
        """``model.generate`` on the repeated prompts. (N, P) -> completion ids (N, T), sampler log-probs (N, T)."""
        from transformers import LogitsProcessorList

        record = _RecordLogprobs()
        # Custom processors run after transformers' own (min_new_tokens, suppress_tokens, repetition_penalty...)
        # and, with the neutral config above, nothing runs after them: the recorder sees the final distribution.
        processors = [] if greedy else [_Warp(self.temperature, self.top_k, self.top_p), record]
        n = prompt_ids.size(0)
        cache_kw = {}
        if self.compile_generation:  # fixed shapes: rows padded to a batch bucket, one cache length
            prompt_ids, prompt_mask = pad_rows(prompt_ids, batch_bucket(n)), pad_rows(prompt_mask, batch_bucket(n))
            cache_kw = {cache_kwarg(model): self._static_cache(model, prompt_ids.size(0), prompt_ids.size(1) + max_new)}
        with neutral_generation_config(model):
            out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                 generation_config=self._generation_config(greedy, max_new),
                                 logits_processor=LogitsProcessorList(processors), **cache_kw)
        out = out[:n]
        if not greedy and record.steps:
            record.steps = [step[:n] for step in record.steps]
            record.pending = None if record.pending is None else record.pending[:n]
        completion = out[:, prompt_ids.size(1):]
        if greedy:
            return completion, torch.zeros(completion.shape, dtype=torch.float32, device=completion.device)
        return completion, record.logprobs(completion)


# --- vLLM ------------------------------------------------------------------------------------------------

# Our generation_kwargs names (transformers' GenerationConfig names, the ones compact and hf take) -> vLLM
# SamplingParams names. vLLM-native names pass through as they are. Anything else is an error that says so.
VLLM_GENERATION_KWARGS = {
    "min_new_tokens": "min_tokens",
    "repetition_penalty": "repetition_penalty",
    "suppress_tokens": "logit_bias",  # {id: -100}: vLLM clamps biases to +-100, i.e. probability x e^-100
    "stop_strings": "stop",
}
VLLM_NATIVE_KWARGS = ("min_tokens", "stop", "stop_token_ids", "bad_words", "logit_bias", "allowed_token_ids",
                      "presence_penalty", "frequency_penalty", "ignore_eos", "include_stop_str_in_output",
                      "skip_special_tokens", "spaces_between_special_tokens")
# Options that are our own config keys, and options that would change the distribution away from what the loss
# scores (min_p, typical_p) or the batch layout (n, max_tokens, seed, logprobs).
_VLLM_REFUSED = {"temperature": "--temperature", "top_k": "--top_k", "top_p": "--top_p",
                 "max_new_tokens": "--max_completion_length", "max_tokens": "--max_completion_length",
                 "n": "--num_generations", "seed": "--seed"}


def vllm_sampling_kwargs(generation_kwargs: dict, temperature: float, top_k: int, top_p: float, max_new: int,
                         eos_ids: list[int], greedy: bool = False) -> dict:
    """``SamplingParams`` keyword arguments for one rollout: our options mapped to vLLM's names
    (:data:`VLLM_GENERATION_KWARGS`), the sampled tokens' processed log-probs requested (``logprobs=0``).

    Raises:
        ValueError: one line naming a ``generation_kwargs`` key vLLM has no equivalent for, and what to do.
    """
    out: dict = {"n": 1, "max_tokens": max_new, "temperature": 0.0 if greedy else temperature,
                 "top_p": 1.0 if greedy else top_p, "top_k": top_k if (top_k > 0 and not greedy) else -1,
                 "min_p": 0.0, "repetition_penalty": 1.0, "stop_token_ids": list(eos_ids), "logprobs": 0}
    for key, value in generation_kwargs.items():
        if key in _VLLM_REFUSED:
            raise ValueError(f"generation_kwargs: {key} is set by {_VLLM_REFUSED[key]}, not in generation_kwargs")
        name = VLLM_GENERATION_KWARGS.get(key, key if key in VLLM_NATIVE_KWARGS else None)
        if name is None:
            known = ", ".join(sorted(set(VLLM_GENERATION_KWARGS) | set(VLLM_NATIVE_KWARGS)))
            raise ValueError(f"generation_kwargs: {key!r} has no vLLM equivalent for rollout_backend vllm; known: "
                             f"{known}")
        if key == "suppress_tokens":
            value = {**out.get("logit_bias", {}), **{int(t): -100.0 for t in value}}
        elif name == "logit_bias":
            value = {**out.get("logit_bias", {}), **{int(t): float(b) for t, b in value.items()}}
        out[name] = value
    return out


def vllm_launch_env(process_index: int, local_process_index: int, num_processes: int,
                    environ: dict | None = None) -> dict[str, str]:
    """The variables vLLM's ``external_launcher`` needs, as TRL's colocate mode sets them: RANK, LOCAL_RANK,
    WORLD_SIZE, and MASTER_ADDR / MASTER_PORT unless already set (localhost, a free port). -> updates to apply."""
    environ = os.environ if environ is None else environ
    env = {"RANK": str(process_index), "LOCAL_RANK": str(local_process_index), "WORLD_SIZE": str(num_processes),
           "MASTER_ADDR": environ.get("MASTER_ADDR") or "localhost"}
    port = str(environ.get("MASTER_PORT", "")).strip().lower()
    env["MASTER_PORT"] = port if port not in ("", "0", "auto") else str(_free_port())
    return env


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def vllm_weights(model: PreTrainedModel) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) pairs of the policy under the plain model's parameter names, for ``load_weights``.

    A peft LoRA model yields each adapted weight as a new tensor ``W + scale * B @ A`` computed in float32 and cast
    to W's dtype; the base weights are never touched (no in-place merge / unmerge, whose bf16 rounding would drift
    the frozen base, and with it the KL reference, a little every step). Other weights are yielded as they are.
    """
    if not hasattr(model, "get_base_model"):
        yield from ((name, p.detach()) for name, p in model.named_parameters())
        return
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    lora_modules = {name: m for name, m in inner.named_modules() if isinstance(m, LoraLayer)}
    for name, module in lora_modules.items():
        if any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters):
            raise ValueError(f"rollout_backend vllm: DoRA adapters (module {name}) are not supported; use plain LoRA")
    for name, param in inner.named_parameters():
        if ".lora_" in name or "lora_magnitude" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base_layer") and owner[: -len(".base_layer")] in lora_modules:
            module = lora_modules[owner[: -len(".base_layer")]]
            plain = owner[: -len(".base_layer")] + "." + leaf
            yield plain, (lora_merged_weight(module, param) if leaf == "weight" else param.detach())
        else:
            yield name, param.detach()


def lora_merged_weight(module: torch.nn.Module, weight: Tensor) -> Tensor:
    """``W + sum_a scale_a * B_a @ A_a`` over the active adapters of a peft LoRA linear layer, as a new tensor in
    W's dtype (the sum in float32). ``weight`` (out, in) is the base layer's weight, which is left unchanged."""
    merged = weight.detach().float().clone()
    for adapter in module.active_adapters:
        if adapter not in module.lora_A:
            continue
        a = module.lora_A[adapter].weight.detach().float()  # (r, in)
        b = module.lora_B[adapter].weight.detach().float()  # (out, r)
        delta = (b @ a) * module.scaling[adapter]  # (out, in)
        merged += delta.T if getattr(module, "fan_in_fan_out", False) else delta
    return merged.to(weight.dtype)


@register_backend("vllm")
class VLLMBackend(_Backend):
    """vLLM colocated with training on each process's GPU, the way TRL's colocate mode runs it.

    Needs the ``vllm`` extra (``pip install 'grpo-zero[vllm]'``) and a CUDA GPU. Each process runs its own engine
    with ``distributed_executor_backend="external_launcher"`` (:func:`vllm_launch_env` sets the variables it
    reads) and its own seed (``seed + rank``: ranks sample different completions for their different prompts).
    Weights are pushed before the first rollout (so a run that starts from a checkpoint or resumes samples the
    weights it trains) and after every update; a LoRA policy is pushed as merged tensors computed apart from the
    base (:func:`vllm_weights`). With ``enable_sleep_mode`` the engine releases its weights and KV cache
    (``sleep(level=2)``) between rollouts, so the update gets the GPU memory back. Prompts are sent as token ids,
    so vLLM sees exactly the prompt the policy is trained on. The sampled tokens' log-probs (after temperature,
    top-k / top-p: ``logprobs_mode="processed_logprobs"``) become ``sampler_logprobs``.
    ``generation_kwargs`` are mapped to vLLM's names by :func:`vllm_sampling_kwargs`.
    """

    def __init__(self, *args, model_name_or_path: str, gpu_memory_utilization: float = 0.3, max_model_len: int | None = None,
                 seed: int = 0, enable_sleep_mode: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.decode_dtype = None  # vLLM holds its own (bf16) weights: no decode copy of the policy
        vllm_sampling_kwargs(self.generation_kwargs, self.temperature, self.top_k, self.top_p, 1, self.eos_ids)  # fail now
        try:
            from vllm import LLM
        except ImportError:
            raise RuntimeError("rollout_backend 'vllm' needs vLLM: pip install 'grpo-zero[vllm]' (CUDA GPU required), "
                               "or use rollout_backend: compact") from None
        from accelerate import PartialState

        state = PartialState()
        os.environ.update(vllm_launch_env(state.process_index, state.local_process_index, state.num_processes))
        self.enable_sleep_mode = enable_sleep_mode
        self.llm = LLM(model=model_name_or_path, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, seed=seed + state.process_index,
                       distributed_executor_backend="external_launcher", enable_prefix_caching=True,
                       enable_sleep_mode=enable_sleep_mode, logprobs_mode="processed_logprobs",
                       max_num_batched_tokens=4096)  # TRL's value: vLLM's profiler misjudges memory with its default
        self.weights_stale = True  # the engine holds the checkpoint from disk, not (yet) the policy being trained
        if enable_sleep_mode:
            self.llm.sleep(level=2)  # level 2 drops the weights: the first rollout pushes them

    def mark_stale(self) -> None:
        """The policy's weights changed outside an update (a resumed checkpoint): push them before the next rollout."""
        self.weights_stale = True

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Load the current policy weights into the colocated engine (merged LoRA tensors, base untouched)."""
        if self.enable_sleep_mode:
            self.llm.wake_up(tags=["weights"])
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in vllm_weights(model):
            engine_model.load_weights([(name, tensor)])  # one at a time: never a second full copy in memory
        self.llm.reset_prefix_cache()
        self.weights_stale = False

    def decode(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int,
               greedy: bool, max_new: int) -> tuple[Tensor, Tensor]:
        """Sample with vLLM from the unpadded prompt ids. (N, P) -> completion ids (N, max_new) and the sampler's
        log-probs (N, max_new) float32 (NaN where vLLM gave none)."""
        from vllm import SamplingParams

        if self.weights_stale:
            self.sync_weights(model)
        params = SamplingParams(**vllm_sampling_kwargs(self.generation_kwargs, self.temperature, self.top_k,
                                                       self.top_p, max_new, self.eos_ids, greedy))
        requests = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(prompt_ids, prompt_mask)]
        if self.enable_sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        try:
            outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        finally:
            if self.enable_sleep_mode:
                self.llm.sleep(level=2)  # weights and KV cache freed for the update; pushed again after it
                self.weights_stale = True
        return vllm_outputs_to_tensors(outputs, max_new, self.tokenizer.pad_token_id, greedy, prompt_ids.device)


def vllm_outputs_to_tensors(outputs: list, max_new: int, pad_token_id: int, greedy: bool,
                            device: torch.device) -> tuple[Tensor, Tensor]:
    """vLLM ``RequestOutput`` list -> completion ids (N, max_new) and sampled-token log-probs (N, max_new) float32
    (0 for greedy, NaN where vLLM reported none; padding is zeroed by ``finish``)."""
    n = len(outputs)
    completion = torch.full((n, max_new), pad_token_id, dtype=torch.long)
    logp = torch.zeros((n, max_new), dtype=torch.float32)
    for i, o in enumerate(outputs):
        out = o.outputs[0]
        ids = list(out.token_ids)[:max_new]
        completion[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if greedy:
            continue
        for t, (tok, entry) in enumerate(zip(ids, out.logprobs or [])):
            value = entry[tok].logprob if entry and tok in entry else float("nan")
            logp[i, t] = value
        if not out.logprobs:
            logp[i, : len(ids)] = float("nan")
    return completion.to(device), logp.to(device)


def make_backend(name: str, tokenizer: PreTrainedTokenizerBase, **kwargs) -> _Backend:
    """Build the rollout backend registered as ``name`` (``compact``, ``hf`` or ``vllm``)."""
    if name not in ROLLOUT_BACKENDS:
        raise ValueError(f"unknown rollout_backend {name!r}; known: {', '.join(sorted(ROLLOUT_BACKENDS))}")
    cls = ROLLOUT_BACKENDS[name]
    own = {"hf": ("compile_generation",),
           "vllm": ("model_name_or_path", "gpu_memory_utilization", "max_model_len", "seed", "enable_sleep_mode")}
    common = ("max_completion_length", "temperature", "top_p", "top_k", "generation_kwargs", "prompt_bucket",
              "decode_dtype")
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
