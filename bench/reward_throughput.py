"""Reward benchmark: verification throughput vs a plain math-verify loop, worst-case latency, verdict quality.

    python bench/reward_throughput.py                     # needs ../shared/data (GSM8K test, MATH-500, cases)
    python bench/reward_throughput.py --data DIR --n 400  # another data folder, a smaller sample

Prints markdown tables (paste them into BENCHMARKS.md):

1. Verdict rates: a correct gold written in R1 format must score 1 on every GSM8K / MATH-500 row, an
   off-by-one (GSM8K) or a different answer (MATH) must score 0.
2. Throughput (verifications/s) of ``rewards.get("accuracy")`` on R1-format completions vs the plain loop
   ``verify(parse(gold), parse(completion))`` that TRL/open-r1-style rewards run, both in this process, on
   GSM8K-style, MATH-style and mixed batches: one sample per problem, and GRPO-shaped (64 problems x 8
   samples, final answers repeating within a group as in training). Both sides run warm (as in training),
   and before every timed call every cache is cleared on both sides (our verdicts, the workers' parsed golds,
   sympy's caches), so nothing parsed earlier is reused; within one call, each gold is parsed once and each
   repeated (gold, answer) pair verified once, which is part of the design being measured.
3. Worst-case latency of a 64-completion batch holding 8 pathological completions.
4. Agreement with math-verify's own expected verdicts (``mathverify_cases.jsonl``), by tag, and where we
   deliberately differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rewards
from rewards import accuracy as acc_module
from rewards import sandbox
from rewards.accuracy import Verdict, judge
from rewards.golds import check_golds


def r1(think: str, answer: str) -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


def load_gsm8k(path: Path, n: int, rng: random.Random) -> list[dict]:
    rows = [json.loads(line) for line in path.open()]
    out = []
    for r in rows:
        solution, gold = r["answer"].rsplit("####", 1)
        gold = gold.strip().replace(",", "")
        think = re.sub(r"<<[^>]*>>", "", solution).strip()
        out.append({"gold": gold, "right": r1(think, gold), "wrong": r1(think, str(int(gold) + 1))})
    rng.shuffle(out)
    return out[:n] if n else out


def load_math(path: Path, n: int, rng: random.Random) -> list[dict]:
    rows = [json.loads(line) for line in path.open()]
    golds = [r["answer"] for r in rows]
    out = []
    for i, r in enumerate(rows):
        other = golds[(i + 1) % len(golds)]
        think = r["solution"].replace("\\boxed", "")  # the reasoning, without its own box
        out.append({"gold": r["answer"], "right": r1(think, f"\\boxed{{{r['answer']}}}"),
                    "wrong": r1(think, f"\\boxed{{{other}}}") if other.strip() != r["answer"].strip() else None})
    rng.shuffle(out)
    return out[:n] if n else out


def plain_loop(completions: list[str], golds: list[str]) -> list[float]:
    """The peer baseline: math-verify called directly, main thread, its own signal timeouts on."""
    from math_verify import parse, verify

    return [1.0 if verify(parse("$" + g + "$"), parse(c)) else 0.0 for c, g in zip(completions, golds)]


def forget_everything() -> None:
    """Clear every cache that could make a repeat cheaper, on both sides: our verdict cache, the workers'
    parsed golds and sympy caches (one ``clear`` per worker), and sympy's cache in this process."""
    from sympy.core.cache import clear_cache

    pool = sandbox.get_pool()
    results = pool.run([{"op": "clear"}] * pool.num_workers, 60.0)
    assert all(r.ok for r in results)
    acc_module._VERDICTS.clear()
    clear_cache()


def ours(completions: list[str], golds: list[str]) -> list[float]:
    acc_module._VERDICTS.clear()  # no free repeats across calls
    return rewards.get("accuracy")(completions=completions, answer=golds)


def grpo_batch(rows: list[dict], prompts: int, group: int = 8) -> tuple[list[str], list[str]]:
    """``prompts`` problems x ``group`` samples, as a training step scores them: every sample has its own
    reasoning text, and final answers repeat within a group (here half right, half one wrong answer)."""
    completions, golds = [], []
    for r in rows[:prompts]:
        for k in range(group):
            answer_part = (r["right"] if k % 2 == 0 or not r["wrong"] else r["wrong"]).split("<answer>", 1)[1]
            completions.append(f"<think>Attempt {k}. " + r["right"].split("<think>", 1)[1].split("</think>")[0]
                               + "</think>\n<answer>" + answer_part)
            golds.append(r["gold"])
    return completions, golds


