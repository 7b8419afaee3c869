"""Tool turns in rollouts are token-exact: over random interleavings of model and tool turns (a random tiny Llama,
a test-double toolbox whose calls end at pseudo-random places and whose outputs have random lengths, some with an
EOS inside, some errors and timeouts), the ids the trainer scores are the ids the rollout produced, the loss mask
is exactly the model's tokens, and the sampler's log-probs equal the trainer's (grpo.scoring) on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tool_doubles import FakeCall, FakeToolbox
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from grpo import scoring
from grpo.batch import RolloutBatch, StepBatch
from grpo.metrics import tool_metrics
from grpo.rollout import make_backend
from grpo.trainer import loss_mask

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
PROMPTS = ["Q: 1+2=?\nA:", "Q: 30+4+5=?\nA:", "Q: 7=?\nA:"]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TINY)


def tiny_llama(tok, seed: int) -> LlamaForCausalLM:
    """A random 2-layer Llama over the tiny-base vocabulary (random weights: every token is likely)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


def replay(ids: list[int], tok, toolbox: FakeToolbox, T: int) -> tuple[list[int], list[str]]:
    """Walk a completion as the rollout should have built it, from the ids and the toolbox's rules alone: model
    tokens until the text since the last output ends a call (the first place it does), then exactly that call's
    rendered output, tokenised on its own (cut at T). -> the expected tool mask and the call arguments."""
    fresh = FakeToolbox(every=toolbox.every, max_len=toolbox.max_len, max_tool_calls=toolbox.max_tool_calls,
                        seed=toolbox.seed)
    mask, args, segment, i = [0] * len(ids), [], [], 0
    while i < len(ids):
        segment.append(ids[i])
        if ids[i] == tok.eos_token_id:
            assert i == len(ids) - 1, "the completion goes on after the model's EOS"
            break
        text = tok.decode(segment)
        if (len(args) < toolbox.max_tool_calls and i + 1 < T and fresh.could_end(tok.decode([ids[i]]))
                and fresh.call_end(text)):
            output = tok(fresh.render(fresh.run_many([("echo", text)])[0]), add_special_tokens=False)["input_ids"]
            n = min(len(output), T - i - 1)
            assert ids[i + 1: i + 1 + n] == output[:n], "tool output ids differ from the output tokenised alone"
            mask[i + 1: i + 1 + n] = [1] * n
            args.append(text)
            segment, i = [], i + 1 + n
            continue
        i += 1
    return mask, args


