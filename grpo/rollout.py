"""Rollout backends: prompts in, a typed batch of sampled completions out.

Backends are registered by name (``ROLLOUT_BACKENDS``); the trainer only sees :class:`RolloutBatch`.
Notation: N = B x G sequences (a prompt's G completions contiguous), P = prompt tokens (left-padded),
T = completion tokens (right-padded).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from grpo.policy import cache_kwarg

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
                 top_p: float = 1.0, top_k: int = 0, generation_kwargs: dict | None = None, prompt_bucket: int = 0):
        self.tokenizer = tokenizer
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
        """Push updated policy weights to the engine (no-op when the engine *is* the training model)."""

    @torch.no_grad()
    def generate(self, model: PreTrainedModel, prompts: list[str], num_generations: int = 1, greedy: bool = False,
                 max_new_tokens: int | None = None) -> RolloutBatch:
        """Sample ``num_generations`` completions per prompt (greedy: the argmax). B prompts -> RolloutBatch of
        N = B x G, whatever the backend."""
        max_new = max_new_tokens or self.max_completion_length
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

    def _generation_config(self, greedy: bool, max_new_tokens: int) -> GenerationConfig:
        """The full GenerationConfig: every field that shapes sampling is set (none left for transformers to fill)."""
        tok = self.tokenizer
        # temperature 1, top_k 0, top_p 1: transformers adds no warper of its own; _Warp does ours (see decode).
        opts: dict = dict(do_sample=not greedy, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                          num_beams=1, renormalize_logits=False)
        if self.compile_generation:
            from transformers import CompileConfig

            opts.update(cache_implementation="static", compile_config=CompileConfig(fullgraph=True, mode="reduce-overhead"))
        return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, **{**opts, **self.generation_kwargs})

    def decode(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int,
               greedy: bool, max_new: int) -> tuple[Tensor, Tensor]:
        """``model.generate`` on the repeated prompts. (N, P) -> completion ids (N, T), sampler log-probs (N, T)."""
        from transformers import LogitsProcessorList

        record = _RecordLogprobs()
        # Custom processors run after transformers' own (min_new_tokens, suppress_tokens, repetition_penalty...)
        # and, with the neutral config above, nothing runs after them: the recorder sees the final distribution.
        processors = [] if greedy else [_Warp(self.temperature, self.top_k, self.top_p), record]
        with neutral_generation_config(model):
            out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                 generation_config=self._generation_config(greedy, max_new),
                                 logits_processor=LogitsProcessorList(processors))
        completion = out[:, prompt_ids.size(1):]
        if greedy:
            return completion, torch.zeros(completion.shape, dtype=torch.float32, device=completion.device)
        return completion, record.logprobs(completion)


@register_backend("vllm")
class VLLMBackend(_Backend):
    """vLLM colocated with training on each process's GPU; weights pushed after every update.

    Needs the ``vllm`` extra (``pip install 'grpo-zero[vllm]'``) and a CUDA GPU. Prompts are sent as token ids
    so vLLM sees exactly the prompt the policy is trained on.
    """

    def __init__(self, *args, model_name_or_path: str, gpu_memory_utilization: float = 0.3, max_model_len: int | None = None,
                 seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            from vllm import LLM
        except ImportError:
            raise RuntimeError("rollout_backend 'vllm' needs vLLM: pip install 'grpo-zero[vllm]' (CUDA GPU required), "
                               "or use rollout_backend: compact") from None
        self.llm = LLM(model=model_name_or_path, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, seed=seed, distributed_executor_backend="external_launcher",
                       enable_prefix_caching=True)

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Load the current policy weights into the colocated engine (the way TRL's colocate mode does)."""
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        if hasattr(model, "merge_adapter"):  # peft: push merged weights, then restore the adapter
            model.merge_adapter()
            params = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                      for k, v in model.state_dict().items() if "lora_" not in k}
            engine_model.load_weights(params.items())
            model.unmerge_adapter()
        else:
            engine_model.load_weights(model.state_dict().items())
        self.llm.reset_prefix_cache()

    def decode(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int,
               greedy: bool, max_new: int) -> tuple[Tensor, Tensor | None]:
        """Sample with vLLM from the unpadded prompt ids. (N, P) -> completion ids (N, max_new)."""
        from vllm import SamplingParams

        params = SamplingParams(n=1, max_tokens=max_new, temperature=0.0 if greedy else self.temperature,
                                top_p=self.top_p, top_k=self.top_k if self.top_k > 0 else -1,
                                stop_token_ids=self.eos_ids, **self.generation_kwargs)
        requests = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(prompt_ids, prompt_mask)]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        completion = torch.full((len(requests), max_new), self.tokenizer.pad_token_id, dtype=torch.long)
        for i, o in enumerate(outputs):
            ids = list(o.outputs[0].token_ids)[:max_new]
            completion[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return completion.to(prompt_ids.device), None


def make_backend(name: str, tokenizer: PreTrainedTokenizerBase, **kwargs) -> _Backend:
    """Build the rollout backend registered as ``name`` (``compact``, ``hf`` or ``vllm``)."""
    if name not in ROLLOUT_BACKENDS:
        raise ValueError(f"unknown rollout_backend {name!r}; known: {', '.join(sorted(ROLLOUT_BACKENDS))}")
    cls = ROLLOUT_BACKENDS[name]
    own = {"hf": ("compile_generation",), "vllm": ("model_name_or_path", "gpu_memory_utilization", "max_model_len", "seed")}
    common = ("max_completion_length", "temperature", "top_p", "top_k", "generation_kwargs", "prompt_bucket")
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
