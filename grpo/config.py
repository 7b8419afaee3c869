"""Typed run configuration: YAML first, ``--key value`` CLI overrides, value checks with one clear message.

Field names follow TRL's ``GRPOConfig`` where the concept is the same, so a TRL or open-r1 user reads our
recipes without a dictionary. ``load_config(argv)`` parses and checks values and has no side effects: it reads
the YAML file and nothing else. Checks that touch the world (output folder, model files, datasets, reward
modules, installed trackers, ``--smoke`` stand-ins) run afterwards in :func:`grpo.preflight.preflight`. Every
problem raises :class:`ConfigError` whose message is one line naming the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpo import core
from grpo.errors import ConfigError
from grpo.reasoning import DEFAULT_REFLECTION_WORDS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class GRPOConfig:
    """Everything a run needs. Each field's ``help`` is its documentation (``python train.py --help``)."""

    # --- model and task
    model_name_or_path: str = _f("models/tiny-base", "Local path or hub name of the base model to train.")
    gguf_file: str = _f("", "A .gguf file inside model_name_or_path to load instead of safetensors (needs the "
                            "gguf package): de-quantised to a plain float model; final/ and checkpoints are plain "
                            "HF folders.")
    task: str = _f("arithmetic", "Registered task name (grpo.tasks): where prompts and gold answers come from.")
    task_kwargs: dict = _f({}, "Task-specific options, e.g. {max_terms: 8, num_eval: 256} for arithmetic.")
    rewards: dict = _f(
        {"accuracy": 1.0, "format": 0.1},
        "Reward functions and weights: {name: weight} or {name: {weight: w, kwargs: {...}}}; names are "
        "registered rewards, 'package.module.function' or 'package.module:function'.",
    )
    # --- output
    output_dir: str = _f("runs/default", "Where metrics.jsonl, run_info.json, config.yaml and the final model go.")
    seed: int = _f(42, "Seed for data order, sampling and everything else random.")
    # --- batch shape
    max_steps: int = _f(100, "Number of GRPO steps (each: one rollout batch, then num_iterations updates).")
    num_generations: int = _f(8, "G: completions sampled per prompt (the group for advantages).")
    per_device_train_batch_size: int = _f(128, "Completions per micro-batch per process; x gradient_accumulation_steps must be divisible by num_generations.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step; the rollout batch per process is per_device_train_batch_size x this.")
    update_buckets: int = _f(4, "Each micro-batch is sorted by length and cut into this many buckets for the update, each padded only to its own longest sequence (less padding, same gradient).")
    lm_head_chunk_size: int = _f(512, "Update: apply the lm_head fused with the log-softmax this many tokens at a time, so the full (tokens x vocabulary) logits never exist (same gradient); 0 computes all logits at once.")
    share_prompt_forward: bool = _f(True, "In the update, run each prompt once for its G completions and share its KV cache (same gradient, fewer FLOPs); off under gradient_checkpointing.")
    max_completion_length: int = _f(80, "Most tokens a completion may have; longer ones are cut (truncated).")
    # --- sampling
    temperature: float = _f(1.0, "Sampling temperature for rollouts (log-probs use the same temperature).")
    top_p: float = _f(1.0, "Nucleus sampling for rollouts; 1.0 = off.")
    top_k: int = _f(0, "Top-k sampling for rollouts; 0 = off.")
    rollout_backend: str = _f("compact", "compact (a decode loop that drops finished sequences: fastest without vLLM), hf (model.generate), or vllm (needs the vllm extra and a GPU).")
    generation_kwargs: dict = _f({}, "Extra sampling options, e.g. {min_new_tokens: 16} or {suppress_tokens: [id]} (hf: GenerationConfig fields; vllm: mapped to SamplingParams, see docs/rollout.md).")
    cpu_prepacked_decode: bool = _f(True, "CPU, float32, no LoRA: decode from a copy of the large linear weights packed once per optimizer step for oneDNN (about 2x faster decode matmuls; one more copy of the weights in memory). See grpo/rollout/packed.py.")
    prompt_bucket: int = _f(0, "Pad prompts to a multiple of this many tokens (with compile_generation: fewer distinct shapes to compile); 0 = off.")
    compile_generation: bool = _f(False, "hf backend on GPU: static KV cache + torch.compile (CUDA graphs) for decoding; the first steps pay compilation.")
    vllm_gpu_memory_utilization: float = _f(0.3, "vllm backend: share of GPU memory vLLM may take (the rest is for training).")
    vllm_enable_sleep_mode: bool = _f(True, "vllm backend: free vLLM's weights and KV cache during updates (sleep level 2) "
                                      "and push the weights back before each rollout.")
    # --- algorithm
    learning_rate: float = _f(1e-6, "AdamW peak learning rate.")
    lr_scheduler_type: str = _f("constant", "transformers scheduler name: constant, linear, cosine, constant_with_warmup...")
    warmup_steps: int = _f(0, "Linear warmup steps for the scheduler.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.99, "AdamW beta2.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 turns clipping off.")
    beta: float = _f(0.0, "Weight of the k3 KL penalty to the frozen reference model; 0 loads no reference model.")
    epsilon: float = _f(0.2, "Lower clip range: ratio >= 1 - epsilon.")
    epsilon_high: float | None = _f(None, "Upper clip range: ratio <= 1 + epsilon_high (DAPO clip-higher: 0.28); default = epsilon.")
    loss_type: str = _f("dapo", "Loss aggregation: grpo, bnpo, dr_grpo or dapo (see grpo/core.py).")
    scale_rewards: str = _f("group", "Advantage scaling: group (GRPO), batch, or none (Dr. GRPO).")
    advantage_estimator: str = _f("grpo", "Advantage estimator: grpo (group mean baseline) or rloo (leave-one-out).")
    use_bias_correction_kl: bool = _f(True, "Multiply the KL term by the importance ratio (TRL 1.16's default); only matters when beta > 0.")
    importance_sampling_level: str = _f("token", "token (GRPO) or sequence (GSPO) importance ratios.")
    mask_truncated_completions: bool = _f(False, "Leave completions cut at max_completion_length out of the loss (DAPO).")
    dynamic_sampling: bool = _f(False, "DAPO dynamic sampling: drop groups whose rewards all agree and sample more prompts until the batch is full.")
    max_sampling_rounds: int = _f(3, "Dynamic sampling: at most this many rollout rounds per step; then the batch is topped up with dropped groups.")
    num_iterations: int = _f(1, "mu: policy updates per rollout batch (1 = on-policy; ratio is then exactly 1).")
    vllm_importance_sampling_correction: bool | None = _f(
        None, "Reweight the loss by the trainer/sampler probability ratio of the sampled tokens (TRL's correction for "
        "the sampler's numerical mismatch). None = auto: on for rollout_backend vllm (TRL's default), off for compact "
        "and hf, which sample with the training weights (true there measures it: sampling/* metrics).")
    vllm_importance_sampling_mode: str = _f("sequence_mask", "token_truncate, token_mask, sequence_truncate or "
                                            "sequence_mask (TRL's names and default; see grpo/core.py).")
    vllm_importance_sampling_clip_max: float | None = _f(3.0, "Upper bound C_max of the correction ratio: truncate "
                                                         "modes clip to it, mask modes zero tokens/sequences above it.")
    vllm_importance_sampling_clip_min: float | None = _f(None, "Lower bound C_min of the correction ratio (none by "
                                                         "default).")
    # --- evaluation, logging, saving
    eval_steps: int = _f(10, "Evaluate on the held-out set every N steps (and before the first and after the last); 0 = never.")
    eval_batch_size: int = _f(128, "Prompts per generate call during evaluation.")
    eval_max_completion_length: int | None = _f(None, "Max new tokens during evaluation; default = max_completion_length.")
    logging_steps: int = _f(1, "Print a console line every N steps (metrics.jsonl gets every step).")
    report_to: list | None = _f(None, "Trackers that get the metrics too: tensorboard, wandb, trackio, all (those installed) or none; "
                                "a name, a comma list or a YAML list.")
    log_completions_steps: int = _f(10, "Write every sampled completion of step 1, of every N-th step and of the last step to completions.jsonl; 0 = never.")
    reflection_words: list = _f(list(DEFAULT_REFLECTION_WORDS), "Words counted by reasoning/reflection_ratio (case-insensitive, whole words); [] = off.")
    save_final_model: bool = _f(True, "save_pretrained the trained model and tokenizer to output_dir/final at the end.")
    # --- checkpoints and resume
    save_steps: int = _f(500, "Save a checkpoint (model, optimizer, scheduler, RNG, data position) every N steps and at the end; 0 = only at the end.")
    save_total_limit: int | None = _f(2, "Keep only the newest N checkpoints; None = keep all.")
    resume_from_checkpoint: str | None = _f(None, "Resume from this checkpoint folder. Without it, a run resumes from the newest checkpoint in output_dir.")
    overwrite_output_dir: bool = _f(False, "Start fresh even if output_dir has checkpoints (they are deleted).")
    max_bad_steps: int = _f(5, "Stop after this many steps in a row whose loss or gradient was not finite (each is skipped).")
    cpu_threads: int | None = _f(None, "torch threads per process on CPU; None = torch's default. Tiny models run faster on 1.")
    # --- model loading, precision, LoRA (grpo/model.py)
    dtype: str = _f("auto", "Weight dtype: auto (float32 weights to train, bfloat16 for a frozen LoRA base on GPU), bfloat16, "
                    "float16 or float32. Compute in bf16 with `accelerate launch --mixed_precision bf16`.")
    attn_implementation: str | None = _f(None, "Attention kernel: sdpa, eager, flash_attention_2...; None = transformers' default.")
    gradient_checkpointing: bool = _f(False, "Recompute activations during backward: much less memory, about 30% slower updates.")
    trust_remote_code: bool = _f(False, "Let a hub model or tokenizer run its own Python code. Off: only enable it for code you trust.")
    use_peft: bool = _f(False, "Train a LoRA adapter (peft) instead of all weights; with beta > 0 the reference model is the base "
                        "with the adapter switched off (no second copy).")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha (the adapter is scaled by lora_alpha / lora_r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.")
    lora_target_modules: list = _f(["all-linear"], "Modules that get adapters: [all-linear] (every linear layer but the "
                                   "output head) or names such as [q_proj, v_proj].")
    save_merged: bool = _f(False, "With use_peft: save the final model with the adapter merged in (a plain model) instead of "
                           "the adapter alone.")
    eval_pass_k: int = _f(1, "k > 1: also sample k completions per eval prompt at the rollout temperature and report eval/pass@k.")
    eval_reward: str = _f("accuracy", "The reward that decides eval/accuracy (1 = right), e.g. countdown; its kwargs are "
                          "taken from `rewards` when it is listed there.")
    smoke: bool = _f(False, "Smoke test (--smoke): a tiny random model of the recipe's architecture, a few generated rows "
                     "in the task's format, 2 steps. Runs any recipe offline in seconds.")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``int`` -> (int, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


_HINTS = typing.get_type_hints(GRPOConfig)
_TYPES = {name: _strip_optional(tp) for name, tp in _HINTS.items()}


def _coerce(key: str, value: Any, from_cli: bool) -> Any:
    """Convert ``value`` to the field's type; raise ConfigError with the expected type if it cannot be."""
    tp, optional = _TYPES[key]
    # "none" on the command line means null only for optional fields: `--scale_rewards none` is a real value.
    if value is None or (optional and from_cli and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"config key '{key}' cannot be empty; give a {tp.__name__}")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str) and not from_cli:
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool) or (isinstance(value, str) and not from_cli):
                # YAML 1.1 reads "1e-4" (no dot) as a string: accept it, it is what users write.
                if isinstance(value, str):
                    return float(value)
                raise ValueError
            return float(value)
        if tp is dict:
            if isinstance(value, str) and from_cli:
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError
            return value
        if tp is list:
            if isinstance(value, str) and from_cli:
                value = yaml.safe_load(value)  # "[a, b]" on the command line
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]  # "a" or "a,b"
            if not isinstance(value, list):
                raise ValueError
            return value
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (ValueError, TypeError, yaml.YAMLError):
        pass
    else:
        return value
    raise ConfigError(f"config key '{key}' must be {'an' if tp is int else 'a'} {tp.__name__}, got {value!r}")


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_TYPES), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see `python train.py --help` for the keys"
    return ConfigError(f"unknown config key '{key}'{hint}")


