"""Rollout basics: the sampling math the backends share, the public :class:`Backend` base class and the registry
(each backend registers under its name with the options it takes). Backends return a
:class:`grpo.batch.RolloutBatch`. Notation: N = B x G sequences (a prompt's G completions contiguous), P = prompt tokens
(left-padded), T = completion tokens (right-padded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpo.batch import RolloutBatch, pad_to
from grpo.logprobs import warp_logits
from grpo.rollout.packed import packed_copy, prepacking_available, refresh
from grpo.rollout.turns import ToolboxLike, ToolTurns, could_end_table

if TYPE_CHECKING:
    from grpo.config import GRPOConfig

ROLLOUT_BACKENDS: dict[str, type[Backend]] = {}
# The options every backend takes (keyword arguments of Backend.__init__); a backend adds its own in OPTIONS.
COMMON_OPTIONS = ("max_completion_length", "temperature", "top_p", "top_k", "generation_kwargs", "prompt_bucket",
                  "decode_dtype", "cpu_prepacked_decode", "toolbox")


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    """Register a rollout backend class under ``name`` (its ``OPTIONS`` name the keyword arguments it adds)."""

    def wrap(cls: type[Backend]) -> type[Backend]:
        ROLLOUT_BACKENDS[name] = cls
        return cls

    return wrap


def completion_mask_from_ids(completion_ids: Tensor, eos_token_id: int | list[int],
                             tool_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mask up to and including the first EOS the model wrote (an EOS id inside tool output, ``tool_mask`` (N, T)
    1, ends nothing). completion_ids (N, T) -> mask (N, T) long, truncated (N,) bool."""
    eos_ids = torch.tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos_ids)  # (N, T)
    if tool_mask is not None:
        is_eos = is_eos & (tool_mask.to(is_eos.device) == 0)
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


class Backend:
    """The rollout backend interface and its shared parts: tokenising prompts, the decode copy, building the
    RolloutBatch. A backend subclasses it, implements :meth:`decode`, lists its own keyword options in ``OPTIONS``
    and registers with :func:`register_backend`."""

    OPTIONS: tuple[str, ...] = ()

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_completion_length: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, generation_kwargs: dict | None = None, prompt_bucket: int = 0,
                 decode_dtype: torch.dtype | None = None, cpu_prepacked_decode: bool = False,
                 toolbox: ToolboxLike | None = None):
        self.tokenizer = tokenizer
        self.toolbox = toolbox  # tool turns (grpo/rollout/turns.py); None = one uninterrupted sample per row
        self._could_end: Tensor | None = None  # which token ids can end a tool call, built on first use
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
            ids, mask = pad_to(ids, width, self.tokenizer.pad_token_id, left=True), pad_to(mask, width, 0, left=True)
        return (ids.repeat_interleave(num_generations, dim=0).to(device),
                mask.repeat_interleave(num_generations, dim=0).to(device))

    def finish(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, prompts: list[str],
               num_generations: int, sampler_logprobs: Tensor | None = None,
               turns: ToolTurns | None = None) -> RolloutBatch:
        """Mask after the first EOS, decode, and package. completion_ids (N, T), sampler_logprobs (N, T) or None,
        ``turns``: the tool turns (tool mask, calls) when tools are on -> RolloutBatch. With tools the decoded
        text is the whole transcript: model text and tool outputs, in order."""
        tok = self.tokenizer
        tool_mask = None if turns is None else turns.tool_mask[:, : completion_ids.size(1)].to(completion_ids.device)
        mask, truncated = completion_mask_from_ids(completion_ids, self.eos_ids, tool_mask)
        completion_ids = completion_ids.masked_fill(mask == 0, tok.pad_token_id)
        width = int(mask.sum(dim=1).max().item()) if mask.numel() else 0
        completion_ids, mask = completion_ids[:, :width], mask[:, :width]  # no all-padding columns
        if sampler_logprobs is not None:
            sampler_logprobs = sampler_logprobs[:, :width].float().masked_fill(mask == 0, 0.0)
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        batch = RolloutBatch(prompt_ids, prompt_mask, completion_ids, mask, truncated,
                             [p for p in prompts for _ in range(num_generations)], texts, sampler_logprobs)
        if turns is not None:
            batch.tool_mask = tool_mask[:, :width] * mask
            batch.tool_calls = turns.calls
            if sampler_logprobs is not None:
                batch.sampler_logprobs = sampler_logprobs.masked_fill(batch.tool_mask.bool(), 0.0)
        return batch

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
        turns = None
        if self.toolbox is not None:
            if self._could_end is None:
                self._could_end = could_end_table(self.toolbox, self.tokenizer, self.eos_ids)
            turns = ToolTurns(self.toolbox, self.tokenizer, prompt_ids.size(0), max_new, self.eos_ids, self._could_end)
        try:
            completion_ids, sampler_logprobs = self.decode(model, prompt_ids, prompt_mask, num_generations, greedy,
                                                           max_new, turns=turns)
        finally:
            model.train(was_training)
        return self.finish(prompt_ids, prompt_mask, completion_ids, prompts, num_generations, sampler_logprobs, turns)

    def decode(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int,
               greedy: bool, max_new: int, turns: ToolTurns | None = None) -> tuple[Tensor, Tensor | None]:
        """The backend's sampling loop. prompt_ids, prompt_mask (N, P), G copies of each prompt adjacent ->
        completion ids (N, T <= max_new) and the sampler's log-probs of those tokens (N, T) float32 (or None);
        anything after an EOS is ignored by :meth:`finish`. With ``turns`` (tools on) the loop stops a row at a
        tool call, appends the call's output ids (recorded in ``turns``) and goes on (grpo/rollout/turns.py)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds for the run: the toolbox's worker processes (idempotent)."""
        if self.toolbox is not None:
            self.toolbox.close()



