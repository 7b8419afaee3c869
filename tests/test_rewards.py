"""Named table cases for the built-in rewards, the registry and score(): every rule, plus malformed and
adversarial completions. The math-verify pool is exercised here only through ordinary symbolic answers;
time bounds, pathological inputs and thread/process contexts are in test_rewards_sandbox.py."""

from __future__ import annotations

import math
import random
import sys
import time
import types
from fractions import Fraction
from importlib.metadata import EntryPoint

import pytest
import torch

import rewards
from rewards.accuracy import accuracy_reward
from rewards.arith import ArithError, evaluate
from rewards.combine import RewardError, build_rewards, score
from rewards.countdown import countdown_reward
from rewards.exact import plain_value
from rewards.extract import boxed_contents, extract_answer
from rewards.format_reward import format_reward, tag_count_reward
from rewards.golds import parse_gold, parse_golds
from rewards.overlong import overlong_penalty, overlong_reward


def r1(answer: str, think: str = "reasoning") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


# --- accuracy: extraction ------------------------------------------------------------------------------

EXTRACT = {
    "single block": (r1("17"), "r1", "17"),
    "glued number": ("<think>x</think><answer>18</answer>", "r1", "18"),
    "box inside block": (r1("so \\boxed{12}"), "r1", "12"),
    "same box twice": (r1("\\boxed{12} i.e. \\boxed{ 12 }"), "r1", "12"),
    "two different boxes": (r1("\\boxed{1}\\boxed{2}"), "r1", None),
    "two answer blocks": (r1("1") + "<answer>2</answer>", "r1", None),
    "answer inside think": ("<think><answer>1</answer></think><answer>1</answer>", "r1", None),
    "no answer block": ("<think>x</think> 17", "r1", None),
    "unclosed block": ("<think>x</think><answer>17", "r1", None),
    "close before open": ("</answer>17<answer>", "r1", None),
    "empty block": (r1("   "), "r1", None),
    "nested think in answer": (r1("<think>1</think>"), "r1", None),
    "unbalanced box": (r1("\\boxed{12"), "r1", None),
    "nested same box": (r1("\\boxed{\\boxed{12}}"), "r1", "\\boxed{12}"),
    "escaped brace inside box": (r1("\\boxed{\\{1, 2\\}}"), "r1", "\\{1, 2\\}"),
    "boxed mode": ("so $\\boxed{\\frac{1}{2}}$.", "boxed", "\\frac{1}{2}"),
    "boxed mode no box": ("the answer is 3", "boxed", None),
    "boxed mode two boxes": ("\\boxed{3} or \\boxed{4}", "boxed", None),
    "boxed without braces": ("\\boxed 5", "boxed", "5"),
    "auto picks r1": (r1("7"), "auto", "7"),
    "auto picks boxed": ("\\boxed{7}", "auto", "7"),
    "not a string": (None, "r1", None),
}


@pytest.mark.parametrize("text,fmt,expected", EXTRACT.values(), ids=EXTRACT.keys())
def test_extract_answer(text, fmt, expected):
    assert extract_answer(text, fmt) == expected


def test_boxes_are_scanned_in_linear_time():
    nested = "\\boxed{" * 20000 + "1" + "}" * 20000  # 160 kB of nested boxes: one top-level box
    t = time.perf_counter()
    assert len(boxed_contents(nested)) == 1
    assert format_reward([nested], template="boxed") == [1.0]
    assert accuracy_reward([nested], answer=["1"], answer_format="boxed", max_completion_chars=1 << 20) == [0.0]
    assert time.perf_counter() - t < 2.0


def test_extract_answer_caps_length():
    long = r1("17", think="x" * 100)
    assert extract_answer(long, "r1", max_chars=1000) == "17"
    assert extract_answer(long, "r1", max_chars=50) is None


# --- accuracy: the exact path (no math-verify) ----------------------------------------------------------

