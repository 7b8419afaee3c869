"""GPU-only checks (marked ``gpu``; skipped without CUDA): bf16 training and the compiled decode path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
pytestmark = pytest.mark.gpu


def tiny_qwen(path: Path) -> Path:
    """A small random Qwen2 model with the bundled tokenizer (built from a config, no download)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(TINY)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_bf16_training_steps_on_gpu(tmp_path):
    from grpo.config import load_config
    from grpo.trainer import Trainer

    model = tiny_qwen(tmp_path / "m")
    cfg = load_config(["--model_name_or_path", str(model), "--dtype", "bfloat16", "--max_steps", "2",
                       "--per_device_train_batch_size", "32", "--eval_steps", "2", "--task_kwargs", "{num_eval: 16}",
                       "--output_dir", str(tmp_path / "run"), "--save_final_model", "false"])
    t = Trainer(cfg)
    assert t.accelerator.device.type == "cuda"
    assert next(t.model.parameters()).dtype == torch.bfloat16
    summary = t.train()
    assert summary["steps"] == 2
    assert math.isfinite(summary["last_eval"]["eval/mean_length"])


def test_compiled_hf_decode_matches_compact_greedy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout import CompactSampler, HFGenerateBackend

    model = AutoModelForCausalLM.from_pretrained(TINY).cuda().eval()
    tok = AutoTokenizer.from_pretrained(TINY)
    prompts = ["Q: 3+4=?\nA:", "Q: 9+8+7+6=?\nA:"]
    compiled = HFGenerateBackend(tok, 48, compile_generation=True, prompt_bucket=16).generate(model, prompts, 1, greedy=True)
    compact = CompactSampler(tok, 48, prompt_bucket=16).generate(model, prompts, 1, greedy=True)
    assert compiled.completions == compact.completions
