"""The vllm backend's parts that do not need vLLM or a GPU: option mapping, launcher environment, LoRA merged
tensors, and the engine protocol (weight push at start-up / resume / after updates, sleep mode, per-rank seeds,
sampler log-probs) against a stand-in ``vllm`` module that records what it is asked to do."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.rollout import (
    VLLM_GENERATION_KWARGS,
    lora_merged_weight,
    make_backend,
    vllm_launch_env,
    vllm_outputs_to_tensors,
    vllm_sampling_kwargs,
    vllm_weights,
)

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
EOS = [2]


# --- generation_kwargs -> SamplingParams -------------------------------------------------------------------


def test_our_documented_examples_map_to_vllm_names():
    kw = vllm_sampling_kwargs({"min_new_tokens": 16, "suppress_tokens": [7, 9], "repetition_penalty": 1.1}, 0.9, 0,
                              1.0, 64, EOS)
    assert kw["min_tokens"] == 16 and "min_new_tokens" not in kw
    assert kw["logit_bias"] == {7: -100.0, 9: -100.0} and "suppress_tokens" not in kw
    assert kw["repetition_penalty"] == 1.1
    assert kw["temperature"] == 0.9 and kw["top_k"] == -1 and kw["top_p"] == 1.0 and kw["min_p"] == 0.0
    assert kw["max_tokens"] == 64 and kw["stop_token_ids"] == EOS and kw["n"] == 1 and kw["logprobs"] == 0


def test_sampling_options_and_greedy():
    kw = vllm_sampling_kwargs({}, 0.7, 20, 0.9, 8, EOS)
    assert (kw["temperature"], kw["top_k"], kw["top_p"]) == (0.7, 20, 0.9)
    greedy = vllm_sampling_kwargs({}, 0.7, 20, 0.9, 8, EOS, greedy=True)
    assert (greedy["temperature"], greedy["top_k"], greedy["top_p"]) == (0.0, -1, 1.0)
    native = vllm_sampling_kwargs({"stop": ["\n\n"], "presence_penalty": 0.5, "logit_bias": {3: 2.0},
                                   "suppress_tokens": [4]}, 1.0, 0, 1.0, 8, EOS)
    assert native["stop"] == ["\n\n"] and native["presence_penalty"] == 0.5
    assert native["logit_bias"] == {3: 2.0, 4: -100.0}


@pytest.mark.parametrize("key, message", [
    ("no_repeat_ngram_size", r"'no_repeat_ngram_size' has no vLLM equivalent for rollout_backend vllm; known: .*min_new_tokens"),
    ("top_k", "top_k is set by --top_k"), ("max_new_tokens", "--max_completion_length"), ("seed", "--seed"),
])
def test_unknown_or_owned_keys_are_one_line_errors(key, message):
    with pytest.raises(ValueError, match=message) as err:
        vllm_sampling_kwargs({key: 3}, 1.0, 0, 1.0, 8, EOS)
    assert "\n" not in str(err.value)


def test_mapping_table_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "rollout.md").read_text()
    for ours, theirs in VLLM_GENERATION_KWARGS.items():
        assert f"`{ours}`" in doc and f"`{theirs}`" in doc, ours


# --- launcher environment ------------------------------------------------------------------------------------


def test_launch_env_as_trl_sets_it():
    env = vllm_launch_env(3, 1, 4, environ={})
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("3", "1", "4", "localhost")
    assert 0 < int(env["MASTER_PORT"]) < 65536
    kept = vllm_launch_env(0, 0, 2, environ={"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert (kept["MASTER_ADDR"], kept["MASTER_PORT"]) == ("10.0.0.1", "29500")
    assert vllm_launch_env(0, 0, 1, environ={"MASTER_PORT": "auto"})["MASTER_PORT"] != "auto"


# --- LoRA: merged tensors computed apart from the base ---------------------------------------------------------


def _lora(dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(TINY, dtype=dtype)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # B != 0
    return get_peft_model(base, cfg)


def test_lora_weights_are_the_merged_model_and_leave_the_base_alone():
    import copy

    model = _lora(torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pushed = dict(vllm_weights(model))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing merged in place
    merged = copy.deepcopy(model).merge_and_unload()
    want = dict(merged.named_parameters())
    assert set(pushed) == set(want)  # the plain model's names, no lora_ / base_layer
    for name, value in want.items():
        assert torch.allclose(pushed[name], value, atol=1e-6), name
    base_weights = {n.replace(".base_layer", ""): p for n, p in model.get_base_model().named_parameters()
                    if ".base_layer." in n}
    assert base_weights and all(not torch.equal(pushed[n], w) for n, w in base_weights.items())  # adapter applied


def test_bf16_merge_unmerge_drifts_but_ours_does_not():
    """peft's in-place merge/unmerge in bf16 moves the frozen base by rounding; computing apart does not."""
    model = _lora(torch.bfloat16)
    _name, module = next((n, m) for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
    w0 = module.base_layer.weight.detach().clone()
    merged = lora_merged_weight(module, module.base_layer.weight)
    assert torch.equal(module.base_layer.weight, w0)
    a, b = module.lora_A["default"].weight.float(), module.lora_B["default"].weight.float()
    want = (w0.float() + (b @ a) * module.scaling["default"]).to(torch.bfloat16)
    assert torch.equal(merged, want)
    for _ in range(3):
        model.merge_adapter()
        model.unmerge_adapter()
    assert not torch.equal(module.base_layer.weight, w0)  # the drift the backend avoids


# --- the engine protocol, with a stand-in vllm module --------------------------------------------------------


class _Logprob:
    def __init__(self, value: float):
        self.logprob = value


class FakeLLM:
    """Records the calls a vLLM ``LLM`` would get; generates token 5 then EOS, log-prob -0.25 each."""

    instances: ClassVar[list[FakeLLM]] = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.loaded = kwargs, [], {}
        runner = types.SimpleNamespace(model=self)
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))
        FakeLLM.instances.append(self)

    def load_weights(self, pairs):
        for name, tensor in pairs:
            self.loaded[name] = tensor.clone()
        self.calls.append("load") if not self.calls or self.calls[-1] != "load" else None

    def sleep(self, level: int):
        self.calls.append(f"sleep{level}")

    def wake_up(self, tags: list[str]):
        self.calls.append("wake:" + ",".join(tags))

    def reset_prefix_cache(self):
        self.calls.append("reset")

    def generate(self, requests, sampling_params, use_tqdm=False):
        self.calls.append("generate")
        self.last_params, self.last_requests = sampling_params.kwargs, requests
        out = types.SimpleNamespace(token_ids=[5, EOS[0]], logprobs=[{5: _Logprob(-0.25)}, {EOS[0]: _Logprob(-0.5)}])
        return [types.SimpleNamespace(outputs=[out]) for _ in requests]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = type("SamplingParams", (), {"__init__": lambda self, **kw: setattr(self, "kwargs", kw)})
    monkeypatch.setitem(sys.modules, "vllm", module)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    FakeLLM.instances.clear()
    return module