def timed(fn, completions, golds, reps: int) -> tuple[float, list[float]]:
    best, out = float("inf"), []
    for _ in range(reps):
        forget_everything()
        t = time.perf_counter()
        out = fn(completions, golds)
        best = min(best, time.perf_counter() - t)
    return len(completions) / best, out


def section_rates(gsm: list[dict], math_rows: list[dict]) -> None:
    print("\n### Verdicts on real data (R1-format completions built from the gold)\n")
    print("| set | rows | correct gold scores 1 | wrong answer scores 0 | plain math-verify loop: correct scores 1 |")
    print("|---|---|---|---|---|")
    for name, rows in (("GSM8K test", gsm), ("MATH-500", math_rows)):
        golds = [r["gold"] for r in rows]
        right = ours([r["right"] for r in rows], golds)
        wrong_rows = [r for r in rows if r["wrong"]]
        wrong = ours([r["wrong"] for r in wrong_rows], [r["gold"] for r in wrong_rows])
        base = plain_loop([r["right"] for r in rows], golds)
        print(f"| {name} | {len(rows)} | {sum(right) / len(rows):.2%} | {1 - sum(wrong) / len(wrong_rows):.2%} | "
              f"{sum(base) / len(rows):.2%} |")
        misses = [r["gold"] for r, v in zip(rows, right) if v != 1.0]
        if misses:
            print(f"\n{name}: correct golds scored 0: {misses[:10]}\n")
        accepted = [(r["gold"], r["wrong"][-60:]) for r, v in zip(wrong_rows, wrong) if v != 0.0]
        if accepted:
            print(f"\n{name}: other answers scored 1 (gold, end of completion): {accepted[:10]}\n")


def section_throughput(gsm: list[dict], math_rows: list[dict], reps: int) -> None:
    print(f"\n### Throughput (verifications/s, best of {reps}; {os.cpu_count()} cores, "
          f"{sandbox.get_pool().num_workers} math-verify workers)\n")
    print("| batch | size | grpo-zero accuracy | plain math-verify loop | ratio |")
    print("|---|---|---|---|---|")
    mixed = [r for pair in zip(gsm, math_rows) for r in pair]
    batches = []
    for name, rows in (("GSM8K-style", gsm), ("MATH-style", math_rows), ("mixed 50/50", mixed)):
        completions = [r["right"] if i % 2 == 0 or not r["wrong"] else r["wrong"] for i, r in enumerate(rows)]
        batches.append((f"{name}, one sample per problem", completions, [r["gold"] for r in rows]))
    for name, rows in (("GSM8K-style", gsm), ("MATH-style", math_rows), ("mixed 50/50", mixed)):
        batches.append((f"{name}, GRPO step: 64 problems x 8 samples", *grpo_batch(rows, 64)))
    for name, completions, golds in batches:
        ours(completions[:64], golds[:64])  # warm both sides' code paths (not data: caches are cleared)
        plain_loop(completions[:64], golds[:64])
        ours_rate, _ = timed(ours, completions, golds, reps)
        base_rate, _ = timed(plain_loop, completions, golds, reps)
        print(f"| {name} | {len(completions)} | {ours_rate:,.0f} | {base_rate:,.0f} | {ours_rate / base_rate:.1f}x |")


def section_cpu(gsm: list[dict], reps: int) -> None:
    """CPU time (not wall time) of the in-process path on a GSM8K GRPO batch: robust to other load on the machine,
    so before/after comparisons of the extraction and exact-number code can be made on a busy host."""
    completions, golds = grpo_batch(gsm, 64)
    fn = rewards.get("accuracy")
    fn(completions, answer=golds)
    best = math.inf
    for _ in range(reps):
        acc_module._VERDICTS.clear()
        t = time.process_time()
        fn(completions, answer=golds)
        best = min(best, time.process_time() - t)
    print(f"\nGSM8K-style GRPO step ({len(completions)} completions), in-process CPU time: "
          f"{len(completions) / best:,.0f} verifications per CPU-second (best of {reps})")


