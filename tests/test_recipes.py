"""Recipes end to end, offline: --smoke for every recipe (full and LoRA), two CPU ranks, model options, saving,
the LoRA reference, and evaluation (in training and standalone).

Everything runs offline (HF_HUB_OFFLINE=1): --smoke swaps each recipe's hub model for a tiny random model of the
same architecture and its hub dataset for generated rows in the dataset's own format.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"

from grpo.batch import RolloutBatch
from grpo.cli import load_config
from grpo.evaluate import evaluate
from grpo.model import (
    ModelLoadError,
    load_for_eval,
    load_policy,
    load_tokenizer,
    reference_context,
    resolve_dtype,
    save_final,
)
from grpo.preflight import prepare
from grpo.smoke import ARCHITECTURES, build_model, build_tokenizer, tiny_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["qwen2.5-0.5b-gsm8k", "qwen2.5-math-1.5b-math", "qwen2.5-3b-countdown", "qwen2.5-math-1.5b-tir"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def recipe(name: str) -> str:
    return str(ROOT / "configs" / f"{name}.yaml")


def run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout,
                          check=False)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_trained_two_steps(out: Path) -> None:
    rows = metrics(out)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # The smoke signal makes groups differ, so the update really ran (not skipped) with a real gradient.
    assert all(r["skipped_update"] == 0.0 and r["grad_norm"] > 0 for r in steps)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    evals = [r["step"] for r in rows if "eval/accuracy" in r]
    assert evals == [0, 2]


# --- --smoke for every recipe --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_smoke_cli(name, tmp_path):
    """`python train.py --config configs/<recipe>.yaml --smoke --output_dir X` passes, keeping the algorithm."""
    out = tmp_path / "run"
    proc = run(["train.py", "--config", recipe(name), "--smoke", "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_trained_two_steps(out)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    original = yaml.safe_load(Path(recipe(name)).read_text())
    assert saved["smoke"] is True and saved["max_steps"] == 2
    for key in ("loss_type", "scale_rewards", "beta", "task", "eval_reward", "learning_rate", "gradient_checkpointing"):
        assert saved[key] == original[key], key
    assert set(original["rewards"]) <= set(saved["rewards"])
    assert (out / "final" / "model.safetensors").is_file()
    # The tiny model has the recipe model's architecture (Qwen2, GQA, tied embeddings).
    config = json.loads((Path(saved["model_name_or_path"]) / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_key_value_heads"] < config["num_attention_heads"]


def _lora_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_smoke_lora_changes_only_adapter_weights(name, tmp_path):
    """--smoke --use_peft true passes for each recipe; afterwards only LoRA weights differ from the start."""
    from grpo.trainer import Trainer

    # lr 1e-2 instead of the recipes' 1e-6: after one step the adapter moves far enough that a KL to the base
    # (the adapter switched off) is visibly > 0.
    cfg, task = prepare(["--config", recipe(name), "--smoke", "--use_peft", "true", "--learning_rate", "1e-2",
                         "--output_dir", str(tmp_path / "run")])
    before = _lora_params(load_policy(cfg))  # the seeded start: same base weights, same adapter init
    trainer = Trainer(cfg, task)
    trainer.train()
    after = _lora_params(trainer.accelerator.unwrap_model(trainer.model))
    assert before.keys() == after.keys()
    lora = [n for n in after if "lora_" in n]
    base = [n for n in after if "lora_" not in n]
    assert lora and base
    assert all(torch.equal(before[n], after[n]) for n in base), "a base weight changed under LoRA"
    changed = [n for n in lora if not torch.equal(before[n], after[n])]
    assert changed, "no adapter weight changed"
    assert all(not p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" not in n)
    assert_trained_two_steps(tmp_path / "run")
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    assert trainer.ref_model is None  # no second model: with beta > 0 the reference is the adapter switched off
    kl = [r["kl"] for r in metrics(tmp_path / "run") if "kl" in r]
    assert (cfg.beta > 0) == (len(kl) == 2 and kl[0] == 0.0 and kl[1] > 0)  # step 1: policy = base; step 2: not


@pytest.mark.slow
def test_two_data_parallel_ranks_on_cpu(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 train.py --config <gsm8k> --smoke` runs 2 ranks on CPU."""
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--main_process_port", "29731", "train.py", "--config", recipe("qwen2.5-0.5b-gsm8k"), "--smoke",
         "--output_dir", str(out)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    assert_trained_two_steps(out)


