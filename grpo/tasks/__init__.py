"""Tasks: where prompts and gold answers come from.

A task turns rows (``question``, ``answer``, task columns) into prompts for the policy. The trainer asks a task
for a train stream (endless, seeded, resumable) and a fixed held-out eval list. A :class:`Task` is built once
(in preflight, so a bad dataset fails before the model loads) and never changes.

Built-in tasks (``task:`` in the config):

* ``arithmetic`` (:mod:`grpo.tasks.arithmetic`): synthetic sums for the bundled tiny base model, the default.
* ``gsm8k``, ``math``, ``countdown``, ``dataset`` (one file each): real datasets by hub name or local
  JSONL/JSON/Parquet/CSV files (:mod:`grpo.tasks.loading`).

Prompts use a template (:mod:`grpo.tasks.templates`); gold answers are read and checked once at load time
(:mod:`grpo.tasks.golds`). A new task is one small file: a factory decorated with ``@register_task("name")`` that
returns a :class:`Task`, imported below (or by your own code before the run starts).
"""

from __future__ import annotations

from grpo.tasks import arithmetic, countdown, dataset, gsm8k, math  # noqa: F401  (registers the built-in tasks)
from grpo.tasks.base import DatasetStream, PromptStream, Task
from grpo.tasks.registry import TASKS, get_task, register_task
from grpo.tasks.templates import TEMPLATES, check_rewards_match, render_prompt, reward_defaults

__all__ = ["TASKS", "TEMPLATES", "DatasetStream", "PromptStream", "Task", "check_rewards_match", "get_task",
           "register_task", "render_prompt", "reward_defaults"]
