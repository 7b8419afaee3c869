"""Typed run configuration: the schema (one documented field per key), value checks with one clear message, and
the typed options the loss and the correction take.

Field names follow TRL's ``GRPOConfig`` where the concept is the same, so a TRL or open-r1 user reads our
recipes without a dictionary. Reading a config (YAML file, ``--key value`` flags, ``--help``) is
:mod:`grpo.cli`; checks that touch the world (output folder, model files, datasets, reward modules, installed
trackers, ``--smoke`` stand-ins) run afterwards in :func:`grpo.preflight.preflight`. Every problem raises
:class:`ConfigError` whose message is one line naming the problem and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from grpo import core, correction
from grpo.errors import ConfigError
from grpo.trackers import TRACKERS, report_to_list

# Words R1-style models use when they re-examine their own work. "but"/"however" are left out on purpose:
# they are ordinary connectives in any explanation and would make the ratio meaningless.
DEFAULT_REFLECTION_WORDS: tuple[str, ...] = (
    "wait", "verify", "check", "recheck", "re-check", "double-check", "let me", "hmm", "mistake",
    "reconsider", "re-evaluate", "alternatively",
)


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _names(registry: dict) -> str:
    """A registry's names for a help line, ``a, b or c``: the help lists exactly what validation accepts."""
    names = list(registry)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


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
    # --- tool calls in rollouts (grpo/rollout/turns.py, grpo/tools/)
    tools: list = _f([], "Tools the model may call mid-answer: built-ins by name (python, calculator) or plug-ins "
                     "'module:function' / 'module.function'; [] = off. Generation stops at a call, the call runs, its "
                     "output is appended as tokens (masked out of the loss) and generation goes on.")
    tool_syntax: str = _f("fenced", "How calls look: fenced (a ```python ... ``` block, for base models) or chat (the "
                          "chat template's <tool_call>...</tool_call>, for instruct models).")
    max_tool_calls: int = _f(4, "Most tool calls per completion; later calls are plain text.")
    tool_timeout_s: float = _f(5.0, "Wall-clock limit of one tool call in seconds; a call past it returns an error "
                               "text to the model.")
    tool_memory_mb: int = _f(512, "Memory limit of one python tool call, in MB.")
    tool_max_output_chars: int = _f(2000, "A tool's output is cut to this many characters before it is tokenised.")
    tool_workers: int = _f(2, "Tool calls that run at once (warm sandbox processes per rank).")
    vllm_enable_sleep_mode: bool = _f(True, "vllm backend: free vLLM's weights and KV cache during updates (sleep level 2) "
                                      "and push the weights back before each rollout.")
    # --- async rollouts (grpo/worker)
    async_rollouts: bool = _f(False, "Sample the next batches in a worker process (its own policy copy, backend and rewards) "
                              "while the trainer updates on this one. Deterministic: batch k is sampled from the weights "
                              "max_staleness steps behind the ones it trains (docs/rollout.md).")
    max_staleness: int = _f(1, "Async rollouts: how many optimizer steps the sampling weights lag behind the trained ones "
                            "(1 = one-step-off: batch k+1 is sampled while step k trains). TRL's name.")
    rollout_threads: int = _f(1, "Async rollouts on CPU: torch threads of the rollout worker (the trainer keeps cpu_threads); "
                              "give each process its own cores.")
    rollout_device: str = _f("auto", "Async rollouts: the worker's device. auto = cpu on a CPU run; on GPUs the first GPU after "
                             "the trainers' (cuda:1 for one trainer) when there is one, else the trainer's own; or a "
                             "device such as cuda:1.")
    weight_sync_timeout_s: float = _f(60.0, "Async rollouts: stop the run when the worker has not loaded and verified new "
                                      "weights this long after it needed them.")
    rollout_timeout_s: float = _f(600.0, "Async rollouts: stop the run when the worker sends nothing this long (a hung "
                                  "backend or reward).")
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
    loss_type: str = _f("dapo", f"Loss aggregation: {_names(core.LOSS_AGGREGATIONS)} (grpo/core.py).")
    scale_rewards: str = _f("group", f"Advantage scaling: {_names(core.REWARD_SCALES)} (group: GRPO; none: Dr. GRPO).")
    advantage_estimator: str = _f("grpo", f"Advantage estimator: {_names(core.ADVANTAGE_ESTIMATORS)} (grpo: group "
                                  "mean baseline; rloo: leave-one-out).")
    use_bias_correction_kl: bool = _f(True, "Multiply the KL term by the importance ratio (TRL 1.16's default); only matters when beta > 0.")
    importance_sampling_level: str = _f("token", f"Importance ratios: {_names(core.IMPORTANCE_LEVELS)} (token: GRPO; "
                                        "sequence: GSPO).")
    mask_truncated_completions: bool = _f(False, "Leave completions cut at max_completion_length out of the loss (DAPO).")
    dynamic_sampling: bool = _f(False, "DAPO dynamic sampling: drop groups whose rewards all agree and sample more prompts until the batch is full.")
    max_sampling_rounds: int = _f(3, "Dynamic sampling: at most this many rollout rounds per step; then the batch is topped up with dropped groups.")
    num_iterations: int = _f(1, "mu: policy updates per rollout batch (1 = on-policy; ratio is then exactly 1).")
    vllm_importance_sampling_correction: bool | None = _f(
        None, "Reweight the loss by the trainer/sampler probability ratio of the sampled tokens (TRL's correction for "
        "the sampler's numerical mismatch, and for stale weights with async_rollouts). None = auto: on for rollout_backend "
        "vllm (TRL's default) and with async_rollouts, off for compact and hf, which sample with the training weights "
        "(true there measures it: sampling/* metrics).")
    vllm_importance_sampling_mode: str = _f("sequence_mask", f"{_names(correction.SAMPLING_CORRECTIONS)} (TRL's names "
                                            "and default; grpo/correction.py).")
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
    for key in ["lm_head_chunk_size", "eval_steps", "save_steps", "max_bad_steps", "warmup_steps", "beta", "weight_decay", "max_grad_norm", "top_k"]:
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
    choices = {  # the registries: a new loss, estimator or correction is one registered function
        "loss_type": core.LOSS_AGGREGATIONS,
        "scale_rewards": core.REWARD_SCALES,
        "advantage_estimator": core.ADVANTAGE_ESTIMATORS,
        "importance_sampling_level": core.IMPORTANCE_LEVELS,
        "vllm_importance_sampling_mode": correction.SAMPLING_CORRECTIONS,
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}; got {getattr(cfg, key)!r}")
    try:  # the option objects check their own bounds (clip ranges, correction bounds): one place each
        loss_options(cfg), correction_options(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
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
    _check_tools(cfg)
    _check_async(cfg)


# dtype names users may write -> the torch dtype's name (the one table; grpo.model resolves it, "auto" aside).
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
          "float32": "float32", "fp32": "float32"}