# --- recipes as documents ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, target", [
    ("qwen2.5-0.5b-gsm8k", "GSM8K 36.7 -> 49.5"),
    ("qwen2.5-math-1.5b-math", "MATH-500\n# 33.0 -> 74.2"),
    ("qwen2.5-3b-countdown", "Qwen2.5-3B base learns"),
    ("qwen2.5-math-1.5b-tir", "MATH500 77.8"),
])
def test_recipe_names_its_published_target_and_hardware(name, target):
    text = Path(recipe(name)).read_text()
    assert "# Target (published" in text and target in text
    assert re.search(r"# Hardware: written for \d x 80 GB GPUs", text)
    assert "--smoke" in text and "accelerate launch --config_file configs/accelerate/" in text


def test_dr_grpo_recipe_has_dr_grpo_settings():
    cfg = yaml.safe_load(Path(recipe("qwen2.5-math-1.5b-math")).read_text())
    assert (cfg["loss_type"], cfg["scale_rewards"], cfg["beta"], cfg["num_generations"]) == ("dr_grpo", "none", 0.0, 8)
    assert cfg["max_completion_length"] == 3000 and cfg["task_kwargs"]["levels"] == [3, 4, 5]


def test_tir_recipe_keeps_torl_settings(tmp_path):
    """The ToRL recipe: the python tool in fenced blocks, one call, ToRL's prompt, a boxed accuracy reward alone;
    preflight renders the prompt with the question in place and the smoke run keeps the tool keys."""
    cfg = yaml.safe_load(Path(recipe("qwen2.5-math-1.5b-tir")).read_text())
    assert (cfg["tools"], cfg["tool_syntax"], cfg["max_tool_calls"]) == (["python"], "fenced", 1)
    assert (cfg["num_generations"], cfg["learning_rate"], cfg["beta"], cfg["max_completion_length"]) == (16, 1e-6, 0.0,
                                                                                                         3072)
    assert cfg["rewards"] == {"accuracy": {"weight": 1.0, "kwargs": {"answer_format": "boxed"}}}
    smoke, task = prepare(["--config", recipe("qwen2.5-math-1.5b-tir"), "--smoke", "--output_dir", str(tmp_path)])
    assert smoke.tools == ["python"] and smoke.tool_syntax == "fenced" and smoke.max_tool_calls == 1
    prompt = task.eval_rows()[0]["prompt"]
    assert prompt.startswith("A conversation between User and Assistant.") and prompt.endswith("$.\nAssistant:")
    assert "integrate natural language reasoning with programs" in prompt and "\\boxed{}" in prompt


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "fsdp"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    expected = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}[name]
    assert config.distributed_type.name == expected and config.mixed_precision == "bf16"
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


# --- the tiny stand-ins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_name", ["Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-3B"])
def test_tiny_config_keeps_the_architecture(hub_name):
    real = ARCHITECTURES[hub_name.lower()]
    tiny = tiny_config(real, vocab_size=300)
    assert tiny.model_type == real["model_type"] == "qwen2"
    assert tiny.num_key_value_heads < tiny.num_attention_heads  # grouped-query attention, as in the real model
    assert tiny.tie_word_embeddings == real["tie_word_embeddings"]
    assert tiny.rope_parameters["rope_theta"] == real["rope_theta"]
    assert tiny.hidden_size == 64 and tiny.num_hidden_layers == 2