PLAIN = {
    "integer": ("42", Fraction(42)),
    "thousands comma": ("1,234,567", Fraction(1234567)),
    "thousands thin space": ("1\\,234", Fraction(1234)),
    "thousands latex comma": ("1{,}234", Fraction(1234)),
    "dollar": ("$18", Fraction(18)),
    "latex dollar and cents": ("\\$18.50", Fraction(37, 2)),
    "unicode minus": ("\u22125", Fraction(-5)),
    "trailing .0": ("5.0", Fraction(5)),
    "sentence period": ("5.", Fraction(5)),
    "scientific": ("1e5", Fraction(100000)),
    "fraction slash": ("7/2", Fraction(7, 2)),
    "latex frac": ("\\frac{7}{2}", Fraction(7, 2)),
    "dfrac short": ("-\\dfrac12", Fraction(-1, 2)),
    "math delimiters": ("$\\frac{3}{4}$", Fraction(3, 4)),
    "text wrapper": ("\\text{12}", Fraction(12)),
    "arithmetic": ("(6+2)*3", Fraction(24)),
    "word": ("twelve", None),
    "symbolic": ("\\sqrt{2}", None),
    "bad thousands": ("1,23", None),
}


@pytest.mark.parametrize("text,expected", PLAIN.values(), ids=PLAIN.keys())
def test_plain_value(text, expected):
    got = plain_value(text)
    assert (got[0] if got else None) == expected


def test_plain_value_flags_percent():
    assert plain_value("25%") == (Fraction(25), True)
    assert plain_value("25\\%") == (Fraction(25), True)


