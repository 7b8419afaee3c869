"""Rewards v3: a hedge, a list or a look-alike never scores 1; the canonical answer; the partial-parse guard;
number words and option letters after the answer; the recall fixes. One table per family, written as an attacker
would write them, plus the building blocks (``normalize_text``, ``canonical``, ``number_words``)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rewards import explain
from rewards.accuracy import Reason, judge
from rewards.after_answer import other_answer_after, retracted
from rewards.canon import canonical, containers_compare, exact_leaves, expand_pm, hedges_in
from rewards.extract import find_answer, number_words, stated_answers
from rewards.normalize import normalize_text


def r1(answer: str, after: str = "") -> str:
    return f"<think>I computed it.</think><answer>{answer}</answer>{after}"


# --- false positives: each scores 0, with the reason given -------------------------------------------------------

HEDGES = {
    "about, or, and a noun": ("about 7 or 8 apples", "8"),
    "parenthetical not": ("8 (not 7)", "8"),
    "at least": ("at least 8", "8"),
    "at most after": ("8 at most", "8"),
    "or inside text": ("7 \\text{ (or 8)}", "8"),
    "roughly": ("roughly \\frac{1}{2}", "\\frac{1}{2}"),
    "approx symbol": ("\\approx 3.14", "3.14"),
    "tilde": ("~12", "12"),
    "less than": ("less than 5", "5"),
    "between": ("between 4 and 5", "5"),
    "german": ("etwa 8", "8"),
    "french": ("7 ou 8", "8"),
    "maybe in text": ("\\text{maybe } 8", "8"),
    "an inequality for a number": ("x \\geq 8", "8"),
    "probably a word": ("probably north", "\\text{north}"),
    "question mark": ("8?", "8"),
    "rounded": ("8 rounded", "8"),
    "hedge around a box": ("about \\boxed{8}", "8"),
    "alternative after a box": ("\\boxed{8} or so", "8"),
}
LINES = {
    "two lines": ("7\n8", "8"),
    "latex line break": ("7 \\\\ 8", "8"),
    "three lines, last right": ("6\n7\n8", "8"),
    "a range": ("7 to 8", "8"),
    "side by side": ("7 8", "8"),
    "number words side by side": ("seven eight", "15"),
    "two math spans": ("$7$ $8$", "8"),
    "a lone bar": ("8 | 9", "9"),
    "mid": ("8 \\mid 9", "9"),
}
PARTIAL = {
    "zero-width inside": ("8\u200b1", "8"),
    "soft hyphen inside": ("1\u00ad2", "1"),
    "superscript is a power": ("3²", "3"),
    "sqrt with parentheses": ("2\\sqrt(3)", "2"),
    "repeating decimal is not its integer part": ("0.\\overline{6}", "0"),
    "mixed number is not its whole part": ("3 1/2", "3"),
    "prose with a second number": ("8 because 2 times 4", "8"),
}
CONTAINERS = {
    "rounding in a tuple": ("(0.0000003, 1)", "(0.0000004, 1)"),
    "rounding in an interval": ("[0.0000003, 2)", "[0.0000004, 2)"),
    "rounding in a set": ("\\{1, 0.0000003\\}", "\\{0.0000004, 1\\}"),
    "rounding in a matrix": ("\\begin{pmatrix} 1.0000001 \\\\ 2 \\end{pmatrix}",
                             "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    "rounding next to a symbol": ("(\\frac{\\pi}{2}, 0.0000003)", "(\\frac{\\pi}{2}, 0.0000004)"),
    "swapped tuple": ("(2, 1)", "(1, 2)"),
}
TAGS = {
    "capitalised first block": ("<think>w</think><Answer>9</Answer><answer>8</answer>", "8"),
    "upper-case second block": (r1("8") + "<ANSWER>9</ANSWER>", "8"),
    "fullwidth brackets": ("<think>w</think>＜answer＞9＜/answer＞<answer>8</answer>", "8"),
    "angle quotes": (r1("8") + "\u2039answer\u203a9\u2039/answer\u203a", "8"),
    "spaced tag": (r1("8") + "< answer >9</ answer>", "8"),
    "cyrillic letters in the tag": ("<think>w</think><аnswer>9</аnswer><answer>8</answer>", "8"),
}
PERCENT = {
    "percent on a fraction gold": ("0.5\\%", "\\frac{1}{2}"),
    "percent on a fraction gold, other value": ("5\\%", "\\frac{1}{2}"),
}
AFTER = {
    "number word": ("8", " No wait, it is nine."),
    "compound number word": ("21", " Hmm, twenty-two actually."),
    "option letter": ("8", " ... so the answer is (B)."),
    "retraction without a number": ("8", " Wait, that is wrong."),
    "text answer changed": ("north", " Actually, it is south."),
}


@pytest.mark.parametrize("table,reason", [(HEDGES, None), (LINES, Reason.MULTIPLE_ANSWERS), (PARTIAL, None),
                                          (CONTAINERS, None), (PERCENT, Reason.WRONG)],
                         ids=["hedges", "lines", "partial", "containers", "percent"])
def test_wrong_answers_score_zero(table, reason):
    verdicts = judge([r1(a) for a, _ in table.values()], [g for _, g in table.values()])
    got = {name: (v.score, v.reason.value) for name, v in zip(table, verdicts)}
    assert all(score == 0.0 for score, _ in got.values()), got
    if reason is not None:
        assert {r for _, r in got.values()} == {reason.value}, got


def test_hedges_say_hedged():
    verdicts = judge([r1(a) for a, _ in HEDGES.values()], [g for _, g in HEDGES.values()])
    assert {v.reason for v in verdicts} == {Reason.HEDGED}, [(n, v.reason) for n, v in zip(HEDGES, verdicts)]


def test_look_alike_tags_are_second_answers():
    verdicts = judge([c for c, _ in TAGS.values()], [g for _, g in TAGS.values()])
    assert [(v.score, v.reason) for v in verdicts] == [(0.0, Reason.MULTIPLE_ANSWERS)] * len(TAGS)


def test_after_the_answer_words_and_letters():
    verdicts = judge([r1(a, t) for a, t in AFTER.values()], ["8", "21", "8", "8", "\\text{north}"])
    assert [v.reason for v in verdicts] == [Reason.OTHER_ANSWER_AFTER] * 3 + [Reason.RETRACTED] * 2
    # restating the same answer in words, or the same option, is fine
    assert [v.score for v in judge([r1("8", " That is eight."), r1("(B)", " The answer is (B).")],
                                   ["8", "\\text{(B)}"])] == [1.0, 1.0]


# --- recall: each scores 1 ---------------------------------------------------------------------------------------

RECALL = {
    "pm gold, listed answer": ("1+\\sqrt{2}, 1-\\sqrt{2}", "1 \\pm \\sqrt{2}"),
    "pm answer, listed gold": ("1 \\pm \\sqrt{2}", "1-\\sqrt{2}, 1+\\sqrt{2}"),
    "short unit": ("12 cm", "12"),
    "currency per week": ("\\$45 per week", "45"),
    "text unit squared": ("15 \\text{ cm}^2", "15\\mbox{ cm}^2"),
    "unit in mbox gold": ("864", "864 \\mbox{ inches}^2"),
    "degrees": ("\\frac{270}{7}^\\circ", "\\frac{270}7\\text{ degrees}"),
    "capitalised text": ("North", "\\text{north}"),
    "option letter": ("C", "\\text{(C)}"),
    "mixed number": ("3 1/2", "\\frac{7}{2}"),
    "mixed number in latex gold": ("\\frac{9}{5}", "1\\frac{4}{5}"),
    "vulgar fraction": ("½", "\\frac{1}{2}"),
    "mixed vulgar": ("3½", "3.5"),
    "superscript power": ("2³", "8"),
    "superscript variable": ("x²", "x^2"),
    "repeating decimal": ("0.\\overline{3}", "\\frac{1}{3}"),
    "repeating decimal with a fixed part": ("0.1\\overline{6}", "\\frac{1}{6}"),
    "equal boxes": ("\\boxed{\\frac{1}{2}} = \\boxed{0.5}", "\\frac{1}{2}"),
    "lead-in": ("The final answer is 18", "18"),
    "one noun": ("18 apples", "18"),
    "percent on an integer gold": ("25\\%", "25"),
    "percent on a fraction gold means a hundredth": ("50\\%", "\\frac{1}{2}"),
    "list with and": ("3 and 4", "3, 4"),
    "fullwidth digits": ("４２", "42"),
    "one math span in prose": ("Therefore $x \\geq 5$ is the solution.", "x \\ge 5"),
    "number word": ("eight", "8"),
    "markdown lead-in": ("**Answer:** 8", "8"),
    "lead-in around a box": ("The answer is \\boxed{8}.", "8"),
    "inline code": ("`8`", "8"),
    "unit with a superscript": ("12 cm²", "12"),
    "unicode pi": ("π/2", "\\frac{\\pi}{2}"),
    "unicode root": ("√2", "\\sqrt{2}"),
    "interval for an inequality gold": ("(-793, 10)", "-793 < a < 10"),
}


def test_recall_cases_score_one():
    verdicts = judge([r1(a) for a, _ in RECALL.values()], [g for _, g in RECALL.values()])
    got = {name: (v.score, v.reason.value) for name, v in zip(RECALL, verdicts)}
    assert all(score == 1.0 for score, _ in got.values()), got


# --- building blocks -----------------------------------------------------------------------------------------------

def test_normalize_text():
    assert normalize_text("<Answer>３²</ANSWER>") == "<answer>3^{2}</answer>"
    assert normalize_text("8\u200b1\u00ad2\x07") == "812"
    assert normalize_text("3½ and ⅓") == "3 1/2 and 1/3"
    assert normalize_text("x₁ ٤٢ 𝟖") == "x_{1} 42 8"
    assert normalize_text("\u2039answer\u203a") == "<answer>"
    assert normalize_text("<answer>8</answer> 2 < 3") == "<answer>8</answer> 2 < 3"  # ASCII fast path unchanged


def test_find_answer_sees_every_spelling():
    assert find_answer("<ANSWER>8</Answer>").answer == "8"
    assert find_answer(r1("8") + "<answer >9</answer>").reason == "multiple_answers"
    found = find_answer(r1("\\boxed{1} \\boxed{2}"))
    assert found.reason == "multiple_answers" and found.boxes == ("1", "2")


def test_canonical_reading():
    assert canonical("The answer is \\$3 1/2 per week").text == "\\frac{7}{2}"
    assert canonical("0.1\\overline{6}").text == "\\frac{1}{6}"
    assert canonical("15\\mbox{ cm}^2").text == "15"
    assert canonical("\\text{North}").text_answer == "north"
    assert canonical("8 apples").prose == () and canonical("8 big apples").prose == ("big", "apples")
    assert canonical("2\\sqrt(3)").partial and not canonical("2\\sqrt{3}").partial
    assert canonical("7 \\text{ (or 8)}").separators == {"or"}
    assert hedges_in("about 7 \\text{ (not 8)} \\geq 6") == {"about", "not", "inequality"}
    assert expand_pm("3 \\pm 2 \\sqrt{2}") == "3+2 \\sqrt{2}, 3-2 \\sqrt{2}"


def test_exact_containers():
    assert exact_leaves("(0.5, 3)") == ("()", (Fraction(1, 2), Fraction(3)))
    assert exact_leaves("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}")[0] == "matrix 2x2"
    assert exact_leaves("(\\pi, 1)") is None
    assert containers_compare("(0.0000004, 1)", "(0.0000003, 1)") is False
    assert containers_compare("\\{1, 2\\}", "\\{2, 1\\}") is True
    assert containers_compare("[1, 2)", "(1, 2]") is None  # same values, other brackets: math-verify decides


def test_number_words_and_options_after_the_answer():
    assert number_words("twenty-one, one hundred and five, the right one, two thousand") == [21, 105, 2000]
    assert stated_answers(" No wait, it is nine (B).") == ["9", "(B)"]
    assert other_answer_after(" That is eight.", "8") is False
    assert other_answer_after(" 33", "3") and other_answer_after(" 3.5", "3")  # a restatement is a whole token
    assert retracted(" Oops, scratch that.") and not retracted(" I hope this helps.")


def test_explain_lists_the_new_reasons(capsys):
    assert explain.main(["--gold", "8", "--completion", r1("about 8")]) == 0
    assert "reason hedged" in capsys.readouterr().out
    assert {"hedged", "partial_parse", "retracted"} <= {r.value for r in Reason}
