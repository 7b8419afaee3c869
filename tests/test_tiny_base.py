"""The bundled tiny base model: standard HF format, small, and rebuilt deterministically by its script."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-base"


def test_loads_with_auto_classes_and_is_small():
    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY)
    assert len(tok) == 28  # characters, 4 tags, 4 specials, " check" and " wait"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    size = sum(f.stat().st_size for f in TINY.iterdir())
    assert size < 20 * 2**20


def test_tokenizer_round_trip_and_single_token_tags():
    tok = AutoTokenizer.from_pretrained(TINY)
    text = "Q: 6+2=?\nA:<think>6+2=8</think><answer>8</answer>"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    for tag in ("<think>", "</think>", "<answer>", "</answer>", " check", " wait"):
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
    careful = "<think>6+2=8 check\n8+2=0 wait 10 check</think><answer>10</answer>"
    assert tok.decode(tok(careful, add_special_tokens=False)["input_ids"]) == careful


def test_base_model_continues_prompts_in_the_task_format():
    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY)
    enc = tok(["Q: 3+4=?\nA:"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.startswith("<think>") and "<answer>" in text


def test_make_tiny_base_is_deterministic(tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        subprocess.run([sys.executable, str(ROOT / "scripts/make_tiny_base.py"), "--steps", "3", "--out", str(out),
                        "--report", "0"],
                       check=True, capture_output=True, timeout=300)
        outs.append(load_file(out / "model.safetensors"))
    assert outs[0].keys() == outs[1].keys()
    for key in outs[0]:
        assert torch.equal(outs[0][key], outs[1][key]), key


def _make_tiny_base_module():
    spec = importlib.util.spec_from_file_location("make_tiny_base", ROOT / "scripts" / "make_tiny_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_careful_style_is_rare_in_the_base_and_more_often_right():
    """What GRPO has to discover: the self-checking style is rare (< 10%) but right more often than the others."""
    mod = _make_tiny_base_module()
    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    torch.set_num_threads(1)
    report = mod.report(model, tok, n=128)
    for mode in ("greedy", "sampled"):
        assert report[mode].get("careful", {"share": 0.0})["share"] < 0.10, report
    sampled = report["sampled"]
    assert sampled["careful"]["share"] > 0.01, report  # present, so sampling finds it
    for other in ("direct", "steps"):
        assert sampled[other]["share"] > 0.15, report
        assert sampled["careful"]["accuracy"] >= sampled[other]["accuracy"] + 0.2, report