def test_smoke_tokenizer_round_trips_any_text_and_knows_qwen_specials():
    tok = build_tokenizer()
    text = "Ünïcode ∑ 3×4=12\n<think>x</think><answer>\\boxed{7}</answer>"
    assert tok.decode(tok(text)["input_ids"]) == text
    ids = tok("<|im_start|>user<|im_end|>")["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"


# --- model options ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_model("Qwen/Qwen2.5-0.5B", tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _cfg(tmp_path, model: str, *extra: str):
    return load_config(["--model_name_or_path", model, "--output_dir", str(tmp_path / "o"), *extra])


def test_dtype_resolution():
    assert resolve_dtype("auto", use_peft=True, cuda=True) == torch.bfloat16  # frozen LoRA base on GPU
    assert resolve_dtype("auto", use_peft=False, cuda=True) == torch.float32  # trained weights stay fp32
    assert resolve_dtype("auto", use_peft=True, cuda=False) == torch.float32
    assert resolve_dtype("bf16", use_peft=False) == torch.bfloat16 and resolve_dtype("fp32", True) == torch.float32


def test_model_options_are_applied(tmp_path, tiny_dir):
    model = load_policy(_cfg(tmp_path, tiny_dir, "--gradient_checkpointing", "true", "--attn_implementation", "eager",
                             "--dtype", "bfloat16", "--use_peft", "true", "--lora_r", "4",
                             "--lora_target_modules", "[q_proj, v_proj]"))
    inner = model.base_model.model
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing
    assert model.config._attn_implementation == "eager"
    assert model.base_model.model.model.embed_tokens.weight.dtype == torch.bfloat16
    lora_modules = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert lora_modules == {"q_proj", "v_proj"}
    assert model.peft_config["default"].r == 4
    assert load_config(["--output_dir", str(tmp_path / "o")]).trust_remote_code is False


def test_lora_init_is_seeded_independently_of_global_rng(tmp_path, tiny_dir):
    a = _lora_params(load_policy(_cfg(tmp_path, tiny_dir, "--use_peft", "true", "--seed", "1")))
    torch.manual_seed(999)  # global RNG state must not matter
    b = _lora_params(load_policy(_cfg(tmp_path, tiny_dir, "--use_peft", "true", "--seed", "1")))
    c = _lora_params(load_policy(_cfg(tmp_path, tiny_dir, "--use_peft", "true", "--seed", "2")))
    lora_a = [n for n in a if "lora_A" in n]
    assert all(torch.equal(a[n], b[n]) for n in lora_a)
    assert not all(torch.equal(a[n], c[n]) for n in lora_a)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_reference_context_is_the_base_model_and_saved_adapter_equals_merged(tmp_path, tiny_dir):
    cfg = _cfg(tmp_path, tiny_dir, "--use_peft", "true")
    policy, tokenizer = load_policy(cfg), load_tokenizer(cfg)
    policy.eval()  # no LoRA dropout: outputs are deterministic
    with torch.no_grad():  # a trained adapter: make lora_B non-zero so the adapter changes the outputs
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(n)))
    ids = torch.tensor([tokenizer("What is 2+3? <think>")["input_ids"]])
    base = _logits(load_for_eval(tiny_dir)[0], ids)
    adapted = _logits(policy, ids)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with reference_context(policy):
        assert torch.allclose(_logits(policy, ids), base, atol=1e-5)
    assert torch.allclose(_logits(policy, ids), adapted)  # the adapter is back on after the context
    assert save_final(policy, tokenizer, tmp_path / "adapter", merge=False) == "adapter"
    assert save_final(policy, tokenizer, tmp_path / "merged", merge=True) == "merged"
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    from_adapter, from_merged = _logits(load_for_eval(str(tmp_path / "adapter"))[0], ids), _logits(
        load_for_eval(str(tmp_path / "merged"))[0], ids)
    assert torch.allclose(from_adapter, adapted, atol=1e-4) and torch.allclose(from_merged, adapted, atol=1e-4)


def test_unreachable_model_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_tokenizer(_cfg(tmp_path, "nobody/no-such-model-xyz"))
    msg = str(e.value)
    assert "\n" not in msg and "nobody/no-such-model-xyz" in msg
    assert "HF_HUB_OFFLINE" in msg and "local model folder" in msg


@pytest.mark.slow
def test_unreachable_model_in_train_py_exits_2_without_traceback(tmp_path):
    proc = run(["train.py", "--model_name_or_path", "nobody/no-such-model-xyz", "--max_steps", "1",
                "--output_dir", str(tmp_path / "o")])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot load tokenizer 'nobody/no-such-model-xyz'")


# --- evaluation --------------------------------------------------------------------------------------------


