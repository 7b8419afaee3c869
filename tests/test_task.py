"""The synthetic arithmetic task: prompts, solutions, held-out eval set, resumable stream."""

from __future__ import annotations

import random

import pytest

from grpo.reasoning import has_reflection
from grpo.tasks import get_task
from grpo.tasks.arithmetic import (
    arithmetic_prompt,
    crosses_ten,
    first_attempt,
    make_arithmetic_row,
    slipped_sum,
    solution_careful,
    solution_direct,
    solution_malformed,
    solution_steps,
)
from rewards.accuracy import accuracy_reward
from rewards.format_reward import format_reward


def test_prompt_and_solutions_text():
    assert arithmetic_prompt([6, 2, 2, 7]) == "Q: 6+2+2+7=?\nA:"
    assert solution_direct([6, 2, 2, 7]) == "<think></think><answer>17</answer>"
    assert solution_steps([6, 2, 2, 7]) == "<think>6+2=8\n8+2=10\n10+7=17</think><answer>17</answer>"


def test_solutions_score_as_expected():
    nums = [9, 9, 8, 7]
    good = [solution_direct(nums), solution_steps(nums)]
    assert accuracy_reward(good, answer=["33", "33"]) == [1.0, 1.0]
    assert format_reward(good) == [1.0, 1.0]
    rng = random.Random(0)
    bad = [solution_malformed(nums, rng) for _ in range(40)]
    assert all(f == 0.0 for f in format_reward(bad))  # every malformed style breaks the format


def test_careful_style_checks_every_line_and_fixes_its_slips():
    nums = [6, 2, 2, 7]
    assert solution_careful(nums) == "<think>6+2=8 check\n8+2=10 check\n10+7=17 check</think><answer>17</answer>"
    # The writer drops every carry (8+2 -> 0); the careful one catches it and writes the right sum.
    assert solution_careful(nums, random.Random(0), drop_carry=1.0) == \
        "<think>6+2=8 check\n8+2=0 wait 10 check\n10+7=17 check</think><answer>17</answer>"
    rng = random.Random(3)
    careful = [solution_careful(nums, rng, slip=0.3) for _ in range(200)]
    caught = [c for c in careful if " wait " in c]
    assert 100 < len(caught) < 200  # 3 lines at 30%: about 66% of solutions slip at least once
    for c in caught:  # every line: "a+b=s check", or "a+b=wrong wait s check"
        for line, (a, b) in zip(c.removeprefix("<think>").split("</think>")[0].split("\n"), [(6, 2), (8, 2), (10, 7)]):
            first, *fix = line.removesuffix(" check").split(" wait ")
            assert first.startswith(f"{a}+{b}="), line
            assert (fix == [] and first == f"{a}+{b}={a + b}") or (fix == [str(a + b)] and first != f"{a}+{b}={a + b}")
    # A caught slip never reaches the answer; every careful solution is right, well formed and reflective.
    assert accuracy_reward(careful, answer=["17"] * 200) == [1.0] * 200
    assert format_reward(careful) == [1.0] * 200
    assert all(has_reflection(c) for c in careful)
    assert not has_reflection(solution_steps(nums)) and not has_reflection(solution_direct(nums))


def test_sloppy_steps_carry_their_slip_to_the_answer():
    rng = random.Random(1)
    sloppy = [solution_steps([6, 2, 2, 7], rng, slip=0.3) for _ in range(200)]
    right = accuracy_reward(sloppy, answer=["17"] * 200)
    assert 0.2 < sum(right) / 200 < 0.5  # 0.7 ** 3 = 0.34 of them slip nowhere
    assert format_reward(sloppy) == [1.0] * 200
    assert solution_steps([6, 2, 2, 7], rng, slip=0.0) == solution_steps([6, 2, 2, 7])
    slips = {slipped_sum(8, random.Random(i)) for i in range(100)}
    assert slips == {6, 7, 9, 10, 18}  # off by 1, 2 or a carry (10), never below 1: 8-10 -> 18


def test_dropped_carries_are_systematic():
    # Every line that crosses a ten loses its carry, and the wrong partial sum runs on to the answer.
    assert solution_steps([6, 2, 2, 7], random.Random(0), drop_carry=1.0) == \
        "<think>6+2=8\n8+2=0\n0+7=7</think><answer>7</answer>"
    assert solution_steps([1, 2, 3], random.Random(0), drop_carry=1.0) == solution_steps([1, 2, 3])  # no carry
    assert [crosses_ten(t, n) for t, n in ((18, 5), (6, 7), (8, 2), (12, 5), (1, 1))] == [True, True, True, False, False]
    assert first_attempt(18, 5, random.Random(0), drop_carry=1.0) == 13
    assert first_attempt(18, 5, None, drop_carry=1.0) == 23  # no rng: a right writer
    rng = random.Random(2)
    drops = [first_attempt(18, 5, rng, drop_carry=0.8) == 13 for _ in range(1000)]
    assert 0.75 < sum(drops) / 1000 < 0.85


def test_rows_are_seeded_and_in_range():
    a = [make_arithmetic_row(random.Random(5)) for _ in range(3)]
    b = [make_arithmetic_row(random.Random(5)) for _ in range(3)]
    assert a == b
    rng = random.Random(1)
    for _ in range(200):
        row = make_arithmetic_row(rng, 2, 8, 9)
        assert 2 <= len(row["nums"]) <= 8 and all(1 <= n <= 9 for n in row["nums"])
        assert row["answer"] == str(sum(row["nums"]))


def test_eval_set_is_fixed_distinct_and_held_out():
    task = get_task("arithmetic", num_eval=64)
    again = get_task("arithmetic", num_eval=64)
    questions = [r["question"] for r in task.eval_rows()]
    assert questions == [r["question"] for r in again.eval_rows()]
    assert len(set(questions)) == 64
    stream = task.train_stream(0)
    train_questions = {r["question"] for r in stream.take(2000)}
    assert not train_questions & set(questions)


def test_stream_resumes_exactly():
    task = get_task("arithmetic", num_eval=16)
    s1 = task.train_stream(3)
    s1.take(10)
    state = s1.state_dict()
    expected = s1.take(5)
    s2 = task.train_stream(3)
    s2.load_state_dict(state)
    assert s2.take(5) == expected


def test_bad_task_options():
    with pytest.raises(ValueError, match="min_terms"):
        get_task("arithmetic", min_terms=5, max_terms=3)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")