ACCURACY = {
    # the tiny task's contract
    "tiny task": (r1("17"), "17", 1.0),
    "tiny task wrong": (r1("16"), "17", 0.0),
    "glued to tags": ("<think>9*2</think><answer>18</answer>", "18", 1.0),
    # normalisation
    "thousands": (r1("7,425,000"), "7425000", 1.0),
    "dollar sign": (r1("$18"), "18", 1.0),
    "dollars and cents": (r1("\\$18.00"), "18", 1.0),
    "unicode minus": (r1("\u22123"), "-3", 1.0),
    "trailing .0": (r1("5.0"), "5", 1.0),
    "fraction vs decimal": (r1("\\frac{1}{2}"), "0.5", 1.0),
    "decimal vs fraction gold": (r1("0.75"), "\\frac{3}{4}", 1.0),
    "1e5 is not 1": (r1("1e5"), "1", 0.0),
    "1e5 is 100000": (r1("1e5"), "100000", 1.0),
    "percent when gold is percent": (r1("25%"), "25\\%", 1.0),
    "plain number for percent gold": (r1("25"), "25\\%", 1.0),
    "fraction of percent gold": (r1("0.25"), "25\\%", 1.0),
    "percent on a plain-number gold is cosmetic": (r1("25%"), "25", 1.0),
    "fraction for a plain-number gold is not a percent": (r1("0.25"), "25", 0.0),
    "arithmetic answer": (r1("15+3"), "18", 1.0),
    "boxed in block": (r1("The answer is \\boxed{18}."), "18", 1.0),
    # hacks and ambiguity
    "3 or 4": (r1("3 or 4"), "3", 0.0),
    "3 \\text{ or } 4": (r1("3 \\text{ or } 4"), "4", 0.0),
    "list for one value": (r1("3, 4"), "3", 0.0),
    "two different boxes": (r1("\\boxed{1}\\boxed{2}"), "1", 0.0),
    "false equation": (r1("\\boxed{41 = 42}"), "42", 0.0),
    "equation with variable": (r1("x = 42"), "42", 1.0),
    "true chain": (r1("6*7 = 42"), "42", 1.0),
    "several answer blocks": (r1("42") + "<answer>42</answer>", "42", 0.0),
    "answer only in think": ("<think><answer>42</answer></think>", "42", 0.0),
    "no tags": ("42", "42", 0.0),
    "empty completion": ("", "42", 0.0),
    "off by one": (r1("43"), "42", 0.0),
    # symbolic (math-verify in the pool)
    "units as words": (r1("18 dollars"), "18", 1.0),
    "sqrt equivalence": (r1("2\\sqrt{2}"), "\\sqrt{8}", 1.0),
    "pi fraction": (r1("\\boxed{\\frac{\\pi}{2}}"), "\\frac{\\pi}{2}", 1.0),
    "tuple": (r1("\\left( 3, \\frac{\\pi}{2} \\right)"), "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
    "tuple wrong": (r1("(3, \\pi)"), "\\left( 3, \\frac{\\pi}{2} \\right)", 0.0),
    "list gold matches list": (r1("3, 4"), "3, 4", 1.0),
    "list gold wrong list": (r1("3, 5"), "3, 4", 0.0),
    "interval": (r1("[1, 2)"), "[1,2)", 1.0),
    "symbolic wrong": (r1("\\sqrt{3}"), "\\sqrt{8}", 0.0),
    "text garbage": (r1("banana"), "\\sqrt{2}", 0.0),
}


@pytest.mark.parametrize("completion,gold,expected", ACCURACY.values(), ids=ACCURACY.keys())
def test_accuracy_cases(completion, gold, expected):
    assert rewards.get("accuracy")(completions=[completion], answer=[gold]) == [expected]


def test_accuracy_boxed_template():
    got = accuracy_reward(["Thus $\\boxed{5}$.", "\\boxed{5} \\boxed{6}", "5"], answer=["5"] * 3, answer_format="boxed")
    assert got == [1.0, 0.0, 0.0]


def test_accuracy_gsm8k_style_rows():
    """A correct gold written in R1 format scores 1 on every row; off-by-one scores 0 (rows built here)."""
    rng = random.Random(0)
    golds = [str(rng.randint(0, 10**6)) for _ in range(200)] + ["-3", "0", "1250", "2.5"]
    for fmt in ("{}", "{:,}"):
        completions = [r1(fmt.format(int(g)) if g.lstrip("-").isdigit() else g) for g in golds]
        assert accuracy_reward(completions, answer=golds) == [1.0] * len(golds)
    off = [r1(str(Fraction(g) + 1)) for g in golds]
    assert accuracy_reward(off, answer=golds) == [0.0] * len(golds)


def test_accuracy_reports_counters_and_caches_verdicts():
    batch = [r1("5\\sqrt{2}"), r1("\\sqrt{50}"), r1("\\boxed{9^{9^{9}}}"), r1("1")]
    golds = ["\\sqrt{50}", "\\sqrt{50}", "1", "1"]
    with rewards.collect_metrics() as m:
        assert accuracy_reward(batch, answer=golds) == [1.0, 1.0, 0.0, 1.0]
    # "\\sqrt{50}" is the gold's own text (decided in-process): one trip to the pool, for "5\\sqrt{2}"
    assert m["timeouts"] == 0 and m["rejected"] == 1 and m["math_verify_calls"] == 1
    with rewards.collect_metrics() as m:
        assert accuracy_reward(batch, answer=golds) == [1.0, 1.0, 0.0, 1.0]
    assert m["math_verify_calls"] == 0  # verdicts cached: no second trip to the pool


# --- golds -------------------------------------------------------------------------------------------


def test_parse_gold():
    assert parse_gold("1,234").number == Fraction(1234)
    assert parse_gold("25\\%").percent
    assert parse_gold("\\boxed{7}").number == Fraction(7)
    assert parse_gold("\\frac{\\pi}{2}").number is None


BAD_GOLDS = {
    "empty": ("", "empty"),
    "spaces": ("   ", "empty"),
    "several boxes": ("\\boxed{1}\\boxed{2}", "several"),
    "no expression": ("\\frac{", "cannot be parsed"),
}


@pytest.mark.parametrize("gold,message", BAD_GOLDS.values(), ids=BAD_GOLDS.keys())
def test_parse_gold_rejects(gold, message):
    with pytest.raises(ValueError, match=message):
        parse_gold(gold)


def test_parse_golds_names_the_row():
    with pytest.raises(ValueError, match="row 2"):
        parse_golds(["1", "\\sqrt{2}", None])


def test_accuracy_bad_gold_is_one_clear_error_naming_sample():
    with pytest.raises(ValueError, match="gold answer '' is empty"):
        accuracy_reward([r1("1"), r1("2")], answer=["1", ""])
    with pytest.raises(RewardError, match="reward 'accuracy' failed on sample 1 .*gold answer '' is empty"):
        score(build_rewards({"accuracy": 1.0}), [r1("1"), r1("2")], _rows(["1", ""]), ["p", "p"])


# --- format and tag_count ------------------------------------------------------------------------------

FORMAT = {
    "strict": (r1("3"), {}, 1.0),
    "empty think ok": (r1("3", think=""), {}, 1.0),
    "whitespace between": ("<think>a</think>\n<answer>3</answer>\n", {}, 1.0),
    "text after answer": (r1("3") + " 3", {}, 0.0),
    "text before think": ("ok " + r1("3"), {}, 0.0),
    "no think": ("<answer>3</answer>", {}, 0.0),
    "nested think": ("<think><think>a</think></think><answer>3</answer>", {}, 0.0),
    "repeated answer": (r1("3") + "<answer>3</answer>", {}, 0.0),
    "answer before think": ("<answer>3</answer><think>a</think>", {}, 0.0),
    "empty answer": (r1(" "), {}, 0.0),
    "prefilled think": ("a</think><answer>3</answer>", {"prefilled_think": True}, 1.0),
    "prefilled but wrote think": (r1("3"), {"prefilled_think": True}, 0.0),
    "prefilled without kwarg": ("a</think><answer>3</answer>", {}, 0.0),
    "boxed": ("so $\\boxed{3}$.", {"template": "boxed"}, 1.0),
    "boxed display math": ("\\[\\boxed{3}\\]", {"template": "boxed"}, 1.0),
    "boxed text after": ("\\boxed{3} and more", {"template": "boxed"}, 0.0),
    "boxed twice": ("\\boxed{3}\\boxed{3}", {"template": "boxed"}, 0.0),
    "boxed empty": ("\\boxed{}", {"template": "boxed"}, 0.0),
    "boxed with r1 tags": ("<answer>\\boxed{3}</answer>", {"template": "boxed"}, 0.0),
    "boxed unbalanced": ("\\boxed{3", {"template": "boxed"}, 0.0),
}


@pytest.mark.parametrize("completion,kwargs,expected", FORMAT.values(), ids=FORMAT.keys())
def test_format_cases(completion, kwargs, expected):
    assert rewards.get("format")(completions=[completion], **kwargs) == [expected]


def test_format_unknown_template():
    with pytest.raises(ValueError, match="template must be one of"):
        format_reward(["x"], template="xml")


TAGS = {
    "all four": (r1("3"), {}, 1.0),
    "missing close answer": ("<think>a</think><answer>3", {}, 0.75),
    "repeated think": ("<think><think>a</think><answer>3</answer>", {}, 0.75),
    "none": ("3", {}, 0.0),
    "prefilled": ("a</think><answer>3</answer>", {"prefilled_think": True}, 1.0),
}


@pytest.mark.parametrize("completion,kwargs,expected", TAGS.values(), ids=TAGS.keys())
def test_tag_count_cases(completion, kwargs, expected):
    assert tag_count_reward([completion], **kwargs) == [expected]


# --- countdown -----------------------------------------------------------------------------------------

COUNTDOWN = {
    "right": ("(25-5)*4/2", 40, [2, 4, 5, 25], 1.0),
    "right with result": ("(25 - 5) * 4 / 2 = 40", 40, [2, 4, 5, 25], 1.0),
    "latex times": ("(25 - 5) \\times 4 \\div 2", 40, [2, 4, 5, 25], 1.0),
    "wrong value": ("25+5+4+2", 40, [2, 4, 5, 25], 0.1),
    "wrong stated result": ("(25-5)*4/2 = 41", 40, [2, 4, 5, 25], 0.1),
    "number reused": ("25+5+5+5", 40, [2, 4, 5, 25], 0.1),
    "number missing": ("(25-5)*2", 40, [2, 4, 5, 25], 0.1),
    "foreign number": ("(25-5)*2*1", 40, [2, 4, 5, 25], 0.1),
    "decimal literal": ("(25-5)*4/2*1.0", 40, [2, 4, 5, 25], 0.1),
    "unary minus": ("-2+4*5+25-3", 40, [2, 4, 5, 25, 3], 0.0),
    "exact fractions": ("(1/3)*3*5", 5, [1, 3, 3, 5], 1.0),
    "division by zero": ("4/(2-2)", 40, [4, 2, 2], 0.0),
    "python power": ("2**5+8", 40, [2, 5, 8], 0.0),
    "code injection": ("__import__('os').system('true')", 40, [2], 0.0),
    "letters": ("x+1", 40, [1], 0.0),
    "deep nesting": ("(" * 500 + "40" + ")" * 500, 40, [40], 0.0),
}


@pytest.mark.parametrize("equation,target,nums,expected", COUNTDOWN.values(), ids=COUNTDOWN.keys())
def test_countdown_cases(equation, target, nums, expected):
    got = rewards.get("countdown")(completions=[r1(equation)], target=[target], nums=[nums], format_score=0.1)
    assert got == [expected]


def test_countdown_needs_single_answer():
    assert countdown_reward(["(25-5)*4/2"], target=[40], nums=[[2, 4, 5, 25]]) == [0.0]


def test_arith_parser():
    assert evaluate("2 * (3 + 4) - 6 / 4").value == Fraction(25, 2)
    assert evaluate("-(2)").value == -2
    for bad in ["2 +", "(2", "2 3", "2 ^ 3", "1e5", "", "2 // 3"]:
        with pytest.raises(ArithError):
            evaluate(bad)
    with pytest.raises(ArithError):
        evaluate("-2", allow_unary=False)


# --- overlong (DAPO Eq. 13) ----------------------------------------------------------------------------

OVERLONG = {  # L_max = 100, L_cache = 20: soft limit 80
    "short": (10, 0.0),
    "at soft limit": (80, 0.0),
    "one past soft limit": (81, -1 / 20),
    "middle of ramp": (90, -0.5),
    "at hard limit": (100, -1.0),
    "beyond": (150, -1.0),
}


@pytest.mark.parametrize("length,expected", OVERLONG.values(), ids=OVERLONG.keys())
def test_overlong_penalty(length, expected):
    assert overlong_penalty(length, 100, 20) == pytest.approx(expected)


def test_overlong_reward_contract():
    fn = rewards.get("overlong")
    got = fn(completions=["a"] * 3, completion_lengths=[5, 90, 101], max_completion_length=100, overlong_buffer=20)
    assert got == pytest.approx([0.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="needs kwargs"):
        overlong_reward(["a"], completion_lengths=[1])
    with pytest.raises(ValueError, match="completion_lengths"):
        overlong_reward(["a"], max_completion_length=10, overlong_buffer=5)
    with pytest.raises(ValueError, match="overlong_buffer"):
        overlong_reward(["a"], completion_lengths=[1], max_completion_length=10, overlong_buffer=0)


# --- registry ------------------------------------------------------------------------------------------


def _plugin_module(monkeypatch, name: str = "my_verifiers") -> types.ModuleType:
    mod = types.ModuleType(name)

    def half(completions, **columns):
        return [0.5] * len(completions)

    def picky(completions, answer, **columns):
        if any(c == "boom" for c in completions):
            raise ZeroDivisionError("cannot handle boom")
        return [1.0 if c == a else None for c, a in zip(completions, answer)]

    def wrong_length(completions, **columns):
        return [1.0]

    def nan_value(completions, **columns):
        return [math.nan] * len(completions)

    def with_kwarg(completions, tolerance: float = 0.0):
        return [tolerance] * len(completions)

    for fn in (half, picky, wrong_length, nan_value, with_kwarg):
        setattr(mod, fn.__name__, fn)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def test_get_resolves_names_paths_and_entry_points(monkeypatch):
    _plugin_module(monkeypatch)
    assert rewards.get("accuracy").__wrapped__ is accuracy_reward  # wrapped: it also takes conversational completions
    assert rewards.get("my_verifiers:half")(["a", "b"]) == [0.5, 0.5]
    ep = EntryPoint(name="ep_half", value="my_verifiers:half", group=rewards.ENTRY_POINT_GROUP)
    monkeypatch.setattr(rewards.registry, "entry_points", lambda group: [ep] if group == rewards.ENTRY_POINT_GROUP else [])
    assert rewards.get("ep_half")(["a"]) == [0.5]
    assert "ep_half" in rewards.available()


def test_get_unknown_names_list_known():
    with pytest.raises(KeyError, match="known rewards: .*accuracy.*countdown.*format.*overlong.*tag_count"):
        rewards.get("acuracy")
    with pytest.raises(KeyError, match="no module 'no_such_module_xyz' on the Python path; run from the folder"):
        rewards.get("no_such_module_xyz:f")
    with pytest.raises(KeyError, match="has no function"):
        rewards.get("math:no_such_function")


def test_broken_entry_point_says_so(monkeypatch):
    ep = EntryPoint(name="broken", value="no_such_module_xyz:f", group=rewards.ENTRY_POINT_GROUP)
    monkeypatch.setattr(rewards.registry, "entry_points", lambda group: [ep])
    with pytest.raises(KeyError, match="entry point .* failed to load"):
        rewards.get("broken")


# --- build_rewards and score ---------------------------------------------------------------------------


def test_build_rewards_forms(monkeypatch):
    _plugin_module(monkeypatch)
    specs = build_rewards({"accuracy": 1.0, "format": {"weight": 0.1, "kwargs": {"prefilled_think": True}},
                           "my_verifiers:picky": {"weight": 2, "on_error": "zero"}})
    assert [(s.name, s.weight, s.kwargs, s.on_error) for s in specs] == [
        ("accuracy", 1.0, {}, "raise"), ("format", 0.1, {"prefilled_think": True}, "raise"),
        ("my_verifiers:picky", 2.0, {}, "zero")]


BAD_SPECS = {
    "bad on_error": ({"accuracy": {"on_error": "ignore"}}, ValueError, "on_error must be"),
    "unknown key": ({"accuracy": {"wieght": 1}}, ValueError, "unknown keys"),
    "unknown kwarg": ({"my_verifiers:with_kwarg": {"kwargs": {"tolerence": 1}}}, ValueError,
                      r"has no parameter .tolerence. \(did you mean .tolerance.\?\)"),
    "unknown name": ({"nope": 1.0}, KeyError, "unknown reward"),
}


@pytest.mark.parametrize("spec,exc,message", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_build_rewards_rejects(monkeypatch, spec, exc, message):
    _plugin_module(monkeypatch)
    with pytest.raises(exc, match=message):
        build_rewards(spec)


def _rows(answers):
    return [{"prompt": "p", "answer": a} for a in answers]


def test_score_weighted_sum_none_and_metrics(monkeypatch):
    _plugin_module(monkeypatch)
    specs = build_rewards({"accuracy": 1.0, "format": 0.5, "my_verifiers:picky": 2.0})
    completions = [r1("3"), "3", r1("4")]
    answers = ["3", "3", "3"]
    total, per, metrics = score(specs, completions, _rows(answers), ["p"] * 3, completion_lengths=[5, 1, 5])
    assert per["accuracy"].tolist() == [1.0, 0.0, 0.0]
    assert per["format"].tolist() == [1.0, 0.0, 1.0]
    assert per["my_verifiers:picky"][1] == 2.0 / 2 and torch.isnan(per["my_verifiers:picky"][0])
    assert total.tolist() == pytest.approx([1.5, 2.0, 0.5])  # None adds 0
    assert metrics["rewards/accuracy/errors"] == 0 and metrics["rewards/accuracy/timeouts"] == 0
    assert metrics["rewards/my_verifiers:picky/errors"] == 0


def test_score_passes_completion_lengths_to_overlong():
    specs = build_rewards({"overlong": {"kwargs": {"max_completion_length": 10, "overlong_buffer": 4}}})
    total, _, _ = score(specs, ["a", "b"], _rows(["1", "1"]), ["p", "p"], completion_lengths=[6, 8])
    assert total.tolist() == pytest.approx([0.0, -0.5])


def test_raising_verifier_one_clear_error(monkeypatch):
    _plugin_module(monkeypatch)
    specs = build_rewards({"my_verifiers:picky": 1.0})
    with pytest.raises(RewardError) as info:
        score(specs, ["a", "boom", "c"], _rows(["a", "b", "c"]), ["p"] * 3)
    msg = str(info.value)
    assert "my_verifiers:picky" in msg and "sample 1" in msg and "ZeroDivisionError: cannot handle boom" in msg
    assert "\n" not in msg and "on_error: zero" in msg


def test_on_error_zero_scores_failing_samples_zero(monkeypatch):
    _plugin_module(monkeypatch)
    specs = build_rewards({"my_verifiers:picky": {"on_error": "zero"}})
    total, per, metrics = score(specs, ["a", "boom", "c"], _rows(["a", "b", "x"]), ["p"] * 3)
    assert per["my_verifiers:picky"][0] == 1.0 and per["my_verifiers:picky"][1] == 0.0
    assert torch.isnan(per["my_verifiers:picky"][2])
    assert total.tolist() == [1.0, 0.0, 0.0]
    assert metrics["rewards/my_verifiers:picky/errors"] == 1.0


BAD_RETURNS = {
    "wrong length": ("my_verifiers:wrong_length", "returned 1 values for 2 completions"),
    "nan": ("my_verifiers:nan_value", "returned nan for sample 0"),
}


@pytest.mark.parametrize("name,message", BAD_RETURNS.values(), ids=BAD_RETURNS.keys())
def test_bad_return_values_are_errors(monkeypatch, name, message):
    _plugin_module(monkeypatch)
    with pytest.raises(RewardError, match=message):
        score(build_rewards({name: {"on_error": "zero"}}), ["a", "b"], _rows(["a", "b"]), ["p", "p"])


def test_builtin_rewards_never_raise_on_adversarial_text():
    nasty = ["", "<answer>", "</answer><answer>", "<think>" * 1000, "\\boxed{" * 1000, "}" * 1000,
             r1("\\frac{1}{0}"), r1("1/0"), r1("0/0"), r1("\x00\ud800"), r1("$" * 50), r1("\\boxed{" * 40 + "1" + "}" * 40)]
    columns = {"answer": ["1"] * len(nasty), "target": [1] * len(nasty), "nums": [[1]] * len(nasty)}
    for name in ("accuracy", "format", "tag_count", "countdown"):
        values = rewards.get(name)(completions=nasty, **columns)
        assert len(values) == len(nasty) and all(isinstance(v, float) and 0 <= v <= 1 for v in values), name
    assert rewards.get("accuracy")(completions=nasty, **columns) == [0.0] * len(nasty)


def test_builtin_rewards_are_fast_on_1mb_text():
    huge = ["<think>" + "x" * (1 << 20) + "</think><answer>1</answer>", "<answer>" * (1 << 17), "{" * (1 << 20),
            r1("(" * (1 << 19) + ")" * (1 << 19))]
    columns = {"answer": ["1"] * 4, "target": [1] * 4, "nums": [[1]] * 4, "completion_lengths": [1] * 4}
    for name in ("accuracy", "format", "tag_count", "countdown"):
        t = time.perf_counter()
        values = rewards.get(name)(completions=huge, **columns)
        assert len(values) == 4 and time.perf_counter() - t < 2.0, name
    assert rewards.get("accuracy")(completions=huge, **columns) == [0.0] * 4  # over the length cap: 0 unparsed


def test_accuracy_rejects_bad_kwargs():
    with pytest.raises(ValueError, match="answer_format must be one of r1, boxed, auto"):
        accuracy_reward([None], answer=["1"], answer_format="xml")
    with pytest.raises(ValueError, match="deadline_s must be > 0"):
        accuracy_reward([r1("1")], answer=["1"], deadline_s=0)
