"""Collecting a step's batch of scored rollouts, with DAPO's dynamic sampling.

A group whose G rewards all agree has zero advantage and teaches nothing. With dynamic sampling such groups are
dropped and more prompts are sampled until B groups with signal are found or ``max_sampling_rounds`` is reached;
then the batch is topped up with dropped groups (zero advantage) so its shape stays fixed (DAPO, Yu et al. 2025).

Notation: B prompts per step and process, G = num_generations, N = B x G.
"""

from __future__ import annotations

from collections.abc import Callable

import time
from typing import TYPE_CHECKING, Any

from grpo import core
from grpo.batch import RolloutBatch, StepBatch
from grpo.tasks.templates import reward_prompts
from rewards.calling import TrainerState, logged_metric_names
from rewards.combine import score

if TYPE_CHECKING:
    from grpo.tasks import Task


def collect(sample_round: Callable[[], tuple[StepBatch, dict[str, float]]], *, dynamic: bool, max_rounds: int,
            pad_token_id: int, any_rank_needs_more: Callable[[bool], bool]) -> tuple[StepBatch, dict[str, float]]:
    """Sample and score rounds of B prompts until the step's batch is complete. -> (batch of N, metrics).

    Args:
        sample_round: samples and scores B prompts -> (batch of N = B x G rows with rewards, metrics of the
            round: ``time/*`` and reward counters, summed over rounds). B and G come from the batch.
        dynamic: keep only groups whose rewards differ (DAPO); False returns the first round as is.
        max_rounds: most rounds per step.
        pad_token_id: to re-pad groups taken from different rounds.
        any_rank_needs_more: all ranks call it with their own need and get True while any rank needs another
            round: with sharded models (ZeRO-3, FSDP) generation is collective, so every rank samples as many
            rounds as the neediest one.

    Returns:
        The batch (N rows, groups contiguous) and the summed round metrics plus, with ``dynamic``,
        ``dynamic_sampling/{rounds,signal_groups_frac,filled_frac}``.
    """
    metrics: dict[str, float] = {}
    kept: list[tuple[StepBatch, int]] = []
    spare: list[tuple[StepBatch, int]] = []
    rounds = seen = 0
    while True:
        batch, round_metrics = sample_round()
        rounds += 1
        for k, v in round_metrics.items():
            if k in logged_metric_names():  # a reward's log_metric scalar: the running mean over rounds, not a sum
                metrics[k] = metrics.get(k, 0.0) + (v - metrics.get(k, 0.0)) / rounds
            else:
                metrics[k] = metrics.get(k, 0.0) + v
        if not dynamic:
            return batch, metrics
        B = batch.num_groups
        has_signal = core.group_reward_std(batch.rewards, batch.group_size) > 0  # (B,)
        seen += B
        for g in range(B):
            (kept if has_signal[g] else spare).append((batch, g))
        if not any_rank_needs_more(len(kept) < B and rounds < max_rounds):
            break
    groups = [b.group(g) for b, g in (kept + spare)[:B]]
    batch = StepBatch.concat(groups, pad_token_id)
    metrics.update({"dynamic_sampling/rounds": float(rounds), "dynamic_sampling/signal_groups_frac": len(kept) / seen,
                    "dynamic_sampling/filled_frac": min(len(kept), B) / B})
    return batch, metrics


def trainer_state(stream: Any, global_step: int, max_steps: int) -> TrainerState:
    """TRL's ``trainer_state`` for the rewards: steps finished, ``max_steps``, epochs of ``stream``'s rows read."""
    rows = len(getattr(stream, "rows", None) or ()) or None
    epoch = getattr(stream, "epoch", 0) + getattr(stream, "pos", 0) / rows if rows else 0.0
    return TrainerState(global_step=global_step, max_steps=max_steps, epoch=float(epoch))


def score_round(rollout: RolloutBatch, rows: list[dict[str, Any]], group_size: int, rewards: list[Any], task: Task,
                trainer_state: TrainerState) -> tuple[StepBatch, dict[str, float]]:
    """Score one round's completions with the run's rewards (the trainer's own rollouts, or the async worker's).

    Args:
        rollout: N = B x G sampled completions.
        rows: the B prompt rows they answer (dataset columns the rewards may take).
        group_size: G.
        rewards: the run's reward specs (:func:`rewards.combine.build_rewards`).
        task: for the prompts the rewards see (:func:`grpo.tasks.templates.reward_prompts`).
        trainer_state: TRL's ``trainer_state`` for the rewards.

    Returns:
        The batch of N rows with rewards (N,) and per-reward scores, and the reward metrics plus ``time/reward_s``.
    """
    t0 = time.perf_counter()
    rows = [r for r in rows for _ in range(group_size)]
    notes: list[dict] = [{} for _ in rows]  # per-sample verdicts (accuracy's reasons) for completions.jsonl
    ids = [c[m.bool()].tolist() for c, m in zip(rollout.completion_ids, rollout.completion_mask)]  # TRL's form
    total, per_reward, reward_metrics = score(
        rewards, rollout.completions, rows, reward_prompts(task, rows, rollout.prompts),
        completion_lengths=rollout.lengths.tolist(), notes=notes, completion_ids=ids, trainer_state=trainer_state,
        tool_calls=rollout.tool_records())
    rows = [dict(row, verdicts=note) if note else row for row, note in zip(rows, notes)]
    batch = StepBatch(rollout, rows, group_size, total, per_reward)
    return batch, {"time/reward_s": time.perf_counter() - t0, **reward_metrics}
