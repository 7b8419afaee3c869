"""Held-out evaluation: greedy pass@1, pass@k when asked, format rate and mean completion length.

In training, :func:`evaluate` runs every ``eval_steps`` on the task's test rows. The same evaluation runs
standalone on any saved or hub model, so a base model can be scored before training and the result after::

    python -m grpo.evaluate Qwen/Qwen2.5-0.5B --task gsm8k                       # base model, GSM8K test
    python -m grpo.evaluate runs/gsm8k/final --config configs/qwen2.5-0.5b-gsm8k.yaml   # task, template, rewards
    python -m grpo.evaluate runs/math/final --task math --pass_k 8 --max_new_tokens 3000 --batch_size 64
    accelerate launch --num_processes 8 -m grpo.evaluate MODEL --task gsm8k      # rows sharded over GPUs

It prints accuracy (greedy pass@1), pass@k, format rate and mean length, and with ``--output FILE`` writes
them and every completion as JSON. A recipe with ``tools`` (``--config``) is evaluated with its tools, as it trained.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel

import rewards as reward_registry
from grpo.rollout import Backend, CompactSampler
from rewards.combine import batch_columns
from rewards.spec import reward_kwargs

if TYPE_CHECKING:
    from grpo.config import GRPOConfig
    from grpo.tasks import Task

RewardFn = Callable[..., list]


def _columns(rows: list[dict]) -> dict[str, list]:
    """Dataset columns batched for a reward call (``prompt`` goes as ``prompts``, the TRL name)."""
    return batch_columns(rows, [r.get("prompt") for r in rows])


def _right(values: list) -> list[float]:
    """1.0 where a reward gave full credit (>= 1), else 0.0: partial credit (e.g. a format score) is not right."""
    return [1.0 if v is not None and v >= 1.0 else 0.0 for v in values]


@torch.no_grad()
def evaluate(model: PreTrainedModel, backend: Backend, rows: list[dict], accelerator: Accelerator,
             batch_size: int, max_new_tokens: int, *, accuracy_fn: RewardFn | None = None,
             format_fn: RewardFn | None = None, pass_k: int = 1, keep_samples: bool = False) -> dict[str, Any]:
    """Greedy pass@1 (and pass@k with k sampled completions when ``pass_k > 1``) on ``rows``, sharded over ranks.

    Args:
        model: the policy (unwrapped).
        backend: generates completions; sampling for pass@k uses its own settings (the rollout temperature).
        rows: eval rows with ``prompt``, ``answer`` and task columns.
        accelerator: ranks split ``rows``; the totals are summed back.
        batch_size: prompts per generate call (pass@k: ``batch_size`` sequences per call).
        max_new_tokens: completion budget.
        accuracy_fn: the reward that says right (1) or wrong; default ``accuracy``.
        format_fn: the format reward; default ``format``.
        pass_k: k > 1 also samples k completions per prompt and reports ``eval/pass@k``.
        keep_samples: also return this rank's greedy completions under ``samples``.

    Returns:
        ``eval/accuracy`` (share of prompts the greedy completion gets right), ``eval/format`` (share in the
        template's format), ``eval/mean_length`` (tokens the model wrote, EOS included; tool outputs not),
        ``eval/num_rows``, and
        with ``pass_k > 1`` ``eval/pass@k`` (share of prompts with at least one right sample of k).
    """
    acc = accelerator
    shard = rows[acc.process_index :: acc.num_processes]
    accuracy_fn = accuracy_fn or reward_registry.get("accuracy")
    format_fn = format_fn or reward_registry.get("format")
    correct = formatted = length = passed = 0.0
    samples = []
    for i in range(0, len(shard), batch_size):
        chunk = shard[i : i + batch_size]
        batch = backend.generate(model, [r["prompt"] for r in chunk], 1, greedy=True, max_new_tokens=max_new_tokens)
        right = _right(accuracy_fn(completions=batch.completions, **_columns(chunk)))
        correct += sum(right)
        formatted += sum(v or 0.0 for v in format_fn(completions=batch.completions, **_columns(chunk)))
        length += batch.model_lengths.sum().item()
        if keep_samples:
            samples += [{"prompt": r["prompt"], "answer": r.get("answer"), "completion": c, "right": bool(ok)}
                        for r, c, ok in zip(chunk, batch.completions, right)]
    if pass_k > 1:
        per_call = max(1, batch_size // pass_k)
        for i in range(0, len(shard), per_call):
            chunk = shard[i : i + per_call]
            batch = backend.generate(model, [r["prompt"] for r in chunk], pass_k, max_new_tokens=max_new_tokens)
            repeated = [r for r in chunk for _ in range(pass_k)]
            right = torch.tensor(_right(accuracy_fn(completions=batch.completions, **_columns(repeated))))
            passed += right.view(len(chunk), pass_k).amax(dim=1).sum().item()  # any of the k right
    totals = acc.reduce(torch.tensor([correct, formatted, length, passed, float(len(shard))], device=acc.device),
                        reduction="sum")
    c, f, n_tokens, p, n = totals.tolist()
    out: dict[str, Any] = {"eval/accuracy": c / max(n, 1.0), "eval/format": f / max(n, 1.0),
                           "eval/mean_length": n_tokens / max(n, 1.0), "eval/num_rows": n}
    if pass_k > 1:
        out[f"eval/pass@{pass_k}"] = p / max(n, 1.0)
    if keep_samples:
        out["samples"] = samples
    return out


def bound_reward(name: str, kwargs: dict, defaults: dict | None = None) -> RewardFn:
    """The reward ``name`` with its kwargs bound: the task's defaults (``reward_defaults``) < ``kwargs`` (the
    ``rewards:`` config, or ``--reward_kwargs``). The one place eval rewards are built, for training and the CLI."""
    fn = reward_registry.get(name)
    kwargs = {**(defaults or {}), **kwargs}
    return functools.partial(fn, **kwargs) if kwargs else fn


def eval_options(cfg: GRPOConfig, task: Task | None = None) -> dict[str, Any]:
    """``evaluate`` keyword arguments from a ``GRPOConfig`` (and the task, whose template sets reward defaults).

    The eval reward and the format reward get the kwargs the run trains with, so a boxed-answer recipe is
    scored on its ``\\boxed{}`` and a prefilled ``<think>`` does not count as a format error. The trainer calls
    ``evaluate(..., **eval_options(cfg, task))``.
    """
    from grpo.tasks import reward_defaults

    defaults = reward_defaults(task) if task is not None else {}
    return {"accuracy_fn": bound_reward(cfg.eval_reward, reward_kwargs(cfg.rewards, cfg.eval_reward),
                                        defaults.get(cfg.eval_reward)),
            "format_fn": bound_reward("format", reward_kwargs(cfg.rewards, "format"), defaults.get("format")),
            "pass_k": cfg.eval_pass_k}


def template_overrides(task: Any, defaults: dict[str, dict], explicit: dict[str, dict]) -> list[str]:
    """Check explicit reward kwargs against the answer format the task's template (or ``system_prompt``) implies.

    A kwarg that contradicts it (``answer_format: r1`` on a boxed prompt) is an error; ``auto`` and
    ``last_number`` read any template and win, with a note saying so (never silently).

    Returns:
        the note lines to print.

    Raises:
        ConfigError: naming the kwarg, the template and the value to set.
    """
    from grpo.errors import ConfigError

    style = f"system_prompt {task.system_prompt}" if task.template == "chat" else f"template {task.template}"
    notes = []
    for name, kwargs in explicit.items():
        for key, want in defaults.get(name, {}).items():
            have = kwargs.get(key, want)
            if have == want:
                continue
            if have in ("auto", "last_number"):
                notes.append(f"note: {name} scores with {key}: {have} (given), not the {want} that {style} implies")
                continue
            also = " (or last_number / auto)" if key == "answer_format" else ""
            raise ConfigError(f"{name} kwargs {key}: {have} contradicts the {style}, which asks for {key}: {want}; "
                              f"set {key}: {want}{also}, or change the template")
    return notes


# --- the standalone command ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m grpo.evaluate", description="Score a model on a task's eval rows: "
                                "accuracy (greedy pass@1), pass@k, format rate, mean completion length.")
    p.add_argument("model", help="a saved model folder (full or LoRA adapter) or a hub name")
    p.add_argument("--config", help="a training recipe: task, task_kwargs, rewards and eval settings come from it")
    p.add_argument("--task", help="registered task (gsm8k, math, countdown, dataset, arithmetic)")
    p.add_argument("--task_kwargs", help="YAML/JSON mapping, e.g. '{path: data/test.jsonl, template: r1}'")
    p.add_argument("--data", help="score these rows instead of the task's test split: a local .jsonl/.parquet/.csv "
                   "file or a hub dataset (its 'test' split), in the task's raw format")
    p.add_argument("--template", help="prompt template override: r1, qwen_math, chat, plain")
    p.add_argument("--num_eval", type=int, help="score only the first N eval rows")
    p.add_argument("--reward", help="the reward that decides right/wrong (default: accuracy, or the recipe's "
                   "eval_reward)")
    p.add_argument("--reward_kwargs", help="YAML/JSON kwargs for that reward, e.g. '{answer_format: boxed}'")
    p.add_argument("--format_kwargs", help="YAML/JSON kwargs for the format reward, e.g. '{template: boxed}'")
    p.add_argument("--batch_size", type=int, help="prompts per generate call (default 64)")
    p.add_argument("--max_new_tokens", type=int, help="completion budget (default 1024)")
    p.add_argument("--pass_k", type=int, help="also sample k completions per prompt and report pass@k")
    p.add_argument("--temperature", type=float, help="sampling temperature for pass@k (default 1.0)")
    p.add_argument("--gguf_file", default="", help="a .gguf file inside the folder MODEL to load (needs gguf)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float32")
    p.add_argument("--attn_implementation", help="sdpa, eager, flash_attention_2...")
    p.add_argument("--trust_remote_code", action="store_true", help="let hub code run (off by default)")
    p.add_argument("--output", help="write metrics and completions to this JSON file")
    return p


def _yaml(text: str | None, what: str) -> dict:
    import yaml

    if not text:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a mapping like '{{key: value}}', got {text!r}")
    return value


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Merge defaults < recipe (``--config``, parsed and checked by ``load_config``) < explicit flags."""
    s: dict[str, Any] = {"task": "gsm8k", "task_kwargs": {}, "rewards": {}, "reward": "accuracy", "batch_size": 64,
                         "max_new_tokens": 1024, "pass_k": 1, "temperature": 1.0}
    if args.config:
        from grpo.cli import load_config

        cfg = load_config(["--config", args.config])
        s.update(task=cfg.task, task_kwargs=dict(cfg.task_kwargs), rewards=cfg.rewards, reward=cfg.eval_reward,
                 batch_size=cfg.eval_batch_size, pass_k=cfg.eval_pass_k, temperature=cfg.temperature,
                 max_new_tokens=cfg.eval_max_completion_length or cfg.max_completion_length, explicit_budget=True,
                 tools_config=cfg if cfg.tools else None)  # a recipe with tools is evaluated with them
    if args.task and args.task != s["task"]:
        s["task_kwargs"] = {}  # another task than the recipe's: its kwargs do not apply
    for key in ("task", "reward", "batch_size", "max_new_tokens", "pass_k", "temperature"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    s["explicit_budget"] = s.get("explicit_budget", False) or args.max_new_tokens is not None
    s["task_kwargs"].update(_yaml(args.task_kwargs, "--task_kwargs"))
    if args.data:
        s["task_kwargs"].update(eval_path=args.data, eval_split=s["task_kwargs"].get("eval_split") or "test")
    if s["task"] != "arithmetic":
        s["task_kwargs"]["eval_only"] = True  # the train split is not needed to score a model
    if args.template:
        s["task_kwargs"]["template"] = args.template
    if args.num_eval is not None:
        s["task_kwargs"]["num_eval"] = args.num_eval
    s["reward_kwargs"] = {**reward_kwargs(s["rewards"], s["reward"]), **_yaml(args.reward_kwargs, "--reward_kwargs")}
    s["format_kwargs"] = {**reward_kwargs(s["rewards"], "format"), **_yaml(args.format_kwargs, "--format_kwargs")}
    return s


def _preflight(args: argparse.Namespace, s: dict[str, Any]) -> Any:
    """The same preflight as training (model folder, task built once, rewards and their columns). -> the task."""
    from grpo.config import GRPOConfig, validate
    from grpo.preflight import preflight

    for flag in ("batch_size", "max_new_tokens", "pass_k"):
        if s[flag] < 1:
            raise ValueError(f"--{flag} must be >= 1, got {s[flag]}")
    rewards = dict(s["rewards"] or {s["reward"]: 1.0})
    if s["reward"] in rewards and s["reward_kwargs"]:  # check the kwargs that will score, --reward_kwargs included
        spec = rewards[s["reward"]]
        rewards[s["reward"]] = {**(spec if isinstance(spec, dict) else {"weight": spec}), "kwargs": s["reward_kwargs"]}
    cfg = GRPOConfig(model_name_or_path=args.model, task=s["task"], task_kwargs=s["task_kwargs"],
                     rewards=rewards, eval_reward=s["reward"], eval_pass_k=s["pass_k"],
                     # the context check applies to an explicit --max_new_tokens or recipe budget, not the default
                     max_completion_length=s["max_new_tokens"] if s.get("explicit_budget") else 1,
                     temperature=s["temperature"],
                     eval_batch_size=s["batch_size"], trust_remote_code=args.trust_remote_code,
                     gguf_file=args.gguf_file)  # else preflight looks for config.json beside the .gguf file
    validate(cfg)
    _, task = preflight(cfg, resume=False)
    return task


def main(argv: list[str] | None = None) -> int:
    """The ``python -m grpo.evaluate`` command. Returns the exit code (2 for a bad argument, model or dataset)."""
    args = _parser().parse_args(argv)
    from grpo.accelerator import close_distributed
    from grpo.errors import ConfigError
    from grpo.model import load_for_eval
    from grpo.rollout import toolbox_for_run
    from grpo.tasks import reward_defaults

    try:
        s = _settings(args)
        task = _preflight(args, s)
        defaults = reward_defaults(task)  # kwargs that match the task's template; explicit ones win, said aloud
        for line in template_overrides(task, defaults, {s["reward"]: s["reward_kwargs"], "format": s["format_kwargs"]}):
            print(line, file=sys.stderr, flush=True)
        accuracy_fn = bound_reward(s["reward"], s["reward_kwargs"], defaults.get(s["reward"]))
        format_fn = bound_reward("format", s["format_kwargs"], defaults.get("format"))
        model, tokenizer = load_for_eval(args.model, args.dtype, args.trust_remote_code, args.attn_implementation,
                                         args.gguf_file)
        rows = task.eval_rows(tokenizer)  # a chat template the tokenizer lacks is a one-line error too
        toolbox = toolbox_for_run(s["tools_config"], tokenizer) if s.get("tools_config") else None
    except (ConfigError, ValueError, TypeError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    acc = Accelerator(cpu=not torch.cuda.is_available())
    model = model.to(acc.device)
    backend = CompactSampler(tokenizer, s["max_new_tokens"], temperature=s["temperature"], toolbox=toolbox)
    result = evaluate(model, backend, rows, acc, s["batch_size"], s["max_new_tokens"],
                      accuracy_fn=accuracy_fn, format_fn=format_fn, pass_k=s["pass_k"], keep_samples=bool(args.output))
    backend.close()
    if acc.is_main_process:
        n = int(result["eval/num_rows"])
        line = (f"{args.model} on {s['task']} ({n} rows): accuracy {result['eval/accuracy']:.4f}  format "
                f"{result['eval/format']:.4f}  mean_length {result['eval/mean_length']:.1f}")
        if s["pass_k"] > 1:
            k = s["pass_k"]
            line += f"  pass@{k} {result[f'eval/pass@{k}']:.4f}"
        print(line, flush=True)
        if args.output:
            metrics = {k: v for k, v in result.items() if k != "samples"}
            record = {"model": args.model, "task": s["task"], "task_kwargs": s["task_kwargs"], "metrics": metrics,
                      "samples": result.get("samples", [])}
            with open(args.output, "w") as f:
                json.dump(record, f, indent=1, default=str)
    close_distributed()  # under `accelerate launch`: every rank finished, end the process group before exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
