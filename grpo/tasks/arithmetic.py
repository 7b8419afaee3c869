"""The synthetic ``arithmetic`` task: the embedded default.

Sums of 2-8 single-digit numbers written in a 28-token vocabulary, so the bundled tiny base model
(``models/tiny-base``) can learn it on a laptop CPU. Its prompt is the R1-Zero template in miniature: the completion
is expected to think inside ``<think></think>`` and answer inside ``<answer></answer>``.
``scripts/make_tiny_base.py`` pretrains the tiny model on completions written by :func:`solution_direct`,
:func:`solution_steps` (a writer who drops carries, :func:`first_attempt`), :func:`solution_careful` (the same
writer checking each line: ``check``, or ``wait`` and the fix; rare) and :func:`solution_malformed`, so this file
is the single source of the task's text format. The second bundled base (``models/tiny-tools-base``, built with
``--tools``) also saw :func:`solution_tool`: the sum handed to the ``calculator`` tool in the fenced syntax
(ToRL's, for base models) and the tool's output copied into the answer.
"""

from __future__ import annotations

import random

from grpo.tasks.base import Task
from grpo.tasks.registry import register_task
from rewards.extract import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN


def arithmetic_prompt(nums: list[int]) -> str:
    """The prompt for a sum, e.g. ``"Q: 6+2+2+7=?\\nA:"``; the completion starts right after ``A:``."""
    return "Q: " + "+".join(str(n) for n in nums) + "=?\nA:"


def solution_direct(nums: list[int]) -> str:
    """An answer with an empty think block: ``<think></think><answer>17</answer>``."""
    return f"{THINK_OPEN}{THINK_CLOSE}{ANSWER_OPEN}{sum(nums)}{ANSWER_CLOSE}"


def crosses_ten(total: int, n: int) -> bool:
    """True when ``total + n`` moves into the next ten (``18+5=23``, ``6+7=13``): the line needs a carry."""
    return (total + n) // 10 != total // 10


def first_attempt(total: int, n: int, rng: random.Random | None, slip: float = 0.0, drop_carry: float = 0.0) -> int:
    """What a sloppy writer first writes for ``total + n``.

    Args:
        total, n: the line's terms.
        rng: the writer's randomness; None = always right.
        slip: chance of a random slip (:func:`slipped_sum`: off by 1, 2 or 10).
        drop_carry: chance, on a line that crosses a ten, of dropping the carry: ``18+5=13``, ``6+7=3``. A
            systematic error (at ``drop_carry`` >= 0.5 it is the writer's most likely line), so sampling the
            writer more sharply does not fix it.
    """
    right = total + n
    if rng is None:
        return right
    if drop_carry and crosses_ten(total, n) and rng.random() < drop_carry:
        return right - 10
    if slip and rng.random() < slip:
        return slipped_sum(right, rng)
    return right


def solution_steps(nums: list[int], rng: random.Random | None = None, slip: float = 0.0,
                   drop_carry: float = 0.0) -> str:
    """A chain of partial sums: ``<think>6+2=8\\n8+2=10\\n10+7=17</think><answer>17</answer>``.

    Args:
        nums: the terms.
        rng, slip, drop_carry: a sloppy writer (:func:`first_attempt`): a wrong line is never checked, and the
            chain carries the wrong partial sum on, so the answer is wrong too.
    """
    total, lines = nums[0], []
    for n in nums[1:]:
        written = first_attempt(total, n, rng, slip, drop_carry)
        lines.append(f"{total}+{n}={written}")
        total = written
    return f"{THINK_OPEN}" + "\n".join(lines) + f"{THINK_CLOSE}{ANSWER_OPEN}{total}{ANSWER_CLOSE}"


# The careful style's verdicts; both words are in grpo.reasoning.DEFAULT_REFLECTION_WORDS, so
# reasoning/reflection_ratio counts this style. The bundled tokenizer has each as one token.
CHECK, WAIT = " check", " wait"


def slipped_sum(right: int, rng: random.Random) -> int:
    """A plausible slip for the partial sum ``right``: off by 1, 2 or 10 (a dropped carry), never below 1."""
    delta = rng.choice((-10, -2, -1, 1, 2, 10))
    return right + delta if right + delta >= 1 else right - delta


def careful_lines(nums: list[int], rng: random.Random | None, slip: float = 0.0,
                  drop_carry: float = 0.0) -> tuple[str, int]:
    """The careful style's think text and its total: partial sums, each checked (see :func:`solution_careful`)."""
    total, lines = nums[0], []
    for n in nums[1:]:
        right = total + n
        written = first_attempt(total, n, rng, slip, drop_carry)
        line = f"{total}+{n}={written}"
        if written != right:  # the check failed: say so and write the right sum
            line += f"{WAIT} {right}"
        lines.append(line + CHECK)
        total = right
    return "\n".join(lines), total


