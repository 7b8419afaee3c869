"""Unit tests for the pieces the loop hands a batch to: batch collection with DAPO dynamic sampling
(grpo.collect), the typed batch (grpo.batch), cross-rank helpers on one process (grpo.dist) and stopping
(grpo.stop). No model: batches are built from tensors."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch

from grpo.batch import RolloutBatch, StepBatch
from grpo.collect import collect
from grpo.dist import any_rank, sum_over_ranks
from grpo.errors import TrainingError
from grpo.stop import StopRequest, count_bad_steps

G = 2


def step_batch(rewards: list[float], tag: str, width: int = 3) -> StepBatch:
    """A batch of len(rewards) rows in groups of G; prompts named ``tag<group>`` so groups can be traced."""
    n = len(rewards)
    ids = torch.arange(n * width).view(n, width)
    rollout = RolloutBatch(ids, torch.ones(n, 2, dtype=torch.long), ids, torch.ones_like(ids),
                           torch.zeros(n, dtype=torch.bool), [f"{tag}{i // G}" for i in range(n)], ["c"] * n)
    return StepBatch(rollout, [{"i": i} for i in range(n)], G, torch.tensor(rewards, dtype=torch.float))


def rounds_of(*batches: StepBatch):
    """A ``sample_round`` that hands out ``batches`` in order, with a timing metric each."""
    it = iter(batches)
    return lambda: (next(it), {"time/rollout_s": 1.0})


def one_rank(need: bool) -> bool:
    return need


def test_without_dynamic_sampling_the_first_round_is_the_batch():
    first = step_batch([0, 0, 1, 0], "a")
    batch, m = collect(rounds_of(first, step_batch([1, 0, 1, 0], "b")), dynamic=False, max_rounds=3, pad_token_id=0,
                       any_rank_needs_more=one_rank)
    assert batch is first and m == {"time/rollout_s": 1.0}


def test_dynamic_sampling_keeps_groups_with_signal_and_stops_when_full():
    # round 1: group a0 agrees (no signal), a1 has signal; round 2: b0 has signal -> full after 2 rounds
    batch, m = collect(rounds_of(step_batch([1, 1, 1, 0], "a"), step_batch([0, 1, 0, 0], "b"),
                                 step_batch([0, 1, 0, 1], "c")),
                       dynamic=True, max_rounds=5, pad_token_id=0, any_rank_needs_more=one_rank)
    assert batch.rollout.prompts == ["a1", "a1", "b0", "b0"]
    assert batch.rewards.tolist() == [1, 0, 0, 1] and batch.group_size == G
    assert m["dynamic_sampling/rounds"] == 2 and m["time/rollout_s"] == 2.0
    assert m["dynamic_sampling/signal_groups_frac"] == pytest.approx(2 / 4)
    assert m["dynamic_sampling/filled_frac"] == 1.0


def test_dynamic_sampling_tops_up_with_dropped_groups_after_max_rounds():
    batch, m = collect(rounds_of(step_batch([1, 1, 0, 1], "a"), step_batch([0, 0, 0, 0], "b")),
                       dynamic=True, max_rounds=2, pad_token_id=0, any_rank_needs_more=one_rank)
    assert batch.rollout.prompts == ["a1", "a1", "a0", "a0"]  # signal first, then the first dropped group
    assert len(batch) == 4 and m["dynamic_sampling/filled_frac"] == 0.5


def test_dynamic_sampling_follows_the_neediest_rank():
    """Another rank still needs a round: this rank samples it too (generation is collective when sharded)."""
    calls = []

    def other_rank_needs_one_more(need: bool) -> bool:
        calls.append(need)
        return len(calls) < 2

    _, m = collect(rounds_of(step_batch([1, 0, 1, 0], "a"), step_batch([1, 0, 1, 0], "b")), dynamic=True,
                   max_rounds=5, pad_token_id=0, any_rank_needs_more=other_rank_needs_one_more)
    assert calls == [False, False] and m["dynamic_sampling/rounds"] == 2


def test_batch_select_group_and_concat_repad():
    a, b = step_batch([0, 1, 2, 3], "a", width=3), step_batch([4, 5], "b", width=5)
    assert a.num_groups == 2 and a.group(1).rewards.tolist() == [2, 3]
    both = StepBatch.concat([a.group(1), b], pad_token_id=-1)
    assert both.rollout.completion_ids.shape == (4, 5) and both.group_size == G
    assert both.rollout.completion_ids[0, 3:].tolist() == [-1, -1]  # completions pad on the right
    assert both.rows == [{"i": 2}, {"i": 3}, {"i": 0}, {"i": 1}]


class OneProcess:
    """What grpo.dist needs of an accelerator, for one process."""

    device = torch.device("cpu")
    num_processes = 1

    def reduce(self, t: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        return t


def test_cross_rank_helpers_on_one_process():
    acc = OneProcess()
    assert any_rank(acc, True) and not any_rank(acc, False)
    assert sum_over_ranks(acc, torch.tensor(3.0)) == 3.0


def test_count_bad_steps_resets_and_stops():
    assert count_bad_steps(0, {"skipped_nonfinite": 1.0}, 3, 1) == 1
    assert count_bad_steps(2, {"skipped_nonfinite": 0.0}, 3, 5) == 0  # a good step resets the count
    assert count_bad_steps(1, {"skipped_nonfinite": 1.0}, 0, 9) == 2  # 0 = never stop
    with pytest.raises(TrainingError, match="stopping at step 7: 3 steps in a row") as e:
        count_bad_steps(2, {"skipped_nonfinite": 1.0}, 3, 7)
    assert "\n" not in str(e.value)


def test_stop_request_is_set_by_a_signal_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    with stop.installed():
        assert signal.getsignal(signal.SIGTERM) != before
        signal.raise_signal(signal.SIGTERM)  # the first signal only asks to stop after this step
        assert stop.requested and stop.agreed(OneProcess())
    assert signal.getsignal(signal.SIGTERM) == before
    assert not StopRequest().agreed(SimpleNamespace(device="cpu", reduce=lambda t, reduction: t))