def test_engine_protocol(fake_vllm):
    import os

    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY)
    backend = make_backend("vllm", tok, max_completion_length=8, temperature=0.8, model_name_or_path=str(TINY), seed=7,
                           generation_kwargs={"min_new_tokens": 1})
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["seed"] == 7  # seed + rank (rank 0 here)
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert os.environ["RANK"] == "0" and os.environ["WORLD_SIZE"] == "1" and os.environ["MASTER_ADDR"] == "localhost"
    assert llm.calls == ["sleep2"]
    batch = backend.generate(model, ["Q: 1+2=?\nA:"], 2)
    # the first rollout pushes the policy's weights (start-up / resume), then samples, then sleeps for the update
    assert llm.calls[1:] == ["wake:weights", "load", "reset", "wake:kv_cache", "generate", "sleep2"]
    assert set(llm.loaded) == {n for n, _ in model.named_parameters()}
    assert llm.last_params["min_tokens"] == 1 and llm.last_params["temperature"] == 0.8
    assert batch.completion_ids.tolist() == [[5, EOS[0]]] * 2
    assert torch.allclose(batch.sampler_logprobs, torch.tensor([[-0.25, -0.5]] * 2))
    # after an update the trainer pushes; a second rollout then needs no push of its own
    llm.calls.clear()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    backend.sync_weights(model)
    backend.weights_stale = False  # as after the trainer's push (sleep mode re-marks it stale after each rollout)
    backend.generate(model, ["Q: 1+2=?\nA:"], 1)
    assert llm.calls == ["wake:weights", "load", "reset", "wake:kv_cache", "generate", "sleep2"]
    name, p = next(model.named_parameters())
    assert torch.equal(llm.loaded[name], p.detach())
    # resume: mark_stale makes the next rollout push again, even without sleep mode
    backend.enable_sleep_mode = False
    llm.calls.clear()
    backend.mark_stale()
    backend.generate(model, ["Q: 1+2=?\nA:"], 1)
    assert llm.calls == ["load", "reset", "generate"]


