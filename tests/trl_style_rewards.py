"""Reward functions written the way TRL's GRPOTrainer documentation writes them, one per calling convention.

``tests/test_trl_compat.py`` runs each through grpo-zero's trainer and through TRL's own ``GRPOTrainer``;
``record`` writes what it was called with to the JSON-lines file named by ``$TRL_COMPAT_RECORD`` so the test can
compare the two trainers' arguments.
"""

from __future__ import annotations

import json
import os


def text_reward(completions, **kwargs):
    """Text completions: longer is better, capped at 1."""
    return [min(len(c), 20) / 20 for c in completions]


def conversational_reward(completions, **kwargs):
    """TRL's conversational form: ``completion[0]["content"]``."""
    return [1.0 if "=" in c[0]["content"] else 0.0 for c in completions]


def ids_reward(completion_ids, **kwargs):
    """Token ids: shorter completions score higher."""
    return [1.0 / (1 + len(ids)) for ids in completion_ids]


def state_reward(completions, trainer_state, **kwargs):
    """Shaped by progress: TRL's ``trainer_state.global_step / max_steps``."""
    progress = trainer_state.global_step / max(trainer_state.max_steps, 1)
    return [progress + 0.0 * trainer_state.epoch for _ in completions]


def logging_reward(completions, log_metric, log_extra, **kwargs):
    """Logs a scalar and a per-sample column the way TRL's docs show."""
    scores = [float(len(str(c)) % 2) for c in completions]
    log_metric("odd_share", sum(scores) / len(scores))
    log_extra("parity", ["odd" if s else "even" for s in scores])
    return scores


async def async_reward(completions, **kwargs):
    """An ``async def`` reward (e.g. an LLM judge): the trainer awaits it."""
    return [0.5 for _ in completions]


def none_reward(completions, **kwargs):
    """``None`` for every other sample: "does not apply"."""
    return [None if i % 2 else 1.0 for i in range(len(completions))]


def _shape(value: object) -> str:
    """A short description of a value's structure: ``str``, ``list[str]``, ``list[list[message]]``, ``state``."""
    if callable(value):
        return "callable"
    if all(hasattr(value, a) for a in ("global_step", "max_steps", "epoch")):
        ok = isinstance(value.global_step, int) and isinstance(value.max_steps, int)
        return "state" if ok and isinstance(value.epoch, (int, float)) else "state?"
    if isinstance(value, dict):
        return "message" if {"role", "content"} <= set(value) else "dict"
    if isinstance(value, (list, tuple)):
        inner = sorted({_shape(v) for v in value})
        return f"list[{'|'.join(inner)}]"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def record(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **kwargs):
    """Write the shape of every argument (and the state's values) to ``$TRL_COMPAT_RECORD``; reward 0."""
    args = dict(kwargs, prompts=prompts, completions=completions, completion_ids=completion_ids,
                trainer_state=trainer_state, log_extra=log_extra, log_metric=log_metric)
    entry = {"shapes": {k: _shape(v) for k, v in args.items()},
             "n": len(completions), "ids_lengths": [len(ids) for ids in completion_ids],
             "state": {"global_step": trainer_state.global_step, "max_steps": trainer_state.max_steps}}
    with open(os.environ["TRL_COMPAT_RECORD"], "a") as f:
        f.write(json.dumps(entry) + "\n")
    return [0.0] * len(completions)


def upper_share(completions, **kwargs):
    """A reward written for text only (str methods on each completion)."""
    return [sum(ch.isupper() for ch in c) / max(len(c), 1) for c in completions]