PATHOLOGICAL = [
    r1("", "\\boxed{9^{9^{9^{9}}}}"), r1("", "9^9^9^9"), r1("", "2^{999999999}"), r1("", "\\boxed{99999999!}"),
    r1("9" * (1 << 20), "1"), r1("", "(" * 5000 + "1" + ")" * 5000),
    r1("", "\\binom{10^{9}}{5 \\cdot 10^{8}}"), r1("", "\\binom{10^{10}}{3 \\cdot 10^{9}}"),
]


def section_latency(gsm: list[dict], math_rows: list[dict]) -> None:
    print("\n### Worst-case latency: 64 completions, 8 of them pathological (default deadline 3 s)\n")
    print("| batch | seconds | pathological scored 0 | timeouts | refused unparsed |")
    print("|---|---|---|---|---|")
    rows = (gsm[:28] + math_rows[:28])
    completions = [r["right"] for r in rows] + PATHOLOGICAL
    golds = [r["gold"] for r in rows] + ["1"] * len(PATHOLOGICAL)
    for label, call in (("main thread", lambda: ours(completions, golds)),):
        with rewards.collect_metrics() as m:
            t = time.perf_counter()
            out = call()
            dt = time.perf_counter() - t
        print(f"| {label} | {dt:.2f} | {out[-8:] == [0.0] * 8} | {m['timeouts']:.0f} | {m['rejected']:.0f} |")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex, rewards.collect_metrics():
        t = time.perf_counter()
        out_t = ex.submit(ours, completions, golds).result()
        dt = time.perf_counter() - t
    print(f"| worker thread | {dt:.2f} | {out_t[-8:] == [0.0] * 8} | (same verdicts as main: {out_t == out}) | |")
    t = time.perf_counter()
    base = plain_loop(PATHOLOGICAL[:1], ["1"])
    print(f"\nPlain math-verify loop on the first pathological completion alone: {time.perf_counter() - t:.2f} s "
          f"(verdict {base[0]}); in a thread it raises instead (signal timeout), see tests.")


DELIBERATE_BY_REASON = {
    "other_answer_after": "a different answer (box, number) after the final answer scores 0 (after_answer: strict)",
    "multiple_answers": "several different answers (boxes, candidates) score 0",
    "unparsable": "a prediction math-verify parses only in part scores 0 (e.g. a sign lost in \\mathrm{e})",
    "hedged": "a hedge word or symbol in the answer scores 0 ('not 10 which is ...', '\\approx 11')",
    "retracted": "words after the answer that take it back score 0",
    "no_answer": "no single final answer (no box, or a full solution without one) scores 0",
    "unclosed": "an unbalanced box is no answer",
    "malformed": "tags inside the answer block are no answer",
}


def disagreement(case: dict, pred: str, verdict: Verdict | None) -> str:
    """``deliberate: <rule>`` when one of our documented rules makes the verdict differ from math-verify's
    expected one, else ``gap: <what>``. Uses our verdict's reason code, not a guess from the text."""
    tags = set(case.get("tags", []))
    if verdict is None:
        return "deliberate: a gold with several different boxes is rejected at load (GoldProblem several_boxes)"
    if verdict.score == 1.0:
        return "gap: we accept, math-verify's test rejects"
    reason = verdict.reason.value
    if reason in DELIBERATE_BY_REASON:
        return "deliberate: " + DELIBERATE_BY_REASON[reason]
    text = pred + " " + case["gold"]
    if "decimal_comma" in tags or re.search(r"(?<![\d,])\d+,(?:\d{1,2}|\d{4,})(?![\d,])|\b0,\d", text):
        return "deliberate: a decimal comma ('1,22') reads as two candidates, not 1.22"
    numbers_only = not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", text))  # no variables, only commands
    if reason == "wrong" and (tags & {"symbolic_numeric_equivalence", "float_precision"} or numbers_only):
        return "deliberate: numbers compare exactly, no rounding (0.3333 is not 1/3, 4.1231 is not sqrt(17))"
    if "full_solution_text" in tags or len(pred) > 200:
        return "deliberate: a full solution's last box is its answer; prose around it is not parsed"
    path = "cas" if verdict.path == "cache" else verdict.path  # a cached CAS verdict
    if reason == "partial_parse":
        if path == "cas":
            return "deliberate: " + DELIBERATE_BY_REASON["unparsable"]
        if re.search(r"(?<![\\A-Za-z])[A-Za-z]{3,}", re.sub(r"\\begin\{\w+\}|\\end\{\w+\}", "", pred)):
            return "deliberate: prose around the value (not a lead-in, a unit or one noun) scores 0 (partial_parse)"
    return f"gap: our {reason} ({path}) where math-verify expects a match"