def make_backend(name: str, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> Backend:
    """Build the rollout backend registered as ``name`` (``compact``, ``hf`` or ``vllm``) with the options it takes
    (:data:`COMMON_OPTIONS` and its own ``OPTIONS``); options meant for other backends are left out."""
    if name not in ROLLOUT_BACKENDS:
        raise ValueError(f"unknown rollout_backend {name!r}; known: {', '.join(sorted(ROLLOUT_BACKENDS))}")
    cls = ROLLOUT_BACKENDS[name]
    return cls(tokenizer, **{k: v for k, v in kwargs.items() if k in COMMON_OPTIONS or k in cls.OPTIONS})


def backend_for_run(cfg: GRPOConfig, tokenizer: PreTrainedTokenizerBase, model_path: str,
                    decode_dtype: torch.dtype | None = None) -> Backend:
    """The rollout backend a run's config asks for (``model_path``: the resolved model folder, which vLLM loads
    itself; ``decode_dtype``: the decode copy's dtype, grpo/precision.py), with the run's toolbox when ``tools`` is
    set (built here, once per run; ``Backend.close`` stops it).

    Raises:
        ConfigError: a tool that cannot be built (unknown name, a plug-in that does not import).
    """
    return make_backend(
        cfg.rollout_backend, tokenizer, max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
        top_p=cfg.top_p, top_k=cfg.top_k, generation_kwargs=cfg.generation_kwargs, prompt_bucket=cfg.prompt_bucket,
        compile_generation=cfg.compile_generation, model_name_or_path=model_path,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, seed=cfg.seed,  # vllm adds the rank
        enable_sleep_mode=cfg.vllm_enable_sleep_mode, decode_dtype=decode_dtype,
        cpu_prepacked_decode=cfg.cpu_prepacked_decode, toolbox=toolbox_for_run(cfg, tokenizer))


def toolbox_for_run(cfg: GRPOConfig, tokenizer: PreTrainedTokenizerBase) -> ToolboxLike | None:
    """The run's ``grpo.tools`` toolbox from its ``tools*`` keys, or None when ``tools`` is empty.

    Raises:
        ConfigError: one line naming a tool that cannot be built and the fix.
    """
    if not cfg.tools:
        return None
    from grpo.errors import ConfigError
    from grpo.tools import build_toolbox

    try:
        return build_toolbox(list(cfg.tools), syntax=cfg.tool_syntax, max_tool_calls=cfg.max_tool_calls,
                             timeout_s=cfg.tool_timeout_s, memory_mb=cfg.tool_memory_mb,
                             max_output_chars=cfg.tool_max_output_chars, workers=cfg.tool_workers, tokenizer=tokenizer)
    except ValueError as e:
        raise ConfigError(str(e)) from None
