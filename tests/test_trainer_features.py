"""Trainer features of the GRPO family with real sampling: dynamic sampling, truncated-completion masking, zero-signal
steps. The collection logic itself (rounds, the cap, top-up, ranks) is unit-tested in tests/test_collect.py."""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

import torch

from grpo import core
from grpo.cli import load_config
from grpo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
BASE = ["--per_device_train_batch_size", "32", "--num_generations", "4", "--eval_steps", "0",
        "--task_kwargs", "{num_eval: 8}", "--cpu_threads", "1", "--save_final_model", "false"]


def first_term(prompt: str) -> int:
    return int(prompt.split("Q: ")[1].split("+")[0])


def parity_reward(completions: list[str], prompts: list[str], **columns) -> list[float]:
    """Constant (no signal) when the first term is odd; random (always some signal) otherwise."""
    return [1.0 if first_term(p) % 2 else random.random() for c, p in zip(completions, prompts)]


def make(tmp_path, *extra: str) -> Trainer:
    return Trainer(load_config([*BASE, "--output_dir", str(tmp_path), "--rewards",
                                "{test_trainer_features:parity_reward: 1.0}", *extra]))


def test_dynamic_sampling_keeps_only_groups_with_signal(tmp_path):
    torch.manual_seed(0)
    t = make(tmp_path, "--dynamic_sampling", "true", "--max_sampling_rounds", "6")
    step_batch, m = t.collect(1)
    batch, rows, rewards = step_batch.rollout, step_batch.rows, step_batch.rewards
    assert len(batch.completions) == len(rows) == rewards.numel() == 32  # batch shape unchanged
    assert m["dynamic_sampling/filled_frac"] == 1.0 and m["dynamic_sampling/rounds"] >= 1
    std = core.group_reward_std(rewards, 4)
    assert (std > 0).all()
    assert all(first_term(p) % 2 == 0 for p in batch.prompts)
    # rows, prompts and completions stay aligned after regrouping
    assert all(r["prompt"] == p for r, p in zip(rows, batch.prompts))
    assert all(len(set(rewards[i : i + 4].tolist())) > 1 for i in range(0, 32, 4))


def test_without_dynamic_sampling_constant_groups_remain(tmp_path):
    torch.manual_seed(0)
    t = make(tmp_path)
    counts = []
    for _ in range(3):
        step_batch, m = t.collect(1)
        batch = step_batch.rollout
        counts.append(sum(first_term(p) % 2 for p in batch.prompts[::4]))
        assert "dynamic_sampling/rounds" not in m
    assert sum(counts) > 0


def test_masked_truncated_completions_do_not_move_the_weights(tmp_path):
    torch.manual_seed(0)
    # 3 tokens is too short for any answer: every completion is truncated.
    for masked, expect_change in (("true", False), ("false", True)):
        t = Trainer(load_config([*BASE, "--output_dir", str(tmp_path / masked), "--max_completion_length", "3",
                                 "--mask_truncated_completions", masked, "--rewards",
                                 "{test_trainer_features:parity_reward: 1.0}"]))
        batch, _ = t.collect(1)
        assert batch.rollout.truncated.all()
        batch.advantages = t.advantages(batch)
        assert batch.advantages.abs().sum() > 0
        before = [p.detach().clone() for p in t.model.parameters()]
        t.update(batch)
        changed = any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
        assert changed == expect_change


def test_step_without_signal_skips_the_update(tmp_path):
    t = make(tmp_path)
    t.rewards[0] = replace(t.rewards[0], fn=lambda completions, **kw: [0.5] * len(completions))
    before = [p.detach().clone() for p in t.model.parameters()]
    m = t.step(1)
    assert m["skipped_update"] == 1.0 and m["frac_reward_zero_std"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
