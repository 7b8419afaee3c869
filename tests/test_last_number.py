"""``answer_format: last_number`` (lm-eval's flexible-extract): named cases, including the hedges it cannot catch."""

from __future__ import annotations

import pytest

from rewards.accuracy import accuracy_reward, judge
from rewards.last_number import find_last_number, numbers_in

CASES = [  # (name, completion, gold, score, reason)
    ("prose", "To add 7 and 5, we add them together: 7 + 5 = 12.", "12", 1.0, "right"),
    ("bare", "12", "12", 1.0, "right"),
    ("full stop is not a decimal point", "The answer is 12.", "12", 1.0, "right"),
    ("thousands separator", "In total 1,234 apples", "1234", 1.0, "right"),
    ("decimal", "It costs 2.50 dollars", "2.5", 1.0, "right"),
    ("dollar sign", "It costs $18.00", "18", 1.0, "right"),
    ("negative", "3 - 5 = -2", "-2", 1.0, "right"),
    ("binary minus is not a sign", "we get 10-3", "3", 1.0, "right"),
    ("wrong", "7 + 5 = 13", "12", 0.0, "wrong"),
    ("no number", "I cannot answer that.", "12", 0.0, "no_answer"),
    ("empty", "", "12", 0.0, "no_answer"),
    # its stated weakness: a hedge or a check after the answer is read as the answer
    ("hedge after the answer", "It is 12, or maybe 13", "12", 0.0, "wrong"),
    ("check after the answer", "7 + 5 = 12. Check: 12 - 5 = 7", "12", 0.0, "wrong"),
    ("tags are just text", "<think>7+5</think><answer>12</answer>", "12", 1.0, "right"),
]


@pytest.mark.parametrize("name,completion,gold,score,reason", CASES, ids=[c[0] for c in CASES])
def test_last_number_verdicts(name, completion, gold, score, reason):
    (v,) = judge([completion], [gold], answer_format="last_number")
    assert (v.score, v.reason.value) == (score, reason), v


def test_reward_and_caps():
    assert accuracy_reward(["7 + 5 = 12.", "7 + 5 = 11."], answer=["12", "12"], answer_format="last_number") == [1.0,
                                                                                                              0.0]
    (v,) = judge(["12 " * 100], ["12"], answer_format="last_number", max_completion_chars=50)
    assert v.reason.value == "too_long"
    (v,) = judge(["x = " + "9" * 2000], ["12"], answer_format="last_number", max_answer_chars=1000)
    assert v.reason.value == "too_long"


def test_extraction():
    assert numbers_in("x-5 and (3)-2 -7 1.5. 12,34") == ["5", "3", "2", "-7", "1.5", "12", "34"]
    assert find_last_number("no digits").reason == "no_answer"
    assert find_last_number("a 1 b 2 c").answer == "2"


def test_unknown_format_lists_last_number():
    with pytest.raises(ValueError, match="last_number"):
        judge(["1"], ["1"], answer_format="lastnumber")


def test_last_number_reads_the_text_as_the_other_formats_do():
    """Fullwidth digits and a zero-width space inside a number are read as a reader sees them (rewards.normalize)."""
    assert find_last_number("It is \uff11\uff12").answer == "12"
    assert find_last_number("7 + 5 = 1\u200b2.").answer == "12"
