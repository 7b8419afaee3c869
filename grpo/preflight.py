"""Preflight: every check that touches the world, run once after the config parses and before any model loads.

``train.py`` and ``python -m grpo.evaluate`` both read ``load_config -> preflight -> run``. Preflight swaps in the
``--smoke`` stand-ins, checks the output folder, the checkpoint to resume from (and that it belongs to the same
experiment), the model folder and its context length, the trackers, the reward functions (names, kwargs, the
columns they need) and builds the task, so a bad dataset or a mistyped reward fails in seconds with one line.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from grpo.config import GRPOConfig, to_dict, validate
from grpo.errors import ConfigError
from grpo.tasks import Task, check_rewards_match, get_task
from grpo.trackers import TRACKERS, installed, report_to_list
from rewards.calling import CALL_KEYS


def preflight(cfg: GRPOConfig, resume: bool = True) -> tuple[GRPOConfig, Task]:
    """Check ``cfg`` against the world and build its task. -> (the config to run, the task).

    Args:
        cfg: a config from :func:`grpo.cli.load_config` (values already checked).
        resume: also check the checkpoint a training run would resume from (off for evaluation).

    Raises:
        ConfigError: one line naming the problem and the fix (``DataError`` for datasets).
    """
    check_output_dir(cfg.output_dir)
    before = _smoke_folders(cfg.output_dir)
    if cfg.smoke:  # swap model and data for tiny offline stand-ins before the checks look for them
        from grpo.smoke import apply_smoke

        cfg = apply_smoke(cfg)
    try:
        if cfg.smoke:
            validate(cfg)
        check_backend(cfg)
        check_model(cfg)
        check_trackers(cfg)
        task = build_task(cfg)
        check_rewards(cfg, task)
        if resume:  # after the config's own mistakes (a misspelt reward is that, not "a different experiment")
            check_resume(cfg)
    except ConfigError:
        for folder in _smoke_folders(cfg.output_dir) - before:  # a refused --smoke run leaves nothing behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return cfg, task


def _smoke_folders(output_dir: str) -> set[Path]:
    """The ``--smoke`` stand-in folders (``smoke-<key>``) in ``output_dir`` now."""
    path = Path(output_dir)
    return set(path.glob("smoke-*")) if path.is_dir() else set()


def check_output_dir(output_dir: str) -> None:
    """The output dir must be creatable and writable: fail now, not after an hour of training."""
    probe = Path(output_dir)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ConfigError(f"output_dir {output_dir} cannot be written ({probe} is not a writable folder); choose "
                          "another --output_dir")


def check_backend(cfg: GRPOConfig) -> None:
    """``rollout_backend`` names a registered backend."""
    from grpo.rollout import ROLLOUT_BACKENDS

    if cfg.rollout_backend not in ROLLOUT_BACKENDS:
        raise ConfigError(f"config key 'rollout_backend' must be one of {', '.join(ROLLOUT_BACKENDS)}; got "
                          f"{cfg.rollout_backend!r}")


def check_model(cfg: GRPOConfig) -> None:
    """A local model path must exist, and completions must fit the model's context (reads config.json only)."""
    from grpo.paths import resolve_model_path

    name = cfg.model_name_or_path
    if cfg.gguf_file:
        from grpo.model import check_gguf  # the GGUF file's own checks live with its loader

        check_gguf(name, cfg.gguf_file)
        return
    path = resolve_model_path(name)
    looks_local = name.startswith((".", "/", "~", "models/")) or name.count("/") > 1
    if not Path(path).exists():
        if looks_local:
            raise ConfigError(f"model path {name} does not exist; give an existing folder or a hub name like "
                              "Qwen/Qwen2.5-0.5B")
        return  # a hub name: checked when it loads
    config_file = Path(path) / "config.json"
    if not config_file.is_file() and (Path(path) / "adapter_config.json").is_file():
        return  # a saved LoRA adapter: its base model is checked when it loads
    if not config_file.is_file():
        raise ConfigError(f"model folder {path} has no config.json; point model_name_or_path at a Hugging Face model "
                          "folder")
    try:
        context = json.loads(config_file.read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        raise ConfigError(f"model folder {path} has an unreadable config.json") from None
    if isinstance(context, int) and cfg.max_completion_length + 1 > context:
        raise ConfigError(f"max_completion_length {cfg.max_completion_length} does not fit the model's context of "
                          f"{context} tokens (prompt included); lower max_completion_length")


def check_trackers(cfg: GRPOConfig) -> None:
    """Every tracker in ``report_to`` is installed."""
    for name in report_to_list(cfg.report_to):
        modules, extra = TRACKERS[name]
        if not installed(modules):
            raise ConfigError(f"report_to '{name}' needs the {modules[0]} package: pip install 'grpo-zero[{extra}]'")


def resume_checkpoint(cfg: GRPOConfig) -> Path | None:
    """The checkpoint a training run with ``cfg`` would resume from (``None``: it starts fresh)."""
    from grpo.checkpoint import latest_checkpoint

    if cfg.resume_from_checkpoint:
        return Path(cfg.resume_from_checkpoint)
    if cfg.overwrite_output_dir:
        return None
    return latest_checkpoint(cfg.output_dir)


def check_resume(cfg: GRPOConfig) -> None:
    """The checkpoint to resume from exists and belongs to the same experiment.

    Keys that change what a step computes (model, task and its kwargs, rewards, batch shape, G, algorithm, sampling,
    seed) and the world size must match the checkpoint's run (its ``config.yaml`` and ``run_info.json``); run-length
    and logging keys (``RESUMABLE_KEYS``) may change.
    """
    if cfg.resume_from_checkpoint and not (Path(cfg.resume_from_checkpoint) / "trainer_state.json").is_file():
        raise ConfigError(f"resume_from_checkpoint {cfg.resume_from_checkpoint} is not a complete checkpoint folder "
                          "(no trainer_state.json); pick an output_dir/checkpoint-<step> folder")
    ckpt = resume_checkpoint(cfg)
    if ckpt is None:
        return
    run_dir = ckpt.parent
    saved = _read_yaml(ckpt / "config.yaml") or _read_yaml(run_dir / "config.yaml")
    fixes = "pass --overwrite_output_dir true to start again, or choose another --output_dir"
    if saved is not None:
        keys = resume_conflicts(saved, cfg)
        if keys:
            shown = ", ".join(f"{k} ({saved.get(k)!r} -> {getattr(cfg, k)!r})" for k in keys[:3])
            more = f"; also differ: {', '.join(keys[3:])}" if len(keys) > 3 else ""
            raise ConfigError(f"cannot resume {ckpt}: it is a different experiment (checkpoint's value -> this run's): "
                              f"{shown}{more}; {fixes}")
    try:
        saved_world = json.loads((run_dir / "run_info.json").read_text()).get("world_size")
    except (OSError, ValueError):
        saved_world = None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if isinstance(saved_world, int) and saved_world != world:
        raise ConfigError(f"cannot resume {ckpt}: it was saved by {saved_world} processes and this run has {world}; "
                          f"launch with --num_processes {saved_world}, or {fixes}")


def _read_yaml(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def build_task(cfg: GRPOConfig) -> Task:
    """The task, built once (datasets load and every gold is parsed here, before the model loads)."""
    try:
        return get_task(cfg.task, **cfg.task_kwargs)
    except (ValueError, TypeError) as e:  # DataError included: the message gains the task's name
        raise ConfigError(f"task '{cfg.task}': {e}") from None


def check_rewards(cfg: GRPOConfig, task: Task) -> None:
    """Every reward (and ``eval_reward``) resolves, takes its kwargs, finds the columns it needs in the task's
    rows, and matches the task's template (e.g. the R1 format reward on a boxed prompt)."""
    import rewards
    from rewards.combine import build_rewards
    from rewards.spec import reward_kwargs

    try:
        build_rewards(cfg.rewards)  # names resolve, kwargs name real parameters (did-you-mean), deadline_s runnable
    except KeyError as e:
        raise ConfigError(e.args[0]) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name in [*cfg.rewards, cfg.eval_reward]:
        try:
            fn = rewards.get(name)
        except KeyError as e:
            prefix = "eval_reward: " if name == cfg.eval_reward and name not in cfg.rewards else ""
            raise ConfigError(prefix + e.args[0]) from None
        kwargs = reward_kwargs(cfg.rewards, name)
        check_reward_columns(name, fn, task, kwargs, eval_only=name not in cfg.rewards)
    check_rewards_match(task, cfg.rewards)


# What every reward call receives besides the task's own columns (rewards.combine.score, TRL's convention).
CALL_COLUMNS = (*CALL_KEYS, "completion_lengths")
EVAL_COLUMNS = ("completions", "prompts", "completion_lengths")


def check_reward_columns(name: str, fn: Any, task: Task, kwargs: dict, eval_only: bool = False) -> None:
    """A reward's required parameters (no default, not given in its kwargs) must be columns of the task's rows.

    Raises:
        ConfigError: naming the reward, the missing column and the task's columns.
    """
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    # The held-out eval calls its reward with the columns and prompts only (grpo.evaluate), not TRL's extras.
    have = set(task.columns) | set(EVAL_COLUMNS if eval_only else CALL_COLUMNS) | set(kwargs)
    for p in params:
        required = p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and p.name not in have and p.name in CALL_COLUMNS:  # eval_only: a training-time argument
            raise ConfigError(f"eval_reward '{name}' needs '{p.name}', which the held-out eval does not pass (it "
                              "passes completions, prompts and the dataset columns); pick another eval_reward")
        if required and p.name not in have:
            role = "eval_reward" if eval_only else "reward"
            raise ConfigError(f"{role} '{name}' needs the column '{p.name}', which task '{task.name}' does not have "
                              f"(its columns: {', '.join(task.columns) or 'none'}); use a reward made for this task "
                              "or a task with that column")


def prepare(argv: list[str] | None = None) -> tuple[GRPOConfig, Task]:
    """``load_config(argv)`` then :func:`preflight`: the config to run and its task, as ``train.py`` gets them."""
    from grpo.cli import load_config

    return preflight(load_config(argv))


# Keys that may change when a run resumes: they decide how long it runs and what it writes, not what a step
# computes. Every other key (model, task and its kwargs, rewards, batch shape, G, algorithm, sampling, seed...)
# must match the checkpoint's run, or resuming would silently mix two experiments.
RESUMABLE_KEYS = frozenset({
    "max_steps", "eval_steps", "eval_batch_size", "logging_steps", "report_to", "log_completions_steps",
    "save_final_model", "save_steps", "save_total_limit", "resume_from_checkpoint", "overwrite_output_dir",
    "max_bad_steps", "cpu_threads", "output_dir", "reflection_words", "eval_pass_k", "eval_max_completion_length",
    "eval_reward", "smoke", "rollout_threads", "rollout_device", "weight_sync_timeout_s", "rollout_timeout_s",
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
