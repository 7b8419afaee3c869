"""CUDA precision decisions (a pure function, tested on CPU) and the rollout backends' bf16 decode copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.precision import precision_plan
from grpo.rollout import make_backend

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
F32, BF16 = torch.float32, torch.bfloat16


def test_fp32_weights_on_cuda_without_mixed_precision_get_bf16_autocast_and_say_so():
    plan = precision_plan("cuda", F32, None, bf16_supported=True)
    assert plan.mixed_precision == "bf16" and plan.decode_dtype == BF16 and not plan.tf32
    assert "bf16 autocast" in plan.message and "--mixed_precision no" in plan.message and "\n" not in plan.message


def test_explicit_fp32_on_cuda_warns_and_uses_tf32():
    plan = precision_plan("cuda", F32, "no", bf16_supported=True)
    assert plan.mixed_precision == "no" and plan.decode_dtype is None and plan.tf32
    assert "float32" in plan.message and "--mixed_precision bf16" in plan.message


def test_gpu_without_bf16_computes_in_fp32_with_a_line():
    plan = precision_plan("cuda", F32, None, bf16_supported=False)
    assert plan.mixed_precision == "no" and plan.tf32 and "no bf16" in plan.message


@pytest.mark.parametrize("weights, mp, peft, want_mp, want_copy", [
    (F32, "bf16", False, "bf16", BF16),  # bf16 autocast: decode from a bf16 copy, silently
    (F32, "BF16", True, "bf16", None),  # LoRA: the base is what decodes; no copy of it
    (BF16, None, False, None, None),  # bf16 weights: nothing to decide
    (F32, "fp16", False, "fp16", None),
])
def test_other_cuda_cases(weights, mp, peft, want_mp, want_copy):
    plan = precision_plan("cuda", weights, mp, bf16_supported=True, use_peft=peft)
    assert (plan.mixed_precision, plan.decode_dtype, plan.message) == (want_mp, want_copy, None)


@pytest.mark.parametrize("mp", [None, "no", "bf16"])
def test_cpu_is_left_as_it_was(mp):
    assert precision_plan("cpu", F32, mp, bf16_supported=True) == precision_plan("cpu", F32, None, False)
    assert precision_plan("cpu", F32, mp, bf16_supported=True).mixed_precision is None


def test_bf16_decode_copy_is_made_once_and_refreshed_after_updates():
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    tok = AutoTokenizer.from_pretrained(TINY)
    backend = make_backend("compact", tok, max_completion_length=8, decode_dtype=BF16)
    backend.generate(model, ["Q: 1+2=?\nA:"], 2)
    copy = backend._decode_copy
    assert copy is not None and all(p.dtype == BF16 for p in copy.parameters())
    assert all(p.dtype == F32 for p in model.parameters())  # the training weights stay float32
    assert all(b.dtype == F32 for b in copy.buffers() if b.is_floating_point())  # rotary frequencies too
    name, p = next(model.named_parameters())
    with torch.no_grad():
        p.add_(0.5)
    backend.generate(model, ["Q: 1+2=?\nA:"], 1)
    assert not torch.equal(dict(copy.named_parameters())[name], p.to(BF16))  # not refreshed without an update
    backend.sync_weights(model)  # what the trainer calls after its optimizer steps
    backend.generate(model, ["Q: 1+2=?\nA:"], 1)
    assert backend._decode_copy is copy  # refreshed in place, not rebuilt
    assert torch.equal(dict(copy.named_parameters())[name], p.detach().to(BF16))
