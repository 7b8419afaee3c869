"""GPU-only checks (marked ``gpu``; skipped without CUDA): bf16 training of the trained tiny base (updates happen),
shared vs unshared prompt log-probs under mixed precision, each recommended GPU configuration, the precision line,
the bf16 decode copy and the compiled decode path. ``bash bench/gpu_check.sh`` runs them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
pytestmark = pytest.mark.gpu

BASE_ARGS = ["--per_device_train_batch_size", "64", "--num_generations", "8", "--eval_steps", "0", "--task_kwargs",
             "{num_eval: 16}", "--save_final_model", "false", "--learning_rate", "1e-4", "--log_completions_steps", "0"]


def _train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mixed_precision: str | None, *extra: str,
           steps: int = 2) -> tuple[list[dict], dict[str, torch.Tensor], torch.nn.Module]:
    """Train the bundled (trained) tiny base for ``steps`` steps on the GPU. -> metrics rows, initial weights, model."""
    from grpo.cli import load_config
    from grpo.trainer import Trainer

    if mixed_precision is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", mixed_precision)
    out = tmp_path / "run"
    cfg = load_config([*BASE_ARGS, "--output_dir", str(out), "--max_steps", str(steps), *extra])
    t = Trainer(cfg)
    assert t.accelerator.device.type == "cuda"
    model = t.accelerator.unwrap_model(t.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    t.train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], before, model


def _assert_learned(rows: list[dict], before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    updated = [r for r in rows if r.get("skipped_update", 0) == 0 and r.get("skipped_nonfinite", 0) == 0]
    assert updated, f"no step updated: {rows}"
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert any(r["grad_norm"] > 0 for r in updated)
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "the weights did not move"


def test_plain_python_on_cuda_trains_in_bf16_autocast(tmp_path, monkeypatch, capsys):
    """fp32 weights and no --mixed_precision: bf16 autocast by default, said in one line; updates happen."""
    rows, before, model = _train(tmp_path, monkeypatch, None)
    assert "computing in bf16 autocast" in capsys.readouterr().out
    assert next(model.parameters()).dtype == torch.float32  # float32 master weights
    _assert_learned(rows, before, model)
    # decoding from the bf16 copy turns the mismatch correction on; the mismatch is rounding (autocast casts the
    # float32 weights to the same bf16 values the copy holds), so token log-probs agree closely
    for r in rows:
        assert r["sampling/sampling_logp_difference/mean"] < 0.05, r
        assert 0.5 < r["sampling/importance_sampling_ratio/mean"] < 1.5, r


@pytest.mark.parametrize("name, mixed_precision, extra", [
    ("bf16 autocast, compact", "bf16", []),
    ("bf16 weights", "no", ["--dtype", "bfloat16"]),
    ("gradient checkpointing (the recipes)", "bf16", ["--gradient_checkpointing", "true"]),
    ("LoRA on a bf16 base", "bf16", ["--use_peft", "true", "--lora_r", "8", "--learning_rate", "1e-3"]),
    ("hf + compile", "bf16", ["--rollout_backend", "hf", "--compile_generation", "true", "--prompt_bucket", "16"]),
    ("fp32 compute (TF32)", "no", []),
])
def test_recommended_gpu_configurations_learn(tmp_path, monkeypatch, name, mixed_precision, extra):
    rows, before, model = _train(tmp_path, monkeypatch, mixed_precision, *extra)
    _assert_learned(rows, before, model)


def test_vllm_configuration_learns(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    rows, before, model = _train(tmp_path, monkeypatch, "bf16", "--rollout_backend", "vllm",
                                 "--vllm_gpu_memory_utilization", "0.2")
    _assert_learned(rows, before, model)
    assert all("sampling/importance_sampling_ratio/mean" in r for r in rows)  # auto-on for vllm


def test_shared_and_unshared_prompt_logprobs_agree_in_bf16(tmp_path, monkeypatch):
    from grpo.cli import load_config
    from grpo.trainer import Trainer

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = load_config([*BASE_ARGS, "--output_dir", str(tmp_path / "run"), "--max_steps", "1"])
    t = Trainer(cfg)
    torch.manual_seed(0)
    step_batch, _ = t.collect(1)
    batch = step_batch.rollout
    from dataclasses import replace

    from grpo import scoring

    mask = batch.completion_mask.bool()
    inner = t.accelerator.unwrap_model(t.model)
    with torch.no_grad():
        shared, _ = scoring.completion_logprobs(t.model, batch, replace(t.scoring, share_prompts=True), step_batch.group_size, inner=inner)
        full, _ = scoring.completion_logprobs(t.model, batch, replace(t.scoring, share_prompts=False), step_batch.group_size, inner=inner)
    diff = (shared - full).abs()[mask[:, : shared.size(1)]]
    assert diff.max() < 0.1 and diff.mean() < 0.01, (diff.max().item(), diff.mean().item())
    # and against the sampler's own log-probs (the bf16 decode copy)
    sampler = batch.sampler_logprobs.to(full.device)[:, : full.size(1)]
    assert (sampler - full).abs()[mask[:, : full.size(1)]].mean() < 0.05


def test_compiled_hf_decode_matches_compact_greedy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout import CompactSampler, HFGenerateBackend

    model = AutoModelForCausalLM.from_pretrained(TINY).cuda().eval()
    tok = AutoTokenizer.from_pretrained(TINY)
    prompts = ["Q: 3+4=?\nA:", "Q: 9+8+7+6=?\nA:"]
    backend = HFGenerateBackend(tok, 48, compile_generation=True, prompt_bucket=16)
    compiled = backend.generate(model, prompts, 1, greedy=True)
    compact = CompactSampler(tok, 48, prompt_bucket=16).generate(model, prompts, 1, greedy=True)
    assert compiled.completions == compact.completions
    backend.generate(model, prompts * 3, 1, greedy=True)  # 6 rows: the same bucket of 8, no new shape
    assert backend.compiled_shapes == {(8, 256)}


def test_compact_on_gpu_checks_finished_rows_every_few_steps():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout import CompactSampler, HFGenerateBackend, finished_check_interval

    assert finished_check_interval(torch.device("cuda")) > 1
    model = AutoModelForCausalLM.from_pretrained(TINY).cuda().eval()
    tok = AutoTokenizer.from_pretrained(TINY)
    prompts = ["Q: 3+4=?\nA:", "Q: 9+8+7+6+5+4=?\nA:"]
    ours = CompactSampler(tok, 64).generate(model, prompts, 1, greedy=True)
    ref = HFGenerateBackend(tok, 64).generate(model, prompts, 1, greedy=True)
    assert ours.completions == ref.completions and torch.equal(ours.completion_mask, ref.completion_mask)