def parse_cli(argv: list[str]) -> tuple[str | None, dict[str, str]]:
    """Split ``--config PATH`` and ``--key value`` / ``--key=value`` pairs. Returns (config path, overrides)."""
    config_path, overrides, i = None, {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; options look like --key value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq and key == "smoke" and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
            value = "true"  # --smoke is a switch: bare means on
        elif not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"option --{key} needs a value, e.g. --{key} VALUE")
            value = argv[i + 1]
            i += 1
        i += 1
        if key == "config":
            config_path = value
        else:
            overrides[key] = value
    return config_path, overrides


def load_config(argv: list[str] | None = None) -> GRPOConfig:
    """Build and validate the config: defaults < YAML file (``--config``, else configs/default.yaml) < CLI.

    Raises:
        ConfigError: unknown or mistyped key, missing file, inconsistent batch shape... one line each.
    """
    config_path, overrides = parse_cli(list(argv or []))
    path = Path(config_path) if config_path else DEFAULT_CONFIG
    if not path.is_file():
        close = _close_config(path)
        hint = f" (did you mean {close}?)" if close else ""
        raise ConfigError(f"config file not found: {path}{hint}; pass an existing YAML file with --config (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _TYPES:
            raise _unknown_key(key)
        values[key] = _coerce(key, value, from_cli=False)
    for key, value in overrides.items():
        if key not in _TYPES:
            raise _unknown_key(key)
        values[key] = _coerce(key, value, from_cli=True)
    cfg = GRPOConfig(**values)
    validate(cfg)
    return cfg


def _close_config(path: Path) -> str | None:
    """The YAML file closest in name to a missing ``--config`` path: one beside it, or one of the project's configs/
    (shown relative to the working folder when it is inside it)."""
    options: dict[str, Path] = {}
    if path.parent.is_dir():
        options.update({f.name: path.parent / f.name for f in path.parent.glob("*.y*ml")})
    for f in DEFAULT_CONFIG.parent.glob("*.y*ml"):
        options.setdefault(f.name, f)
    close = difflib.get_close_matches(path.name, sorted(options), n=1, cutoff=0.6)
    if not close:
        return None
    found = options[close[0]]
    relative = os.path.relpath(found) if found.is_absolute() else str(found)
    return str(found) if relative.startswith("..") else relative


def validate(cfg: GRPOConfig) -> None:
    """Check values and their consistency before anything heavy is loaded. Raises ConfigError."""
    if cfg.num_generations < 2:  # before the >= 1 checks: 0 and 1 get the same message
        raise ConfigError(f"config key 'num_generations' must be >= 2 (group advantages compare samples of the same "
                          f"prompt), got {cfg.num_generations}")
    positive = ["update_buckets", "max_sampling_rounds", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                "max_completion_length", "num_iterations", "eval_batch_size", "logging_steps"]
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(cfg, key)}")
    for key in ["lm_head_chunk_size", "eval_steps", "save_steps", "max_bad_steps", "warmup_steps", "beta", "weight_decay", "max_grad_norm", "epsilon", "top_k"]:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {getattr(cfg, key)}")
    if cfg.temperature <= 0:
        raise ConfigError(f"temperature must be > 0 for sampling, got {cfg.temperature}")
    if cfg.learning_rate <= 0:
        raise ConfigError(f"learning_rate must be > 0, got {cfg.learning_rate}")
    rollout = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if rollout % cfg.num_generations:
        raise ConfigError(
            f"per_device_train_batch_size x gradient_accumulation_steps = {rollout} is not divisible by "
            f"num_generations = {cfg.num_generations}; each prompt's {cfg.num_generations} completions must stay "
            f"together (e.g. per_device_train_batch_size {cfg.num_generations * max(1, rollout // cfg.num_generations)})"
        )
    if cfg.update_buckets > cfg.per_device_train_batch_size:
        raise ConfigError(f"update_buckets {cfg.update_buckets} is larger than per_device_train_batch_size "
                          f"{cfg.per_device_train_batch_size}; lower update_buckets")
    choices = {  # the registries of grpo/core.py: a new loss or estimator is one registered function
        "loss_type": core.LOSS_AGGREGATIONS,
        "scale_rewards": core.REWARD_SCALES,
        "advantage_estimator": core.ADVANTAGE_ESTIMATORS,
        "importance_sampling_level": core.IMPORTANCE_LEVELS,
        "vllm_importance_sampling_mode": ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}; got {getattr(cfg, key)!r}")
    lo, hi = cfg.vllm_importance_sampling_clip_min, cfg.vllm_importance_sampling_clip_max
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"vllm_importance_sampling_clip_min {lo} must be below vllm_importance_sampling_clip_max {hi}")
    if cfg.vllm_importance_sampling_mode.endswith("_truncate") and lo is None and hi is None:
        raise ConfigError("a *_truncate vllm_importance_sampling_mode needs vllm_importance_sampling_clip_max or _min")
    if not cfg.rewards:
        raise ConfigError("config key 'rewards' is empty; give at least one reward, e.g. {accuracy: 1.0}")
    from rewards.spec import parse_specs

    try:
        parse_specs(cfg.rewards)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        raise ConfigError(f"save_total_limit must be >= 1 (or null to keep all), got {cfg.save_total_limit}")
    _check_model_options(cfg)
    _check_logging(cfg)