def _check_model_options(cfg: GRPOConfig) -> None:
    """dtype, LoRA and evaluation options."""
    if cfg.dtype != "auto" and cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {cfg.dtype!r}")
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


TOOL_SYNTAXES = ("fenced", "chat")


def _check_tools(cfg: GRPOConfig) -> None:
    """Tool options (whether the tools themselves exist: when the toolbox is built, grpo.rollout.backend_for_run)."""
    if not isinstance(cfg.tools, list) or not all(isinstance(t, str) and t.strip() for t in cfg.tools):
        raise ConfigError(f"tools must be a list of tool names, e.g. [python] or [calculator, my_pkg.tools:lookup]; "
                          f"got {cfg.tools!r}")
    if cfg.tool_syntax not in TOOL_SYNTAXES:
        raise ConfigError(f"tool_syntax must be one of {', '.join(TOOL_SYNTAXES)}; got {cfg.tool_syntax!r}")
    for key, low in (("max_tool_calls", 1), ("tool_memory_mb", 64), ("tool_max_output_chars", 1), ("tool_workers", 1)):
        if getattr(cfg, key) < low:  # 64 MB: less cannot start a Python interpreter in the sandbox
            raise ConfigError(f"config key '{key}' must be >= {low}, got {getattr(cfg, key)}")
    if cfg.tool_timeout_s <= 0:
        raise ConfigError(f"tool_timeout_s must be > 0 seconds, got {cfg.tool_timeout_s}")


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


def _check_async(cfg: GRPOConfig) -> None:
    """Async rollout options (whether the worker's device exists: when the worker starts)."""
    if cfg.max_staleness < 0:
        raise ConfigError(f"max_staleness must be >= 0 (0: the worker samples with the newest weights, no overlap), "
                          f"got {cfg.max_staleness}")
    if cfg.rollout_threads < 1:
        raise ConfigError(f"rollout_threads must be >= 1, got {cfg.rollout_threads}")
    for key in ("weight_sync_timeout_s", "rollout_timeout_s"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}' must be > 0 seconds, got {getattr(cfg, key)}")


def to_dict(cfg: GRPOConfig) -> dict:
    """The resolved config as a plain dict (written to output_dir/config.yaml)."""
    return dataclasses.asdict(cfg)


def loss_options(cfg: GRPOConfig) -> core.LossOptions:
    """The run's policy-loss choices as the loss takes them (checked when built)."""
    return core.LossOptions(loss_type=cfg.loss_type, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                            max_completion_length=cfg.max_completion_length, beta=cfg.beta,
                            importance_sampling_level=cfg.importance_sampling_level,
                            use_bias_correction_kl=cfg.use_bias_correction_kl)


def correction_options(cfg: GRPOConfig) -> correction.CorrectionOptions:
    """The run's sampler/trainer correction choices (checked when built)."""
    return correction.CorrectionOptions(cfg.vllm_importance_sampling_mode, cfg.vllm_importance_sampling_clip_max,
                                        cfg.vllm_importance_sampling_clip_min)