def solution_careful(nums: list[int], rng: random.Random | None = None, slip: float = 0.0,
                     drop_carry: float = 0.0) -> str:
    """Partial sums, each re-checked: a right line ends in ``check``, a wrong one is caught with ``wait`` and fixed.

    ``<think>6+2=8 check\\n8+2=0 wait 10 check\\n10+7=17 check</think><answer>17</answer>``: the same writer as
    :func:`solution_steps`, with the same first attempts (``slip``, ``drop_carry``), but every line is verified
    before the next, so a slip never reaches the answer.
    """
    think, total = careful_lines(nums, rng, slip, drop_carry)
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{total}{ANSWER_CLOSE}"


def solution_malformed(nums: list[int], rng: random.Random) -> str:
    """A completion that breaks the R1 format in one of a few ways, so the format reward has signal."""
    good = solution_direct(nums) if rng.random() < 0.5 else solution_steps(nums)
    kind = rng.randrange(4)
    if kind == 0:  # no tags at all
        return f" {sum(nums)}"
    if kind == 1:  # answer without its think block
        return f"{ANSWER_OPEN}{sum(nums)}{ANSWER_CLOSE}"
    if kind == 2:  # text after the answer
        return good + f" {sum(nums)}"
    return good.replace(ANSWER_CLOSE, "")  # unclosed answer


# The fenced tool syntax for base models: a call is "```calculator\n<expression>\n```", and the rollout appends the
# tool's output as "\n```output\n<result>\n```\n" (grpo.tools renders it so; tests/test_tools_demo.py checks
# that the two agree), then the model continues. The bundled tools tokenizer has each of these words as one token.
FENCE, CALCULATOR, OUTPUT = "```", "calculator", "output"


def calculator_call(nums: list[int]) -> str:
    """The call that hands the sum to the calculator: ``"```calculator\n6+2+2+7\n```"``."""
    return f"{FENCE}{CALCULATOR}\n" + "+".join(str(n) for n in nums) + f"\n{FENCE}"


def tool_output(result: str) -> str:
    """What the rollout appends after a call: ``"\n```output\n17\n```\n"``."""
    return f"\n{FENCE}{OUTPUT}\n{result}\n{FENCE}\n"


def solution_tool(nums: list[int]) -> str:
    """The sum handed to the calculator and its (true) output copied into the answer.

    ``<think>\n```calculator\n6+2+2+7\n```\n```output\n17\n```\n</think><answer>17</answer>``: the text the
    model writes up to the closing fence, the tool's output block (written by the rollout in training), then the
    answer. Always right, because the output is the true sum.
    """
    total = str(sum(nums))
    return (f"{THINK_OPEN}\n{calculator_call(nums)}{tool_output(total)}{THINK_CLOSE}"
            f"{ANSWER_OPEN}{total}{ANSWER_CLOSE}")


def make_arithmetic_row(rng: random.Random, min_terms: int = 2, max_terms: int = 8, max_digit: int = 9) -> dict:
    """One problem row: ``question`` ("6+2+2+7"), ``prompt``, gold ``answer`` ("17") and ``nums``."""
    k = rng.randint(min_terms, max_terms)
    nums = [rng.randint(1, max_digit) for _ in range(k)]
    return {
        "question": "+".join(map(str, nums)),
        "prompt": arithmetic_prompt(nums),
        "answer": str(sum(nums)),
        "nums": nums,
    }


# The eval set is drawn from its own seed so it never depends on the run's seed: every run of the
# default task is scored on the same problems, and the train stream skips them (held out).
EVAL_SEED = 1234


@register_task("arithmetic")
def arithmetic_task(min_terms: int = 2, max_terms: int = 8, max_digit: int = 9, num_eval: int = 256) -> Task:
    """Sums of ``min_terms``..``max_terms`` numbers in 1..``max_digit``; ``num_eval`` held-out problems."""
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"arithmetic task needs 2 <= min_terms <= max_terms, got {min_terms}, {max_terms}")
    if not 1 <= max_digit <= 9:
        raise ValueError(f"arithmetic task needs single digits: max_digit in 1..9, got {max_digit}")

    def make_row(rng: random.Random) -> dict:
        return make_arithmetic_row(rng, min_terms, max_terms, max_digit)

    eval_rng = random.Random(EVAL_SEED)
    eval_rows: list[dict] = []
    seen: set[str] = set()
    # Distinct problems only; the k=2 space is small, so cap attempts rather than loop forever.
    for _ in range(num_eval * 20):
        if len(eval_rows) == num_eval:
            break
        row = make_row(eval_rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            eval_rows.append(row)
    return Task("arithmetic", eval_rows, make_row=make_row, exclude=frozenset(seen),
                stats={"eval_rows": len(eval_rows)}, columns=("question", "answer", "nums"))