DTYPES = ("auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32")


def _check_model_options(cfg: GRPOConfig) -> None:
    """dtype, LoRA and evaluation options."""
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {cfg.dtype!r}")
    if cfg.lora_r < 1 or cfg.lora_alpha <= 0:
        raise ConfigError(f"lora_r must be >= 1 and lora_alpha > 0, got {cfg.lora_r} and {cfg.lora_alpha}")
    if not 0 <= cfg.lora_dropout < 1:
        raise ConfigError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    if not cfg.lora_target_modules or not all(isinstance(m, str) for m in cfg.lora_target_modules):
        raise ConfigError("lora_target_modules must be a list of module names, e.g. [all-linear] or [q_proj, v_proj]")
    if cfg.save_merged and not cfg.use_peft:
        raise ConfigError("save_merged needs use_peft: true (without LoRA the saved model is already a plain model)")
    if cfg.eval_pass_k < 1:
        raise ConfigError(f"eval_pass_k must be >= 1, got {cfg.eval_pass_k}")


# report_to name -> (modules any of which makes it work, the pip extra that installs one)
TRACKERS = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"), "wandb": (("wandb",), "wandb"),
            "trackio": (("trackio",), "trackio")}


def installed(modules: tuple[str, ...]) -> bool:
    """True when any of ``modules`` can be imported (looked up, not imported)."""
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in modules)