def check_token_exact(batch: RolloutBatch, tok, toolbox: FakeToolbox, model, T: int, G: int) -> None:
    """The three properties, on every row of ``batch``."""
    eos = tok.eos_token_id
    for r in range(len(batch.prompts)):
        n = int(batch.completion_mask[r].sum())
        assert batch.completion_mask[r, :n].all() and not batch.completion_mask[r, n:].any()
        ids = batch.completion_ids[r, :n].tolist()
        want_mask, want_args = replay(ids, tok, toolbox, T)
        assert batch.tool_mask[r, :n].tolist() == want_mask and not batch.tool_mask[r, n:].any()
        assert [c.arguments for c in batch.tool_calls[r]] == want_args
        assert len(batch.tool_calls[r]) <= toolbox.max_tool_calls
        model_eos = ids[-1] == eos and want_mask[-1] == 0
        assert bool(batch.truncated[r]) == (not model_eos) and (model_eos or n == T)
    # mask == model tokens exactly: the loss counts completion tokens minus tool tokens, nothing else
    assert torch.equal(loss_mask(batch, False), (batch.completion_mask * (1 - batch.tool_mask)).float())
    assert (batch.sampler_logprobs[batch.tool_mask.bool()] == 0).all()
    # trained ids == sampled ids: the scoring forward's input is prompt + completion ids, as they came out
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            logp, _ = scoring.completion_logprobs(model, batch, scoring.ScoringOptions(share_prompts=False), G)
    finally:
        hook.remove()
    P = int(batch.prompt_mask.sum(dim=1).max())
    width = logp.size(1)
    assert torch.equal(seen[0], torch.cat([batch.prompt_ids[:, -P:], batch.completion_ids[:, :width]], dim=1))
    # sampler log-probs == trainer log-probs on the model's tokens
    m = batch.model_mask[:, :width].bool()
    assert torch.allclose(logp[m], batch.sampler_logprobs[:, :width][m], atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["compact", "compact-gpu-checks", "hf"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_interleavings_are_token_exact(tok, backend, seed, monkeypatch):
    """compact-gpu-checks: finished rows are dropped every 8 steps, as on a GPU, so rows past their EOS keep
    decoding a while (and must not start calls)."""
    if backend == "compact-gpu-checks":
        monkeypatch.setattr("grpo.rollout.compact.finished_check_interval", lambda device: 8)
        backend = "compact"
    model = tiny_llama(tok, seed)
    every, T = 3 + seed % 4, 36 + 5 * seed
    toolbox = FakeToolbox(every=every, max_len=6 + 3 * seed, max_tool_calls=1 + seed % 3, seed=seed)
    torch.manual_seed(100 + seed)
    batch = make_backend(backend, tok, max_completion_length=T, toolbox=toolbox).generate(model, PROMPTS, 4)
    assert batch.completion_ids.size(1) <= T
    check_token_exact(batch, tok, toolbox, model, T, 4)
    assert sum(len(c) for c in batch.tool_calls) > 0, "no call happened: the test tests nothing"
    assert batch.tool_mask.sum() > 0 and (batch.model_mask.sum(-1) > 0).all()


def test_interleavings_cover_the_edge_cases(tok):
    """Across a few seeds the generator hits what the property must survive: an EOS inside tool output with model
    tokens after it, an output cut at max_completion_length, the call limit reached, failed and timed-out calls
    whose error text the model continues from, and several rows' calls run together (hf rounds)."""
    seen = {"eos_inside": 0, "cut": 0, "limit": 0, "error_then_more": 0, "timeout": 0, "batched": 0}
    for seed in range(4):
        for backend in ("compact", "hf"):
            toolbox = FakeToolbox(every=3, max_len=20, max_tool_calls=2, seed=seed)
            torch.manual_seed(seed)
            T = 30
            batch = make_backend(backend, tok, max_completion_length=T, toolbox=toolbox).generate(
                tiny_llama(tok, seed), PROMPTS, 4)
            check_token_exact(batch, tok, toolbox, tiny_llama(tok, seed), T, 4)
            seen["batched"] += max(toolbox.batches) > 1
            for r, calls in enumerate(batch.tool_calls):
                ids, tools = batch.completion_ids[r].tolist(), batch.tool_mask[r].tolist()
                n = int(batch.completion_mask[r].sum())
                seen["eos_inside"] += any(t and i == tok.eos_token_id for i, t in zip(ids[:n - 1], tools))
                seen["cut"] += bool(n == T and tools[T - 1])
                seen["limit"] += len(calls) == 2
                seen["timeout"] += any(c.timed_out for c in calls)
                last_tool = max((k for k in range(n) if tools[k]), default=-1)
                seen["error_then_more"] += bool(calls and calls[-1].error and 0 <= last_tool < n - 1)
    assert all(seen.values()), seen


def test_tool_fields_survive_select_concat_and_group(tok):
    toolbox = FakeToolbox(every=3, seed=1)
    torch.manual_seed(1)
    backend = make_backend("compact", tok, max_completion_length=24, toolbox=toolbox)
    a = backend.generate(tiny_llama(tok, 1), PROMPTS[:2], 2)
    b = backend.generate(tiny_llama(tok, 1), PROMPTS[2:], 2)
    both = RolloutBatch.concat([a, b], tok.pad_token_id)
    assert both.tool_mask.shape == both.completion_ids.shape and len(both.tool_calls) == 6
    assert both.tool_calls[4] is b.tool_calls[0]
    assert torch.equal(both.tool_mask[4, : b.tool_mask.size(1)], b.tool_mask[0])
    picked = both.select([5, 0])
    assert picked.tool_calls == [both.tool_calls[5], both.tool_calls[0]]
    assert torch.equal(picked.tool_mask, both.tool_mask[[5, 0]])
    step = StepBatch(both, [{"answer": "1"}] * 6, 2, torch.zeros(6))
    assert step.group(2).rollout.tool_calls == both.tool_calls[4:6]
    plain = make_backend("compact", tok, max_completion_length=8).generate(tiny_llama(tok, 1), PROMPTS[:1], 2)
    assert plain.tool_mask is None and plain.tool_calls is None and plain.tool_records() is None
    mixed = RolloutBatch.concat([plain, a], tok.pad_token_id)  # a batch without tools joins with zeros, no calls
    assert mixed.tool_mask[:2].sum() == 0 and mixed.tool_calls[:2] == [[], []]


def test_tool_metrics_and_records(tok):
    toolbox = FakeToolbox(every=3, seed=2)
    torch.manual_seed(2)
    batch = make_backend("compact", tok, max_completion_length=30, toolbox=toolbox).generate(
        tiny_llama(tok, 2), PROMPTS, 4)
    calls = [c for row in batch.tool_calls for c in row]
    m = tool_metrics(batch)
    assert m["tools/calls_per_completion"] == len(calls) / 12
    assert m["tools/error_rate"] == sum(c.error is not None for c in calls) / len(calls)
    assert m["tools/timeouts"] == sum(c.timed_out for c in calls)
    assert m["tools/output_tokens"] == batch.tool_mask.sum().item() / 12
    assert torch.equal(batch.model_lengths, batch.lengths - batch.tool_mask.sum(-1))
    records = batch.tool_records()
    assert records == [[c.as_record() for c in row] for row in batch.tool_calls]
    assert all(set(r) >= {"name", "arguments", "output", "error", "seconds"} for row in records for r in row)


# --- vllm, through a scripted stand-in engine ------------------------------------------------------------------


class EqualsToolbox(FakeToolbox):
    """A call is text ending in "1="; its output is "\\n5\\n"."""

    def could_end(self, token_text: str) -> bool:
        return token_text == "="

    def call_end(self, text: str) -> bool:
        return text.endswith("1=")

    def run_many(self, calls):
        self.batches.append(len(calls))
        return [FakeCall(name, args, "5", seconds=0.01) for name, args in calls]


class ScriptedLLM:
    """Stands in for ``vllm.LLM``: writes "1" then "=" while the sequence holds fewer than 3 "=", then EOS; pauses
    each row after its "1" with a syntax stop (as vLLM does at a stop string), log-prob -0.5 per token."""

    def __init__(self, tok):
        self.tok, self.calls, self.requests = tok, [], []

    def generate(self, requests, sampling_params, use_tqdm=False):
        import types

        from grpo.rollout.turns import SYNTAX_STOPS

        self.calls.append("generate")
        self.params = sampling_params.kwargs
        one, eq, eos = self.tok.convert_tokens_to_ids(["1", "="]) + [self.tok.eos_token_id]
        outs = []
        for req in requests:
            seq, new, reason = list(req["prompt_token_ids"]), [], None
            self.requests.append(seq)
            while len(new) < sampling_params.kwargs["max_tokens"]:
                nxt = eos if seq.count(eq) >= 3 else (eq if seq[-1] == one else one)
                seq.append(nxt)
                new.append(nxt)
                if nxt == eos:
                    break
                if nxt == one:
                    reason = SYNTAX_STOPS["fenced"][0]
                    break
            out = types.SimpleNamespace(token_ids=new, stop_reason=reason,
                                        logprobs=[{t: types.SimpleNamespace(logprob=-0.5)} for t in new])
            outs.append(types.SimpleNamespace(outputs=[out]))
        return outs

    def sleep(self, level):
        self.calls.append("sleep")

    def wake_up(self, tags):
        self.calls.append("wake")


def test_vllm_tool_rounds_are_token_exact(tok, monkeypatch):
    """Rounds through the vllm backend: a pause that ends no call resumes, a call's output is appended as ids,
    the third call is past max_tool_calls, and the engine wakes and sleeps once per rollout."""
    import sys
    import types

    from grpo.rollout import Backend, VLLMBackend

    fake = types.ModuleType("vllm")
    fake.SamplingParams = type("SamplingParams", (), {"__init__": lambda self, **kw: setattr(self, "kwargs", kw)})
    monkeypatch.setitem(sys.modules, "vllm", fake)
    backend = VLLMBackend.__new__(VLLMBackend)  # the engine is the stand-in: no vLLM, no GPU
    Backend.__init__(backend, tok, max_completion_length=20, toolbox=EqualsToolbox(max_tool_calls=2))
    backend.llm, backend.enable_sleep_mode, backend.weights_stale = ScriptedLLM(tok), True, False
    batch = backend.generate(tiny_llama(tok, 0), ["Q: 1+2\nA:", "Q: 3\nA:"], 2)
    out = tok(["\n5\n"], add_special_tokens=False)["input_ids"][0]
    one, eq = tok.convert_tokens_to_ids(["1", "="])
    want = [one, eq] + out + [one, eq] + out + [one, eq, tok.eos_token_id]  # the third "1=" is past the limit
    want_tools = [0, 0] + [1] * len(out) + [0, 0] + [1] * len(out) + [0, 0, 0]
    for r in range(4):
        n = int(batch.completion_mask[r].sum())
        assert batch.completion_ids[r, :n].tolist() == want and batch.tool_mask[r, :n].tolist() == want_tools
        assert [c.arguments for c in batch.tool_calls[r]] == ["1=", "1="] and not batch.truncated[r]
        model = batch.model_mask[r, :n].bool()
        assert (batch.sampler_logprobs[r, :n][model] == -0.5).all() and (batch.sampler_logprobs[r, :n][~model] == 0).all()
    llm = backend.llm
    assert llm.calls[0] == "wake" and llm.calls[-1] == "sleep" and llm.calls.count("sleep") == 1  # one wake per rollout
    assert llm.params["include_stop_str_in_output"] and "```" in llm.params["stop"]
    assert backend.toolbox.batches == [4, 4]  # the four rows' calls ran together, twice


# --- the real toolbox: a hanging and a crashing python call ------------------------------------------------------


def char_tokenizer():
    """A character-level tokenizer over printable ASCII (the tiny base's vocabulary has no backtick)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    inner.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    inner.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


class CharScriptLLM(ScriptedLLM):
    """Writes part k of ``script`` after the k-th tool output, then text past the call (which the rollout must
    drop), then EOS."""

    def __init__(self, tok, script: list[str], marker: str = "```output", pause_at: str | None = None):
        super().__init__(tok)
        self.script, self.marker, self.pause_at = script, marker, pause_at

    def generate(self, requests, sampling_params, use_tqdm=False):
        import types

        self.params = sampling_params.kwargs
        outs = []
        for req in requests:
            k = self.tok.decode(req["prompt_token_ids"]).count(self.marker)
            text = self.script[k] + ("\nnot part of the call" if k < len(self.script) - 1 else "")
            new = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            reason = None
            if self.pause_at and self.pause_at in text:  # vLLM stops at a stop string, keeping it
                new, reason = self.tok(text[: text.index(self.pause_at) + len(self.pause_at)],
                                       add_special_tokens=False)["input_ids"], self.pause_at
            new = new[: sampling_params.kwargs["max_tokens"]]
            out = types.SimpleNamespace(token_ids=new, stop_reason=reason,
                                        logprobs=[{t: types.SimpleNamespace(logprob=-0.5)} for t in new])
            outs.append(types.SimpleNamespace(outputs=[out]))
        return outs


def test_hanging_and_crashing_python_calls_return_error_text_and_the_rollout_goes_on(monkeypatch):
    """The real python sandbox: an infinite loop is stopped at tool_timeout_s and a crash returns its traceback;
    the model continues from each error text, and the rollout takes about the time limit, no more."""
    import sys
    import time
    import types

    from grpo.rollout import Backend, VLLMBackend
    from grpo.tools import build_toolbox

    fake = types.ModuleType("vllm")
    fake.SamplingParams = type("SamplingParams", (), {"__init__": lambda self, **kw: setattr(self, "kwargs", kw)})
    monkeypatch.setitem(sys.modules, "vllm", fake)
    tok = char_tokenizer()
    script = ["```python\nwhile True: pass\n```", "Again.\n```python\n1/0\n```", "done"]
    box = build_toolbox(["python"], timeout_s=1.0, workers=2, max_tool_calls=3)
    backend = VLLMBackend.__new__(VLLMBackend)
    Backend.__init__(backend, tok, max_completion_length=400, toolbox=box)
    backend.llm, backend.enable_sleep_mode, backend.weights_stale = CharScriptLLM(tok, script), False, False
    try:
        start = time.monotonic()
        batch = backend.generate(torch.nn.Linear(1, 1), ["Q:"], 2)  # the engine samples; the "policy" is unused
        seconds = time.monotonic() - start
    finally:
        backend.close()
    assert seconds < 1.0 + 3.0  # both rows' hanging calls ran together, each stopped at its 1 s limit
    for r in range(2):
        hang, crash = batch.tool_calls[r]
        assert hang.timed_out and "timed out" in hang.error and crash.error.startswith("ZeroDivisionError")
        want = (script[0] + box.render(hang) + script[1] + box.render(crash) + script[2])
        assert batch.completions[r] == want and not batch.truncated[r]
        assert "not part of the call" not in batch.completions[r]


def test_chat_syntax_calls_pause_at_the_closing_tag_and_run_the_calculator(monkeypatch):
    """tool_syntax chat through the vllm rounds: vLLM stops at </tool_call>, the real calculator runs on the JSON
    arguments, its tool-response turn is appended as ids, and the model answers after it."""
    import sys
    import types

    from grpo.rollout import Backend, VLLMBackend
    from grpo.tools import build_toolbox

    fake = types.ModuleType("vllm")
    fake.SamplingParams = type("SamplingParams", (), {"__init__": lambda self, **kw: setattr(self, "kwargs", kw)})
    monkeypatch.setitem(sys.modules, "vllm", fake)
    tok = char_tokenizer()
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "3*7+2"}}</tool_call>'
    box = build_toolbox(["calculator"], syntax="chat", tokenizer=tok)
    backend = VLLMBackend.__new__(VLLMBackend)
    Backend.__init__(backend, tok, max_completion_length=300, toolbox=box)
    llm = CharScriptLLM(tok, ["Let me add. " + call + " more", "So 23."], marker="<tool_response>",
                        pause_at="</tool_call>")
    backend.llm, backend.enable_sleep_mode, backend.weights_stale = llm, False, False
    batch = backend.generate(torch.nn.Linear(1, 1), ["Q:"], 1)
    backend.close()
    (result,) = batch.tool_calls[0]
    assert result.name == "calculator" and result.output == "23" and result.error is None
    assert batch.completions[0] == "Let me add. " + call + box.render(result) + "So 23."
    assert llm.params["stop"] == ["</tool_call>"] and not batch.truncated[0]