class ScriptedBackend:
    """Returns fixed completions: greedy ones by prompt, sampled ones in turn. Lengths = characters."""

    def __init__(self, greedy: dict[str, str], sampled: dict[str, list[str]]):
        self.greedy, self.sampled = greedy, sampled

    def generate(self, model, prompts, num_generations=1, greedy=False, max_new_tokens=None) -> RolloutBatch:
        if greedy:
            texts = [self.greedy[p] for p in prompts]
        else:
            texts = [t for p in prompts for t in self.sampled[p][:num_generations]]
        n, T = len(texts), max(len(t) for t in texts)
        mask = torch.tensor([[1] * len(t) + [0] * (T - len(t)) for t in texts])
        zeros = torch.zeros(n, 1, dtype=torch.long)
        return RolloutBatch(zeros, zeros, torch.zeros(n, T, dtype=torch.long), mask, torch.zeros(n, dtype=torch.bool),
                            [p for p in prompts for _ in range(len(texts) // len(prompts))], texts)


def test_evaluate_accuracy_format_length_and_pass_at_k():
    from accelerate import Accelerator

    right, wrong = "<think>x</think><answer>4</answer>", "<think>y</think><answer>5</answer>"
    rows = [{"prompt": f"p{i}", "answer": "4"} for i in range(4)]
    greedy = {"p0": right, "p1": wrong, "p2": "4", "p3": right}  # 2 right, 3 formatted
    sampled = {"p0": [wrong, right, wrong], "p1": [wrong, wrong, wrong], "p2": [right, "x", "y"], "p3": [wrong] * 3}
    out = evaluate(None, ScriptedBackend(greedy, sampled), rows, Accelerator(cpu=True), batch_size=2,
                   max_new_tokens=8, pass_k=3, keep_samples=True)
    assert out["eval/accuracy"] == 0.5 and out["eval/format"] == 0.75
    assert out["eval/mean_length"] == (len(right) * 2 + len(wrong) + 1) / 4
    assert out["eval/pass@3"] == 0.5  # p0 and p2 have a right sample among 3
    assert [s["right"] for s in out["samples"]] == [True, False, False, True]


def test_evaluate_counts_only_full_credit_as_right():
    from accelerate import Accelerator

    rows = [{"prompt": "p", "answer": "1"}]
    partial = lambda completions, **cols: [0.1 for _ in completions]
    out = evaluate(None, ScriptedBackend({"p": "x"}, {}), rows, Accelerator(cpu=True), 4, 8, accuracy_fn=partial)
    assert out["eval/accuracy"] == 0.0


def test_standalone_evaluate_chat_template_on_a_base_tokenizer_is_one_line(tmp_path, capsys):
    """A chat template the model's tokenizer lacks ends `python -m grpo.evaluate` with one line, exit 2."""
    from grpo.evaluate import main

    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n')
    rc = main([str(ROOT / "models/tiny-base"), "--task", "dataset", "--task_kwargs",
               json.dumps({"path": str(data), "eval_split": "train"}), "--template", "chat", "--max_new_tokens", "16"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and err == ["error: template 'chat' needs a tokenizer with a chat_template; use an instruct model "
                               "or template r1 / qwen_math for base models"]


@pytest.mark.slow
def test_standalone_evaluate_command(tmp_path):
    out_file = tmp_path / "eval.json"
    proc = run(["-m", "grpo.evaluate", "models/tiny-base", "--task", "arithmetic", "--num_eval", "12",
                "--max_new_tokens", "64", "--batch_size", "12", "--pass_k", "2", "--output", str(out_file)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    m = re.match(r"models/tiny-base on arithmetic \(12 rows\): accuracy ([\d.]+)  format ([\d.]+)  mean_length ([\d.]+)"
                 r"  pass@2 ([\d.]+)", line)
    assert m, line
    record = json.loads(out_file.read_text())
    assert len(record["samples"]) == 12
    assert float(m.group(1)) == pytest.approx(sum(s["right"] for s in record["samples"]) / 12, abs=1e-4)
    assert float(m.group(1)) == pytest.approx(record["metrics"]["eval/accuracy"], abs=1e-4)
    bad = run(["-m", "grpo.evaluate", "nobody/no-such-model-xyz", "--task", "arithmetic"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: cannot load model 'nobody/no-such-model-xyz'")


@pytest.mark.parametrize("name, right, wrong", [
    ("qwen2.5-0.5b-gsm8k", "so the answer is \\boxed{{{gold}}}", "<think>x</think><answer>{gold}</answer>"),
    ("qwen2.5-3b-countdown", "{equation}</think><answer>{equation}</answer>", "x</think><answer>1 + 1</answer>"),
])
def test_eval_options_score_like_the_recipe_trains(name, right, wrong, tmp_path):
    """eval_options(cfg, task) gives the eval reward and format reward the recipe's template and kwargs."""
    from grpo.evaluate import eval_options

    cfg, task = prepare(["--config", recipe(name), "--smoke", "--output_dir", str(tmp_path / "o")])
    opts = eval_options(cfg, task)
    row = task.eval_rows()[0]
    cols = {k: [row[k]] * 2 for k in row if k != "prompt"}
    equation = f"{row['nums'][0]} + {row['nums'][1]} - {row['nums'][2]}" if "nums" in row else ""
    if "nums" in row and len(row["nums"]) == 4:
        equation += f" + {row['nums'][3]}"
    texts = [right.format(gold=row["answer"], equation=equation), wrong.format(gold=row["answer"])]
    # A boxed answer is right for the boxed recipe and the R1 tags are not; for countdown (prefilled <think>)
    # a right equation is right and a wrong one gets TinyZero's 0.1 format score, which is not "right".
    assert opts["accuracy_fn"](completions=texts, **cols) == ([1.0, 0.0] if "gsm8k" in name else [1.0, 0.1])
    assert opts["format_fn"](completions=texts[:1], **cols)[0] == 1.0
    assert opts["pass_k"] == cfg.eval_pass_k