def report_to_list(report_to: list | str | None) -> list[str]:
    """Tracker names from ``report_to``: None/'none' -> [], 'all' -> every installed tracker, else as given."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [str(n).strip().lower() for n in names]
    if "all" in names:
        return [t for t, (modules, _) in TRACKERS.items() if installed(modules)]
    return list(dict.fromkeys(n for n in names if n and n != "none"))


def _check_logging(cfg: GRPOConfig) -> None:
    """Tracker names must be known and reflection words strings (whether trackers are installed: preflight)."""
    if cfg.log_completions_steps < 0:
        raise ConfigError(f"config key 'log_completions_steps' must be >= 0 (0 = never), got {cfg.log_completions_steps}")
    for name in report_to_list(cfg.report_to):
        if name not in TRACKERS:
            raise ConfigError(f"report_to: unknown tracker '{name}'; choose from {', '.join(TRACKERS)}, all or none")
    bad = [w for w in cfg.reflection_words if not isinstance(w, str) or not w.strip()]
    if bad:
        raise ConfigError(f"reflection_words must be non-empty strings, got {bad[0]!r}; e.g. [wait, verify, let me]")


def to_dict(cfg: GRPOConfig) -> dict:
    """The resolved config as a plain dict (written to output_dir/config.yaml)."""
    return dataclasses.asdict(cfg)


def help_text() -> str:
    """``--help``: every key with the value a bare run uses (``configs/default.yaml`` over the built-in default),
    the built-in default where the two differ, and its documentation. Both values are read from where the run
    reads them, so the help cannot drift from the recipe."""
    try:
        recipe = yaml.safe_load(DEFAULT_CONFIG.read_text()) or {}
    except (OSError, yaml.YAMLError):
        recipe = {}
    lines = ["usage: train.py [--config FILE.yaml] [--key value ...]", "",
             (f"A bare run uses the recipe {DEFAULT_CONFIG.relative_to(PROJECT_ROOT)} (the tiny base on CPU). "
              "--config FILE replaces that recipe:"),
             "FILE is layered on the built-in defaults, not on default.yaml; --key value flags override either.",
             "", "keys (value in a bare run; [built-in default under --config, where it differs]):"]
    for f in dataclasses.fields(GRPOConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = f"{recipe[f.name]!r} [{default!r}]" if f.name in recipe and recipe[f.name] != default else repr(default)
        lines.append(f"  --{f.name} ({shown})\n      {f.metadata['help']}")
    return "\n".join(lines)


# Keys that may change when a run resumes: they decide how long it runs and what it writes, not what a step
# computes. Every other key (model, task and its kwargs, rewards, batch shape, G, algorithm, sampling, seed...)
# must match the checkpoint's run, or resuming would silently mix two experiments.
RESUMABLE_KEYS = frozenset({
    "max_steps", "eval_steps", "eval_batch_size", "logging_steps", "report_to", "log_completions_steps",
    "save_final_model", "save_steps", "save_total_limit", "resume_from_checkpoint", "overwrite_output_dir",
    "max_bad_steps", "cpu_threads", "output_dir", "reflection_words", "eval_pass_k", "eval_max_completion_length",
    "eval_reward", "smoke",
})


def resume_conflicts(saved: dict, cfg: GRPOConfig) -> list[str]:
    """Keys whose value in ``cfg`` differs from the resumed run's saved config (its ``config.yaml``), sorted.

    Keys in :data:`RESUMABLE_KEYS` may differ; a key the saved config lacks (written by an older version) is
    taken as its default.
    """
    new = to_dict(cfg)
    defaults = to_dict(GRPOConfig())
    return sorted(k for k, v in new.items()
                  if k not in RESUMABLE_KEYS and saved.get(k, defaults.get(k)) != v)
