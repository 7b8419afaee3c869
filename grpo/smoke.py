"""``--smoke``: run any recipe offline in seconds, end to end.

``python train.py --config configs/<recipe>.yaml --smoke --output_dir X`` keeps the recipe's algorithm, rewards,
template, LoRA and evaluation settings and swaps three things:

* the model: a tiny random-initialised model of the *same architecture* (Qwen2: grouped-query attention, qkv
  bias, tied embeddings, the recipe model's RoPE base) built from a config, with a byte-level tokenizer that
  has Qwen's special tokens and chat template, all built offline (no download);
* the data: a handful of generated rows in the task's *raw* format (GSM8K ``#### 42`` solutions, MATH
  ``\\boxed{}`` solutions with levels, Countdown ``target``/``nums``), written to JSONL and read back through
  the task's real loader, so column mapping, gold normalisation, filters and templates all run;
* the budget: 2 steps, 2 prompts per step, at most 4 generations, 16-token completions, 4 eval rows.

A random model earns the same (zero) reward on every sample, and the trainer skips updates whose
advantages are all zero. So the smoke run adds ``grpo.smoke:smoke_signal`` (a deterministic pseudo-random
score of the completion text, weight 0.01): groups then differ and the update path (backward, optimizer,
LoRA gradients) really runs. It measures nothing and exists only in smoke runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

from grpo.config import GRPOConfig
from grpo.errors import ConfigError
from grpo.model import quiet_progress
from grpo.paths import resolve_model_path


def _qwen2(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, context: int, rope_theta: float,
           tie: bool = True, vocab: int = 151936) -> dict[str, Any]:
    """The architecture fields of a Qwen2 config.json."""
    return {"model_type": "qwen2", "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "max_position_embeddings": context,
            "rope_theta": rope_theta, "tie_word_embeddings": tie, "vocab_size": vocab}


# The recipe models' published configs (config.json on the hub), the fields that shape the architecture.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen/qwen2.5-0.5b": _qwen2(896, 4864, 24, 14, 2, 32768, 1e6),
    "qwen/qwen2.5-1.5b": _qwen2(1536, 8960, 28, 12, 2, 131072, 1e6),
    "qwen/qwen2.5-3b": _qwen2(2048, 11008, 36, 16, 2, 32768, 1e6),
    "qwen/qwen2.5-math-1.5b": _qwen2(1536, 8960, 28, 12, 2, 4096, 1e4),
    "qwen/qwen2.5-7b": _qwen2(3584, 18944, 28, 28, 4, 131072, 1e6, tie=False, vocab=152064),
}
# Instruct variants share their base model's architecture.
ARCHITECTURES.update({k + "-instruct": v for k, v in list(ARCHITECTURES.items())})

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
SMOKE_STEPS, SMOKE_PROMPTS, SMOKE_MAX_GENERATIONS, SMOKE_COMPLETION_TOKENS, SMOKE_EVAL_ROWS = 2, 2, 4, 16, 4
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # Qwen2.5's; EOS and pad = <|endoftext|>
# Qwen2.5's chat template, shortened (no tool calls).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def smoke_signal(completions: list[str], **columns: Any) -> list[float]:
    """A deterministic pseudo-random score in [0, 1) of each completion's text (smoke runs only; see module doc).

    Example:
        >>> smoke_signal(["a", "a"]) == smoke_signal(["a", "a"])
        True
    """
    return [zlib.crc32(c.encode("utf-8", "replace")) / 2**32 for c in completions]


def architecture(name: str) -> dict[str, Any]:
    """The architecture fields for ``name``: from the table, else a local folder's ``config.json``.

    Raises:
        ConfigError: an unknown hub name (the table lists the known ones).
    """
    key = name.lower().rstrip("/")
    if key in ARCHITECTURES:
        return dict(ARCHITECTURES[key])
    config_file = Path(resolve_model_path(name)) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text())
    known = ", ".join(sorted(k for k in ARCHITECTURES if not k.endswith("-instruct")))
    raise ConfigError(f"--smoke has no architecture for {name!r} offline; known: {known} (or give a local model "
                      "folder)")


def tiny_config(arch: dict[str, Any], vocab_size: int) -> Any:
    """The architecture shrunk to a tiny model: 2 layers, hidden 64, 4 heads; GQA, RoPE base and tying kept."""
    from transformers import AutoConfig

    fields = {k: v for k, v in arch.items() if not k.startswith("_") and k not in ("architectures", "auto_map")}
    model_type = fields.pop("model_type", "qwen2")
    heads = fields.get("num_attention_heads", 1)
    grouped = fields.get("num_key_value_heads", heads) < heads
    fields.update(TINY)
    fields.update(num_key_value_heads=2 if grouped else TINY["num_attention_heads"], vocab_size=vocab_size,
                  head_dim=TINY["hidden_size"] // TINY["num_attention_heads"], bos_token_id=0, eos_token_id=0,
                  pad_token_id=0, use_sliding_window=False, sliding_window=None,
                  max_window_layers=TINY["num_hidden_layers"])
    fields["max_position_embeddings"] = min(int(fields.get("max_position_embeddings", 4096)), 4096)
    fields.pop("dtype", None)
    fields.pop("torch_dtype", None)
    return AutoConfig.for_model(model_type, **fields)


def build_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + Qwen's special tokens + Qwen's chat template), built offline.

    Any text round-trips exactly; ``<|endoftext|>`` (id 0) is EOS and pad, as in Qwen2.5 base models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(byte_chars)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=4096)


def build_model(name: str, out: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny random model with ``name``'s architecture and the byte tokenizer to ``out``; returns ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer()
    config = tiny_config(architecture(name), len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with quiet_progress():  # "Writing model shards" for a 1 MB stand-in is noise
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (Path(out) / "smoke_info.json").write_text(json.dumps({"stands_in_for": name, "seed": seed}, indent=1))
    return str(out)


# --- generated rows in each task's raw format ---------------------------------------------------------


def _gsm8k_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        rows.append({"question": f"Tom has {a} apples and buys {b} more. How many apples does he have now?",
                     "answer": f"Tom has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b:,}"})
    return rows


def _math_rows(rng: random.Random, n: int, test: bool) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        level = 3 + i % 3 if test or i % 4 else 1  # every 4th train row is level 1: the levels filter drops it
        row = {"problem": f"Compute $\\frac{{{a}}}{{{b}}} + 1$.",
               "solution": f"We get $\\frac{{{a}}}{{{b}}} + 1 = \\boxed{{\\frac{{{a + b}}}{{{b}}}}}$."}
        if test:
            row.update(answer=f"\\frac{{{a + b}}}{{{b}}}", level=level, subject="Algebra")
        else:
            row.update(level=f"Level {level}", type="Algebra")
        rows.append(row)
    return rows


def _countdown_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        nums = [rng.randint(1, 50) for _ in range(rng.choice((3, 4)))]
        target = nums[0] + nums[1] - nums[2] + (nums[3] if len(nums) == 4 else 0)  # reachable by construction
        rows.append({"target": target, "nums": nums})
    return rows


def _generic_rows(rng: random.Random, n: int, kwargs: dict) -> list[dict]:
    qf, af = kwargs.get("question_field", "question"), kwargs.get("answer_field", "answer")
    gold = kwargs.get("gold", "raw")
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        answer = {"raw": str(a * b), "gsm8k": f"{a} * {b} = {a * b}\n#### {a * b}",
                  "boxed": f"$\\boxed{{{a * b}}}$"}.get(gold, str(a * b))
        rows.append({qf: f"What is {a} times {b}?", af: answer})
    return rows


def smoke_task_kwargs(task: str, kwargs: dict, folder: Path, seed: int) -> dict:
    """Write generated train/eval rows for ``task`` under ``folder``; return ``kwargs`` pointing the task at them."""
    rng = random.Random(seed)
    kw = {k: v for k, v in kwargs.items() if k not in ("path", "name", "split", "eval_path", "eval_name",
                                                           "eval_split", "num_eval", "max_train")}
    if task == "arithmetic":
        return {**kw, "num_eval": SMOKE_EVAL_ROWS}
    if task == "gsm8k":
        train, test = _gsm8k_rows(rng, 8), _gsm8k_rows(rng, SMOKE_EVAL_ROWS)
    elif task == "math":
        train, test = _math_rows(rng, 12, test=False), _math_rows(rng, SMOKE_EVAL_ROWS, test=True)
    elif task == "countdown":
        rows = _countdown_rows(rng, 8 + SMOKE_EVAL_ROWS)
        _write_jsonl(folder / "train.jsonl", rows)
        return {**kw, "path": str(folder / "train.jsonl"), "eval_split": None, "num_eval": SMOKE_EVAL_ROWS}
    elif task == "dataset":
        train, test = _generic_rows(rng, 8, kwargs), _generic_rows(rng, SMOKE_EVAL_ROWS, kwargs)
    else:
        raise ConfigError(f"--smoke cannot generate rows for task {task!r}; it knows arithmetic, gsm8k, math, "
                          "countdown and dataset")
    _write_jsonl(folder / "train.jsonl", train)
    _write_jsonl(folder / "test.jsonl", test)
    return {**kw, "path": str(folder / "train.jsonl"), "eval_path": str(folder / "test.jsonl"), "eval_split": "train"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def apply_smoke(cfg: GRPOConfig) -> GRPOConfig:
    """The smoke version of ``cfg``: tiny model and generated rows under ``output_dir/smoke-<key>``, 2 steps.

    Every rank of a multi-process launch calls this: each builds into a private temporary folder and renames it
    into place (atomic), and the losers of that race use the winner's identical files.
    """
    key_src = json.dumps([cfg.model_name_or_path, cfg.task, cfg.task_kwargs, cfg.seed, SMOKE_EVAL_ROWS], sort_keys=True,
                         default=str)
    folder = Path(cfg.output_dir) / f"smoke-{hashlib.sha1(key_src.encode()).hexdigest()[:10]}"
    if not (folder / "done").is_file():
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smoke-", dir=cfg.output_dir))
        try:
            build_model(cfg.model_name_or_path, tmp / "model", seed=cfg.seed)
            kwargs = smoke_task_kwargs(cfg.task, cfg.task_kwargs, tmp, cfg.seed)
            (tmp / "task_kwargs.json").write_text(json.dumps(kwargs))
            (tmp / "done").write_text("")
            try:
                os.rename(tmp, folder)
            except OSError:  # another rank (or an earlier run) got there first: its files are the same
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    # Paths inside task_kwargs.json point into the temporary folder that was renamed: rebase them.
    kwargs = json.loads((folder / "task_kwargs.json").read_text())
    for k in ("path", "eval_path"):
        if isinstance(kwargs.get(k), str):
            kwargs[k] = str(folder / Path(kwargs[k]).name)
    G = min(cfg.num_generations, SMOKE_MAX_GENERATIONS)
    accumulation = 2 if cfg.gradient_accumulation_steps > 1 else 1
    rewards = dict(cfg.rewards)
    rewards["grpo.smoke:smoke_signal"] = 0.01
    smoke = dataclasses.replace(
        cfg, model_name_or_path=str(folder / "model"), task_kwargs=kwargs, rewards=rewards, max_steps=SMOKE_STEPS,
        num_generations=G, gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=G * SMOKE_PROMPTS // accumulation, max_completion_length=SMOKE_COMPLETION_TOKENS,
        eval_max_completion_length=SMOKE_COMPLETION_TOKENS, eval_batch_size=SMOKE_EVAL_ROWS,
        eval_steps=SMOKE_STEPS if cfg.eval_steps else 0, eval_pass_k=min(cfg.eval_pass_k, 2), warmup_steps=0,
        dtype="auto", attn_implementation=None, cpu_threads=cfg.cpu_threads or 1, smoke=True,
    )
    if os.environ.get("RANK", "0") == "0":
        print(f"smoke: a tiny random {architecture(cfg.model_name_or_path).get('model_type', 'model')} stands in for "
              f"{cfg.model_name_or_path}; generated {cfg.task} rows; {SMOKE_STEPS} steps (overrides max_steps, batch "
              f"shape and lengths) -> {folder}", flush=True)
    return smoke
