"""The ``vllm`` backend: vLLM colocated with training on each GPU, as TRL's colocate mode runs it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor
from transformers import PreTrainedModel

from grpo.rollout.base import Backend, register_backend
from grpo.rollout.turns import SYNTAX_STOPS, ToolTurns, tool_rounds

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
class VLLMBackend(Backend):
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

    OPTIONS = ("model_name_or_path", "gpu_memory_utilization", "max_model_len", "seed", "enable_sleep_mode")

    def __init__(self, *args, model_name_or_path: str, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, seed: int = 0, enable_sleep_mode: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.decode_dtype = None  # vLLM holds its own (bf16) weights: no decode copy of the policy
        # Unknown generation_kwargs fail now, before the engine takes the GPU.
        vllm_sampling_kwargs(self.generation_kwargs, self.temperature, self.top_k, self.top_p, 1, self.eos_ids)
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
               greedy: bool, max_new: int, turns: ToolTurns | None = None) -> tuple[Tensor, Tensor]:
        """Sample with vLLM from the unpadded prompt ids. (N, P) -> completion ids (N, max_new) and the sampler's
        log-probs (N, max_new) float32 (NaN where vLLM gave none).

        With ``turns`` (tools on) it generates in rounds (:func:`grpo.rollout.turns.tool_rounds`), each row sent as
        its whole sequence of ids (prefix caching makes the resend cheap); vLLM pauses a row at the syntax's
        closing string (``SYNTAX_STOPS``) so a finished call is seen without generating past it."""
        from vllm import SamplingParams

        if self.weights_stale:
            self.sync_weights(model)
        if self.enable_sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        try:
            if turns is None:
                params = SamplingParams(**vllm_sampling_kwargs(self.generation_kwargs, self.temperature, self.top_k,
                                                               self.top_p, max_new, self.eos_ids, greedy))
                requests = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(prompt_ids, prompt_mask)]
                outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
                return vllm_outputs_to_tensors(outputs, max_new, self.tokenizer.pad_token_id, greedy, prompt_ids.device)
            return tool_rounds(turns, lambda ids, mask, budget, _checks: self._round(ids, mask, budget, greedy, turns),
                               prompt_ids, prompt_mask, self.tokenizer.pad_token_id)
        finally:
            if self.enable_sleep_mode:
                self.llm.sleep(level=2)  # weights and KV cache freed for the update; pushed again after it
                self.weights_stale = True

    def _round(self, ids: Tensor, mask: Tensor, budget: int, greedy: bool,
               turns: ToolTurns) -> tuple[Tensor, Tensor, list[int | None]]:
        """One tool round: (n, W) left-padded sequences -> new ids (n, budget), log-probs, and per row the ids it
        wrote when vLLM paused it at a syntax stop (else None)."""
        from vllm import SamplingParams

        kwargs = vllm_sampling_kwargs(self.generation_kwargs, self.temperature, self.top_k, self.top_p, budget,
                                      self.eos_ids, greedy)
        pauses = SYNTAX_STOPS.get(turns.toolbox.syntax, [])
        kwargs.update(stop=list(kwargs.get("stop") or []) + pauses, include_stop_str_in_output=True)
        requests = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask)]
        outputs = self.llm.generate(requests, sampling_params=SamplingParams(**kwargs), use_tqdm=False)
        new, logp = vllm_outputs_to_tensors(outputs, budget, self.tokenizer.pad_token_id, greedy, ids.device)
        return new, logp, [len(o.outputs[0].token_ids) if getattr(o.outputs[0], "stop_reason", None) in pauses else None
                           for o in outputs]


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
