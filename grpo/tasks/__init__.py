"""Tasks: where prompts and gold answers come from.

A task turns rows (``question``, ``answer``, task columns) into prompts for the policy. The trainer asks a task
for a train stream (endless, seeded, resumable) and a fixed held-out eval list. A :class:`Task` is built once
(in preflight, so a bad dataset fails before the model loads) and never changes.

Built-in tasks (``task:`` in the config):

* ``arithmetic`` (:mod:`grpo.tasks.arithmetic`): synthetic sums for the bundled tiny base model, the default.
* ``gsm8k``, ``math`` (hendrycks_math.py), ``countdown``, ``dataset`` (one file each): real datasets by hub name or local
  JSONL/JSON/Parquet/CSV files (:mod:`grpo.tasks.loading`).

Prompts use a template (:mod:`grpo.tasks.templates`); gold answers are read and checked once at load time
(:mod:`grpo.tasks.golds`). A new task is one small file: a factory decorated with ``@register_task("name")`` that
returns a :class:`Task`; every module of this package is imported here, so dropping the file in is enough
(a task outside the package registers when your code imports it before the run starts).
"""

from __future__ import annotations

import importlib
import pkgutil

from grpo.tasks.base import DatasetStream, PromptStream, Task
from grpo.tasks.registry import TASKS, get_task, register_task
from grpo.tasks.templates import TEMPLATES, check_rewards_match, render_prompt, reward_defaults

__all__ = ["TASKS", "TEMPLATES", "DatasetStream", "PromptStream", "Task", "check_rewards_match", "get_task",
           "register_task", "render_prompt", "reward_defaults"]

_INFRASTRUCTURE = {"base", "golds", "loading", "registry", "templates"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")  # each task file registers itself