def section_cases(path: Path) -> None:
    cases = [json.loads(line) for line in path.open()]
    cases = [c for c in cases if c["expected"] is not None]
    by_tag: dict[str, list[bool]] = defaultdict(list)
    differ: Counter = Counter()
    examples: dict[str, list] = defaultdict(list)
    agree_all, agree_kept = [], []
    for c in cases:
        pred = c["pred"]
        completion = pred if "\\boxed" in pred else f"<answer>{pred}</answer>"
        mode = "boxed" if "\\boxed" in pred else "r1"
        verdict = None if gold_rejected(c["gold"]) else judge([completion], [c["gold"]], answer_format=mode)[0]
        got = None if verdict is None else verdict.score == 1.0
        agree = got == c["expected"]
        agree_all.append(agree)
        kind = "full solution text" if "full_solution_text" in c.get("tags", []) or len(pred) > 200 else "answer only"
        by_tag[kind].append(agree)
        for tag in c.get("tags", []):
            by_tag["tag: " + tag].append(agree)
        reason = "" if agree else disagreement(c, pred, verdict)
        if not reason.startswith("deliberate"):
            agree_kept.append(agree)
        if not agree:
            differ[reason] += 1
            if len(examples[reason]) < 4:
                examples[reason].append((c["gold"][:50], pred[-70:], c["expected"]))
    print(f"\n### Agreement with math-verify's expected verdicts ({len(cases)} cases with a verdict)\n")
    print(f"Overall: {sum(agree_all)}/{len(agree_all)} ({sum(agree_all) / len(agree_all):.1%}); on the cases that are "
          f"not deliberate departures: {sum(agree_kept)}/{len(agree_kept)} ({sum(agree_kept) / len(agree_kept):.1%})\n")
    print("| subset | cases | agree |")
    print("|---|---|---|")
    for key in sorted(by_tag, key=lambda k: (k.startswith("tag"), k)):
        v = by_tag[key]
        if len(v) >= 5:
            print(f"| {key} | {len(v)} | {sum(v) / len(v):.0%} |")
    print("\nDisagreements, classified (deliberate: the rule; gap: to fix):")
    for reason, n in sorted(differ.items(), key=lambda x: (x[0].startswith("gap"), -x[1])):
        print(f"- {reason}: {n}")
        for gold, pred, exp in examples[reason]:
            print(f"    gold {gold!r} pred ...{pred!r} expected {exp}")


def gold_rejected(gold: str) -> bool:
    """The gold itself is unusable (e.g. several different boxes): rejected at dataset load."""
    return bool(check_golds([gold])[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--n", type=int, default=0, help="rows per set (0 = all)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sections", default="rates,throughput,cpu,latency,cases",
                    help="comma-separated subset of rates, throughput, cpu, latency, cases")
    args = ap.parse_args()
    data, rng = Path(args.data), random.Random(0)
    needed = ["gsm8k_test.jsonl", "math500.jsonl", "mathverify_cases.jsonl"]
    missing = [name for name in needed if not (data / name).is_file()]
    if missing:
        print(f"reward_throughput: {data} lacks {', '.join(missing)}; this benchmark needs the GSM8K test set, MATH-500 "
              "and math-verify's test cases there (pass --data DIR)", file=sys.stderr)
        sys.exit(2)
    gsm = load_gsm8k(data / "gsm8k_test.jsonl", args.n, rng)
    math_rows = load_math(data / "math500.jsonl", args.n, rng)
    sandbox.get_pool().run([{"op": "verify", "gold": "1", "preds": ["1"]}], 30.0)  # start the workers untimed
    from importlib.metadata import version

    print(f"math-verify {version('math-verify')}, python {sys.version.split()[0]}, {os.cpu_count()} cores")
    sections = set(args.sections.split(","))
    if "rates" in sections:
        section_rates(gsm, math_rows)
    if "cpu" in sections:
        section_cpu(gsm, max(args.reps, 5))
    if "throughput" in sections:
        section_throughput(gsm, math_rows, args.reps)
    if "latency" in sections:
        section_latency(gsm, math_rows)
    if "cases" in sections:
        section_cases(data / "mathverify_cases.jsonl")


if __name__ == "__main__":
    main()
