"""The tools demo: the bundled tools base (``models/tiny-tools-base``) and ``configs/tools-demo.yaml``.

The corpus writes calls and outputs exactly as the rollout does (the same fenced syntax, the same output block, the
same tokens), the base loads and writes a well-formed calculator call when its answer starts one, it copies the
tool's output into the answer, and (slow) a short run of the demo raises both the calls per completion and the
accuracy with an accuracy reward alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.tasks import get_task
from grpo.tasks.arithmetic import calculator_call, solution_tool, tool_output
from grpo.tools import ToolCall, build_toolbox

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BASE = ROOT / "models" / "tiny-tools-base"
DEMO = ROOT / "configs" / "tools-demo.yaml"


def _script():
    spec = importlib.util.spec_from_file_location("make_tiny_base", ROOT / "scripts" / "make_tiny_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_writes_calls_and_outputs_as_the_rollout_does():
    """A corpus call is a complete fenced call for the toolbox, its output block is the toolbox's rendering."""
    toolbox = build_toolbox(["calculator"], syntax="fenced")
    nums = [6, 2, 2, 7]
    text = solution_tool(nums)
    head = "<think>\n" + calculator_call(nums)
    assert text.startswith(head) and toolbox.call_end(head) and not toolbox.call_end(head[:-1])
    assert toolbox.parse(head) == ("calculator", "6+2+2+7")
    [call] = toolbox.run_many([toolbox.parse(head)])
    assert call.output == "17" and call.error is None
    assert toolbox.render(call) == tool_output("17") == toolbox.render(ToolCall("calculator", "6+2+2+7", "17"))
    assert text == head + tool_output("17") + "</think><answer>17</answer>"
    toolbox.close()


def test_tools_tokenizer_keeps_the_base_ids_and_tokenises_outputs_alone_the_same():
    """The tools tokenizer extends the base's (same ids for the 28 tokens); the fence, ``calculator`` and ``output``
    are one token each; the output block tokenised on its own (as the rollout appends it) is the same ids as inside
    a whole document (as pretraining saw it)."""
    tok = AutoTokenizer.from_pretrained(TOOLS_BASE)
    base = AutoTokenizer.from_pretrained(ROOT / "models" / "tiny-base")
    assert len(tok) == 32
    assert all(tok.convert_tokens_to_ids(t) == i for t, i in base.get_vocab().items())
    for word in ("```", "calculator", "output", "`"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    prompt, nums = "Q: 9+8+8+4+1=?\nA:", [9, 8, 8, 4, 1]
    head = prompt + "<think>\n" + calculator_call(nums)
    doc = tok(head + tool_output("30"), add_special_tokens=False)["input_ids"]
    alone = tok(head, add_special_tokens=False)["input_ids"] + tok(tool_output("30"), add_special_tokens=False)["input_ids"]
    assert doc == alone
    assert tok.decode(tok(prompt + solution_tool(nums))["input_ids"], skip_special_tokens=True) == prompt + solution_tool(nums)


def _greedy(model, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_tools_base_writes_a_call_and_copies_its_output():
    """Greedy, an answer that starts a call (``<think>\n``) writes a well-formed calculator call with the question's
    sum (measured: 16 of these 16); after an output block the answer is the output, even a false one: the base reads
    the tool, it does not redo the sum."""
    tok = AutoTokenizer.from_pretrained(TOOLS_BASE)
    model = AutoModelForCausalLM.from_pretrained(TOOLS_BASE).eval()
    toolbox = build_toolbox(["calculator"], syntax="fenced")
    rows = get_task("arithmetic", num_eval=16).eval_rows()
    texts = _greedy(model, tok, [r["prompt"] + "<think>\n" for r in rows], 24)
    calls = [toolbox.parse(t[:t.find("```", t.find("```") + 3) + 3]) for t in texts]  # up to the closing fence
    assert all(c is not None and c[0] == "calculator" for c in calls), texts
    assert sum(c == ("calculator", r["question"]) for c, r in zip(calls, rows)) >= 14, texts
    for shift in (0, 7):  # the true output, and a false one
        prompts = [r["prompt"] + "<think>\n" + calculator_call(r["nums"]) + tool_output(str(int(r["answer"]) + shift))
                   for r in rows]
        answers = _greedy(model, tok, prompts, 8)
        copied = [a.startswith(f"</think><answer>{int(r['answer']) + shift}</answer>") for a, r in zip(answers, rows)]
        assert sum(copied) >= 14, (shift, answers)
    toolbox.close()


def test_make_tiny_base_tools_is_deterministic_and_keeps_the_plain_build(tmp_path):
    """``--tools`` builds the same weights twice; its tokenizer is the 32-token one, the plain build's is not."""
    outs = []
    for name, extra in (("a", ["--tools"]), ("b", ["--tools"]), ("plain", [])):
        out = tmp_path / name
        subprocess.run([sys.executable, str(ROOT / "scripts/make_tiny_base.py"), "--steps", "2", "--out", str(out),
                        "--report", "0", *extra], check=True, capture_output=True, timeout=300)
        outs.append(out)
    a, b = load_file(outs[0] / "model.safetensors"), load_file(outs[1] / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(AutoTokenizer.from_pretrained(outs[0])) == 32 and len(AutoTokenizer.from_pretrained(outs[2])) == 28
    info = json.loads((outs[0] / "pretrain_info.json").read_text())
    assert info["tools"] == ["calculator"] and "careful" not in info and info["calls"] > 0
    assert "tools" not in json.loads((outs[2] / "pretrain_info.json").read_text())


def test_demo_config_rewards_accuracy_alone():
    """Nothing in the demo rewards a call: the accuracy reward is its only reward."""
    cfg = yaml.safe_load(DEMO.read_text())
    assert cfg["rewards"] == {"accuracy": 1.0} and cfg["tools"] == ["calculator"] and cfg["tool_syntax"] == "fenced"
    assert cfg["model_name_or_path"] == "models/tiny-tools-base"


@pytest.mark.slow
def test_tool_style_is_rare_in_the_base_and_right():
    """What GRPO has to discover: sampled answers call the calculator rarely (< 10%), and those are right far more
    often than the answers without a call."""
    mod = _script()
    tok = AutoTokenizer.from_pretrained(TOOLS_BASE)
    model = AutoModelForCausalLM.from_pretrained(TOOLS_BASE).eval()
    torch.set_num_threads(1)
    report = mod.report(model, tok, n=128, tools=True)
    assert report["greedy"].get("tool", {"share": 0.0})["share"] < 0.10, report
    sampled = report["sampled"]
    assert 0.01 < sampled["tool"]["share"] < 0.10, report
    assert sampled["tool"]["accuracy"] >= sampled["no_tool"]["accuracy"] + 0.4, report


@pytest.mark.slow  # about 2 minutes on 2 cores
def test_the_demo_raises_calls_and_accuracy(tmp_path):
    """``configs/tools-demo.yaml`` (seed 42), shortened: calls per completion and accuracy both rise."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(DEMO), "--output_dir", str(out),
                           "--max_steps", "30", "--eval_steps", "30", "--save_steps", "0", "--save_final_model",
                           "false"], capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    calls = [r["tools/calls_per_completion"] for r in rows if "tools/calls_per_completion" in r]
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    assert len(calls) == 30 and len(evals) == 2
    assert sum(calls[:3]) / 3 < 0.1 and sum(calls[-3:]) / 3 > 0.5, calls
    assert evals[-1] >= evals[0] + 0.25, evals
