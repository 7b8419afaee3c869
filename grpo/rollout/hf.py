"""The ``hf`` backend: ``model.generate`` with explicitly neutral sampling, optionally compiled with fixed shapes."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel

from grpo.hf_compat import cache_kwarg
from grpo.logprobs import token_logprobs, warp_logits
from grpo.rollout.base import Backend, register_backend
from grpo.rollout.turns import ToolTurns, tool_rounds

log = logging.getLogger(__name__)


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


def _stop_at_call_base() -> type:
    from transformers import StoppingCriteria

    return StoppingCriteria


class _StopAtCall(_stop_at_call_base()):
    """A stopping criterion that ends a row of ``model.generate`` once its text ends a tool call (the check runs
    only for rows whose newest token could end one)."""

    def __init__(self, start: int, checks: list, turns: ToolTurns):
        self.start, self.checks, self.turns = start, checks, turns

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        done = torch.zeros(input_ids.size(0), dtype=torch.bool)
        candidates = self.turns.could_end(input_ids[:, -1]).nonzero().flatten().tolist()
        for j in candidates:
            if j < len(self.checks):  # rows past len(checks) pad a compiled batch bucket
                done[j] = self.checks[j](input_ids[j, self.start:].tolist())
        return done.to(input_ids.device)


@register_backend("hf")
class HFGenerateBackend(Backend):
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

    OPTIONS = ("compile_generation",)

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
               greedy: bool, max_new: int, turns: ToolTurns | None = None) -> tuple[Tensor, Tensor]:
        """``model.generate`` on the repeated prompts. (N, P) -> completion ids (N, T), sampler log-probs (N, T).

        With ``turns`` (tools on) it generates in rounds (:func:`grpo.rollout.turns.tool_rounds`): a stopping
        criterion ends a row at its call, and the rows with a call go on from their whole sequence as ids."""
        if turns is None:
            return self._generate(model, prompt_ids, prompt_mask, greedy, max_new)

        def one_round(ids: Tensor, mask: Tensor, budget: int, checks: list) -> tuple[Tensor, Tensor, None]:
            stop = _StopAtCall(ids.size(1), checks, turns)
            return (*self._generate(model, ids, mask, greedy, budget, stop), None)

        return tool_rounds(turns, one_round, prompt_ids, prompt_mask, self.tokenizer.pad_token_id)

    def _generate(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, greedy: bool, max_new: int,
                  stop: object | None = None) -> tuple[Tensor, Tensor]:
        """One ``model.generate`` call (``stop``: an extra stopping criterion). (n, P) -> ids (n, T), log-probs."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

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
                                 logits_processor=LogitsProcessorList(processors),
                                 stopping_criteria=StoppingCriteriaList([stop] if stop is not None else []), **cache_kw)
        out = out[:n]
        if not greedy and record.steps:
            record.steps = [step[:n] for step in record.steps]
            record.pending = None if record.pending is None else record.pending[:n]
        completion = out[:, prompt_ids.size(1):]
        if greedy:
            return completion, torch.zeros(completion.shape, dtype=torch.float32, device=completion.device)
        return completion, record.logprobs(completion)
