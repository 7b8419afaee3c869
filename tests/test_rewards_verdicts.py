"""Rewards v2: adversarial completions score 0 (one table per attack category), recall cases score 1, every
verdict says why (reason codes, ``rewards.accuracy.judge``), ``python -m rewards.explain``, structured gold
problems, the spec parser, and ``deadline_s`` for any reward (a hanging plug-in costs a step its deadline)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import rewards
from rewards import explain
from rewards.accuracy import Reason, accuracy_reward, judge, judge_locally
from rewards.combine import RewardError, build_rewards, score
from rewards.extract import find_answer, stated_answers
from rewards.golds import GoldProblem, check_golds, parse_gold
from rewards.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]


def r1(answer: str, after: str = "") -> str:
    return f"<think>reasoning</think><answer>{answer}</answer>{after}"


def scores(completions: list[str], golds: list[str], **kwargs) -> list[float]:
    return accuracy_reward(completions, answer=golds, **kwargs)


# --- adversarial: every one of these must score 0 -------------------------------------------------------

NEAR_MISS_NUMBERS = {
    "factorial off by two": ("\\frac{1}{2004!}", "\\frac{1}{2006!}"),
    "tiny power off by one": ("\\frac{1}{2^{98}}", "\\frac{1}{2^{99}}"),
    "tiny decimals": ("0.0000002", "0.0000001"),
    "repeating fraction as decimal": ("0.333333", "\\frac{1}{3}"),
    "short decimal of a third": ("0.3333", "\\frac{1}{3}"),
    "pi rounded": ("1.5708", "\\frac{\\pi}{2}"),
    "sqrt rounded": ("1.41421356", "\\sqrt{2}"),
    "big power off by one": ("2^{100}+1", "2^{100}"),
}
LOST_SIGNS = {
    "plus for minus": ("1+\\frac{1}{e}", "1-\\frac{1}{e}"),
    "partial parse drops a term": ("1 + \\frac{1}{\\mathrm{e}}", "1"),
    "partial parse against the full gold": ("1 + \\frac{1}{\\mathrm{e}}", "1-\\frac{1}{e}"),
    "negated": ("-12", "12"),
}
AFTER_ANSWER = {
    "a box after the answer": ("12", " \\boxed{13}", "12"),
    "a number stated after": ("12", " Actually, the final answer is 13.", "12"),
    "a math span after": ("12", " so $x = 13$", "12"),
    "a fraction after": ("\\frac{1}{2}", " or maybe 2/3", "\\frac{1}{2}"),
    "another number after the box, inside the block": ("\\boxed{12} Actually 13", "", "12"),
}
PERCENT = {
    "fraction for a plain-number gold": ("0.25", "25"),
    "percent of another number": ("26\\%", "25"),
    "percent gold, wrong fraction": ("0.26", "25\\%"),
}
MARKDOWN = {
    "bold wrong number": ("**74**", "73"),
    "textbf wrong number": ("\\textbf{74}", "73"),
    "italic wrong number": ("*74*", "73"),
}
CANDIDATES = {
    "or": ("12 or 13", "12"),
    "comma list": ("12, 13", "12"),
    "two boxes": ("\\boxed{12}\\boxed{13}", "12"),
    "equation with a wrong side": ("11 = 12", "12"),
}
TOWERS = {
    "brace tower": ("9^{9^{9}}", "12"),
    "plain tower": ("9^9^9", "12"),
    "huge exponent": ("2^{1000000}", "12"),
    "huge factorial": ("100000!", "12"),
}


@pytest.mark.parametrize("category", ["near_miss", "lost_sign", "percent", "markdown", "candidates", "towers"])
def test_adversarial_answers_score_zero(category):
    table = {"near_miss": NEAR_MISS_NUMBERS, "lost_sign": LOST_SIGNS, "percent": PERCENT, "markdown": MARKDOWN,
             "candidates": CANDIDATES, "towers": TOWERS}[category]
    got = scores([r1(pred) for pred, _ in table.values()], [gold for _, gold in table.values()])
    assert got == [0.0] * len(table), dict(zip(table, got))


def test_a_different_answer_after_the_answer_scores_zero_and_says_so():
    verdicts = judge([r1(a, after) for a, after, _ in AFTER_ANSWER.values()], [g for _, _, g in AFTER_ANSWER.values()])
    assert [(v.score, v.reason) for v in verdicts] == [(0.0, Reason.OTHER_ANSWER_AFTER)] * len(AFTER_ANSWER)
    # boxed format: after the last box
    assert judge(["so \\boxed{12}. Hmm, 13?"], ["12"], answer_format="boxed")[0].reason is Reason.OTHER_ANSWER_AFTER


def test_after_answer_kwarg():
    harmless = [r1("12", " I hope this helps."), r1("12", " So the answer is 12."), r1("12", " \\boxed{12}")]
    assert scores(harmless, ["12"] * 3) == [1.0, 1.0, 1.0]  # no other answer: the format reward's business
    assert scores([r1("12", " \\boxed{13}")], ["12"], after_answer="ignore") == [1.0]
    # a box inside a math span: the tail starts by closing the span; "$B$" names something, it is not an answer
    solution = "So there are $\\boxed{2}$ values for $B$. Final Answer: The final answer is $2$."
    assert scores([solution], ["2"], answer_format="boxed") == [1.0]
    with pytest.raises(ValueError, match="after_answer must be one of strict, ignore"):
        scores([r1("12")], ["12"], after_answer="lenient")


def test_stated_answers_reads_boxes_spans_and_numbers():
    assert stated_answers(" so $x = 13$ and \\boxed{14}, not 15.") == ["14", "x = 13", "15"]
    assert stated_answers(" Done.") == []


# --- recall: these must score 1 ------------------------------------------------------------------------

RECALL = {
    "percent sign is cosmetic": ("25\\%", "25"),
    "plain percent sign": ("25%", "25"),
    "markdown bold": ("**73**", "73"),
    "markdown italic": ("*73*", "73"),
    "textbf": ("\\textbf{73}", "73"),
    "bold in a box": ("\\boxed{\\mathbf{73}}", "73"),
    "radical forms": ("\\sqrt{\\frac{1}{n}}", "\\frac{1}{\\sqrt{n}}"),
    "radicals of numbers": ("\\sqrt{8}", "2\\sqrt{2}"),
    "factorial exact": ("\\frac{1}{2006!}", "\\frac{1}{2006!}"),
    "power spelled differently": ("2^{-99}", "\\frac{1}{2^{99}}"),
    "constant spelled differently": ("1-e^{-1}", "1-\\frac{1}{e}"),
    "decimal of an exact fraction": ("0.1", "\\frac{1}{10}"),
}


def test_recall_cases_score_one():
    got = scores([r1(pred) for pred, _ in RECALL.values()], [gold for _, gold in RECALL.values()])
    assert got == [1.0] * len(RECALL), dict(zip(RECALL, got))


# --- verdicts with reasons -----------------------------------------------------------------------------

REASONS = {
    "right": (r1("12"), "12", Reason.RIGHT, "exact"),
    "wrong": (r1("13"), "12", Reason.WRONG, "exact"),
    "wrong by CAS": (r1("\\sqrt{3}"), "\\sqrt{2}", Reason.WRONG, "cas"),
    "no answer": ("<think>12</think>", "12", Reason.NO_ANSWER, "extract"),
    "two blocks": (r1("12") + "<answer>12</answer>", "12", Reason.MULTIPLE_ANSWERS, "extract"),
    "two candidates": (r1("12 or 13"), "12", Reason.MULTIPLE_ANSWERS, "extract"),
    "in think": ("<think><answer>12</answer>", "12", Reason.ANSWER_IN_THINK, "extract"),
    "unclosed box": (r1("\\boxed{12"), "12", Reason.UNCLOSED, "extract"),
    "tag inside": (r1("12<think"), "12", Reason.MALFORMED, "extract"),
    "too long": (r1("1" * 70000), "12", Reason.TOO_LONG, "extract"),
    "tower": (r1("9^{9^{9}}"), "\\sqrt{2}", Reason.REFUSED_PATHOLOGICAL, "guard"),
    "partial parse": (r1("1 + \\frac{1}{\\mathrm{e}}"), "1-\\frac{1}{e}", Reason.PARTIAL_PARSE, "cas"),
    "bad gold": (r1("12"), "", Reason.BAD_GOLD, "extract"),
}


def test_every_verdict_has_a_reason_answer_and_path():
    verdicts = judge([c for c, *_ in REASONS.values()], [g for _, g, *_ in REASONS.values()])
    # a CAS verdict seen by an earlier test comes from the verdict cache
    got = {name: (v.reason, "cas" if v.path == "cache" else v.path) for name, v in zip(REASONS, verdicts)}
    assert got == {name: (reason, path) for name, (_, _, reason, path) in REASONS.items()}
    assert verdicts[0].answer == "12" and verdicts[0].score == 1.0 and verdicts[0].seconds >= 0
    assert verdicts[2].to_json()["reason"] == "wrong"


def test_timeouts_and_worker_failures_have_reasons(monkeypatch):
    from rewards import accuracy, sandbox

    class Pool:
        def run(self, jobs, deadline_s):
            return [sandbox.Result(False, "timeout"), sandbox.Result(False, "crash")]

    monkeypatch.setattr(accuracy, "get_pool", lambda workers=None: Pool())
    monkeypatch.setattr(accuracy, "_recall", lambda key: None)
    monkeypatch.setattr(accuracy, "_remember", lambda key, reason: None)
    verdicts = judge([r1("\\sqrt{5}"), r1("\\sqrt{6}")], ["\\sqrt{2}", "\\sqrt{2}"])
    assert [v.reason for v in verdicts] == [Reason.TIMEOUT, Reason.WORKER_FAILURE]


def test_reward_reports_reason_counts_and_annotates_samples():
    with rewards.registry.collect() as sink:
        accuracy_reward([r1("12"), r1("13"), "none", r1("12", " \\boxed{13}")], answer=["12"] * 4)
    assert sink.counters["reason/right"] == 1 and sink.counters["reason/wrong"] == 1
    assert sink.counters["reason/no_answer"] == 1 and sink.counters["reason/other_answer_after"] == 1
    assert sum(v for k, v in sink.counters.items() if k.startswith("reason/")) == 4
    assert [n["reason"] for n in sink.notes] == ["right", "wrong", "no_answer", "other_answer_after"]


def test_score_puts_verdicts_into_notes():
    notes = [{}, {}]
    _, _, metrics = score(build_rewards({"accuracy": 1.0, "format": 0.1}), [r1("12"), r1("13")],
                          [{"prompt": "p", "answer": "12"}] * 2, ["p", "p"], notes=notes)
    assert [n["accuracy"]["reason"] for n in notes] == ["right", "wrong"] and "format" not in notes[0]
    assert metrics["rewards/accuracy/reason/right"] == 1.0


def test_judge_locally_is_typed():
    local = judge_locally(parse_gold("2\\sqrt{2}"), "\\sqrt{8}")
    assert local.reason is None and local.checks == ("\\sqrt{8}",) and local.path == "cas"
    assert judge_locally(parse_gold("\\sqrt{2}"), " \\sqrt{ 2}").reason is Reason.RIGHT  # the gold's own text
    assert judge_locally(parse_gold("18"), "$18.00").reason is Reason.RIGHT


def test_find_answer_reasons_and_tail():
    found = find_answer(r1("8", " tail"))
    assert (found.answer, found.reason, found.tail) == ("8", None, " tail")
    assert find_answer("<answer>1</answer><answer>2</answer>").reason == "multiple_answers"
    assert find_answer("<think>x</think><answer>1").reason == "unclosed"


# --- golds: structured problems ------------------------------------------------------------------------

def test_check_golds_returns_problems_as_values():
    golds, problems = check_golds(["12", "", "\\boxed{1}\\boxed{2}", None, "\\frac{"])
    assert golds[0].number == 12 and golds[1:] == [None] * 4
    assert [(p.index, p.reason) for p in problems] == [(1, "empty"), (2, "several_boxes"), (3, "not_a_string"),
                                                       (4, "unparsable")]
    assert problems[0] == GoldProblem(1, "empty", "") and "is empty" in problems[0].describe()


def test_validate_golds_drops_rows_by_index_without_reading_messages():
    from grpo.errors import DataError
    from grpo.tasks.golds import validate_golds

    rows = [{"answer": "1"}, {"answer": ""}, {"answer": "2"}, {"answer": "\\frac{"}]
    kept, dropped = validate_golds(rows, [10, 11, 12, 13], "t.jsonl", "skip")
    assert [r["answer"] for r in kept] == ["1", "2"]
    assert [d.split(":")[0] for d in dropped] == ["row 11", "row 13"]
    with pytest.raises(DataError, match="bad row 11: gold answer '' is empty"):
        validate_golds(rows, [10, 11, 12, 13], "t.jsonl", "error")


# --- the spec, kwargs and plug-in names ----------------------------------------------------------------

def test_parse_spec_is_the_one_parser():
    entry = parse_spec("x", {"weight": 2, "kwargs": {"a": 1}, "on_error": "zero", "deadline_s": 2})
    assert (entry.weight, entry.kwargs, entry.on_error, entry.deadline_s) == (2.0, {"a": 1}, "zero", 2.0)
    assert parse_spec("x", 0.5).weight == 0.5
    for bad, message in [({"deadline_s": 0}, "deadline_s must be"), ({"weight": "a"}, "weight must be a number"),
                         ({"on_error": "skip"}, "on_error must be"), ({"timeout": 1}, "unknown keys")]:
        with pytest.raises(ValueError, match=message):
            parse_spec("x", bad)


def test_kwargs_must_name_explicit_parameters_with_a_suggestion():
    with pytest.raises(ValueError, match=r"reward 'accuracy' has no parameter 'answer_fromat' \(did you mean "
                                         r"'answer_format'\?\)"):
        build_rewards({"accuracy": {"kwargs": {"answer_fromat": "boxed"}}})


def test_typo_in_reward_kwargs_exits_2_with_one_line_before_the_model_loads(tmp_path):
    cmd = [sys.executable, "train.py", "--rewards", "{accuracy: {weight: 1.0, kwargs: {answer_fromat: boxed}}}",
           "--output_dir", str(tmp_path / "out")]  # the bundled tiny base: preflight reads only its config.json
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "did you mean 'answer_format'" in lines[0], proc.stderr


PLUGIN = '''
import time

import rewards


@rewards.register("always_one")
def always_one(completions, **columns):
    return [1.0] * len(completions)


def stuck(completions, **columns):
    time.sleep(3600)


def counting(completions, **columns):
    rewards.report("calls", 1)
    return [0.5] * len(completions)


def broken(completions, **columns):
    raise RuntimeError("broken in the worker")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "v2_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "v2_plugin"


def test_registered_plugin_name_resolves_through_its_module(plugin):
    fn = rewards.get(f"{plugin}:always_one")
    assert fn(["a", "b"]) == [1.0, 1.0]
    assert rewards.get("always_one") is fn  # after the import, the bare name works too


# --- deadline_s ------------------------------------------------------------------------------------------

def test_deadline_bounds_a_hanging_reward(plugin):
    specs = build_rewards({f"{plugin}:stuck": {"weight": 0.1, "deadline_s": 2}, "accuracy": 1.0})
    rows = [{"prompt": "p", "answer": "12"}] * 4
    score(specs, [r1("12")] * 4, rows, ["p"] * 4)  # the first call starts the workers (not timed)
    t0 = time.perf_counter()
    total, per_reward, metrics = score(specs, [r1("12")] * 4, rows, ["p"] * 4)
    elapsed = time.perf_counter() - t0
    assert elapsed < 8, elapsed  # about the deadline, not an hour (start-up of replacement workers aside)
    assert metrics[f"rewards/{plugin}:stuck/timeouts"] == 4
    assert per_reward[f"{plugin}:stuck"].tolist() == [0.0] * 4 and total.tolist() == [1.0] * 4


def test_deadline_reward_returns_values_and_counters(plugin):
    specs = build_rewards({f"{plugin}:counting": {"deadline_s": 30}, "accuracy": {"deadline_s": 30}})
    rows = [{"prompt": "p", "answer": "12"}] * 3
    _, per_reward, metrics = score(specs, [r1("12"), r1("13"), "x"], rows, ["p"] * 3)
    assert per_reward[f"{plugin}:counting"].tolist() == [0.5] * 3
    assert per_reward["accuracy"].tolist() == [1.0, 0.0, 0.0]
    assert metrics[f"rewards/{plugin}:counting/calls"] >= 1 and metrics[f"rewards/{plugin}:counting/timeouts"] == 0
    assert metrics["rewards/accuracy/reason/wrong"] == 1


def test_deadline_reward_errors_follow_on_error(plugin):
    rows = [{"prompt": "p"}] * 3
    with pytest.raises(RewardError, match="broken in the worker"):
        score(build_rewards({f"{plugin}:broken": {"deadline_s": 30}}), ["a", "b", "c"], rows, ["p"] * 3)
    _, _, metrics = score(build_rewards({f"{plugin}:broken": {"deadline_s": 30, "on_error": "zero"}}),
                          ["a", "b", "c"], rows, ["p"] * 3)
    assert metrics[f"rewards/{plugin}:broken/errors"] == 3  # every sample the failure zeroed


def test_batch_failure_under_zero_is_counted():
    import types

    mod = types.ModuleType("v2_batchy")

    def batchy(completions, **columns):
        if len(completions) > 1:
            raise RuntimeError("only fails on batches")
        return [1.0]

    mod.batchy = batchy
    sys.modules["v2_batchy"] = mod
    try:
        _, _, metrics = score(build_rewards({"v2_batchy:batchy": {"on_error": "zero"}}), ["a", "b"],
                              [{"prompt": "p"}] * 2, ["p", "p"])
    finally:
        del sys.modules["v2_batchy"]
    assert metrics["rewards/v2_batchy:batchy/batch_errors"] == 1


# --- python -m rewards.explain -------------------------------------------------------------------------

def test_explain_prints_score_reason_and_answer(capsys):
    assert explain.main(["--gold", "12", "--completion", "<think>w</think><answer>12</answer> \\boxed{13}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("score 0.0  reason other_answer_after  answer '12'  path extract")


def test_explain_reads_a_completions_file(tmp_path, capsys):
    import json

    path = tmp_path / "completions.jsonl"
    recs = [{"step": 1, "group": 0, "answer": "12", "completion": r1("12")},
            {"step": 2, "group": 0, "answer": "12", "completion": r1("13")},
            {"step": 2, "group": 1, "answer": "12", "completion": r1("12 or 13")}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"torn')
    assert explain.main(["--file", str(path), "--step", "2"]) == 0
    out = capsys.readouterr().out
    assert "[step 2 group 0] score 0.0  reason wrong" in out and "reason multiple_answers" in out
    assert "2 completions: " in out and "step 1" not in out
    assert explain.main(["--file", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