def test_per_rank_seed_and_env(fake_vllm, monkeypatch):
    from accelerate import PartialState

    monkeypatch.setattr(PartialState, "process_index", property(lambda self: 3), raising=False)
    monkeypatch.setattr(PartialState, "local_process_index", property(lambda self: 1), raising=False)
    monkeypatch.setattr(PartialState, "num_processes", property(lambda self: 4), raising=False)
    make_backend("vllm", AutoTokenizer.from_pretrained(TINY), max_completion_length=8, model_name_or_path=str(TINY),
                 seed=7)
    import os

    assert FakeLLM.instances[-1].kwargs["seed"] == 10
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("3", "1", "4")


def test_bad_generation_kwargs_fail_before_the_engine_starts(fake_vllm):
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        make_backend("vllm", AutoTokenizer.from_pretrained(TINY), max_completion_length=8,
                     model_name_or_path=str(TINY), generation_kwargs={"no_repeat_ngram_size": 3})
    assert FakeLLM.instances == []


def test_outputs_without_logprobs_are_nan():
    out = types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[4, 2], logprobs=None)])
    ids, logp = vllm_outputs_to_tensors([out], 3, 0, greedy=False, device=torch.device("cpu"))
    assert ids.tolist() == [[4, 2, 0]] and torch.isnan(logp[0, :2]).all()


def test_tool_rounds_through_the_engine_protocol(fake_vllm):
    """With a toolbox the stand-in engine runs one round per turn between one wake and one sleep: token 5 ends a
    call the first time (its output is appended as ids, masked, log-prob 0), the second time the limit is reached."""
    from tool_doubles import FakeCall, FakeToolbox

    class ThinkEnds(FakeToolbox):
        def could_end(self, token_text):
            return token_text == "</think>"

        def call_end(self, text):
            return text.endswith("</think>")

        def run_many(self, calls):
            return [FakeCall(name, args, "42") for name, args in calls]

    tok = AutoTokenizer.from_pretrained(TINY)
    backend = make_backend("vllm", tok, max_completion_length=12, model_name_or_path=str(TINY),
                           toolbox=ThinkEnds(max_tool_calls=1))
    llm = FakeLLM.instances[-1]
    batch = backend.generate(AutoModelForCausalLM.from_pretrained(TINY), ["Q: 1+2=?\nA:"], 2)
    assert llm.calls[1:] == ["wake:weights", "load", "reset", "wake:kv_cache", "generate", "generate", "sleep2"]
    out = tok("\n42\n", add_special_tokens=False)["input_ids"]
    assert batch.completion_ids.tolist() == [[5, *out, 5, EOS[0]]] * 2
    assert batch.tool_mask.tolist() == [[0, *[1] * len(out), 0, 0]] * 2
    assert batch.sampler_logprobs.tolist() == [[-0.25, *[0.0] * len(out), -0.25, -0.5]] * 2
    assert llm.last_requests[0]["prompt_token_ids"][-len(out) - 1:] == [5, *out]  # resumed from its ids
