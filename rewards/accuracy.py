"""``accuracy``: is the single final answer right? Hack-resistant, exact for numbers, bounded in time, explained.

Extraction (``answer_format``, see :mod:`rewards.extract`): ``r1`` (default; the single ``<answer>`` block, its
box if any), ``boxed`` or ``auto``; or ``last_number`` (:mod:`rewards.last_number`: the last number of the
completion, for instruct models that answer in prose; it cannot tell a hedge from an answer). Several answer
blocks, tags nested inside the block, an unclosed block, or a block inside an open ``<think>`` score 0. Several
different boxed values (``\\boxed{1}\\boxed{2}``) or several candidate answers (``3 or 4``, ``3, 4`` when the gold
is one value) score 0. An equation counts only for its last side and only if every numeric side agrees (``x = 42``
is 42; ``41 = 42`` scores 0).

Text after the answer (``after_answer``): with ``strict`` (default), a box, a math span or a number after the
final ``</answer>`` (r1) or after the last box (boxed) that differs from the extracted answer scores 0
(``<answer>12</answer> \\boxed{13}``, ``... Actually, the answer is 13.``); ``ignore`` leaves trailing text to
the format reward.

Comparison: plain numbers and arithmetic of plain numbers take an exact in-process path (thousands
separators, ``$``, ``%`` (cosmetic when the gold is a plain number: ``25\\%`` is 25, ``0.25`` is not),
unicode minus, trailing ``.0``, ``1e5``, fractions vs decimals, ``\\frac{a}{b}``); everything else goes to
math-verify (``verify(gold, pred)``, gold first) in the worker pool of ``rewards/sandbox.py`` with a hard
per-call deadline. There, a prediction that parses only in part is a 0, and when both sides are numbers
(powers, factorials, radicals, constants) a math-verify "equal" must also hold exactly (rational arithmetic,
or a difference below 1e-40 relative at 60 digits), so ``\\frac{1}{2^{98}}`` is not ``\\frac{1}{2^{99}}``;
radical forms that math-verify misses (``\\sqrt{\\frac{1}{n}}`` vs ``\\frac{1}{\\sqrt{n}}``) are compared
with positive symbols. Completions longer than ``max_completion_chars`` and answers longer than
``max_answer_chars`` score 0, and answers built to stall a CAS (towers, huge exponents or factorials, deep
nesting) score 0 without being parsed.

Every verdict carries a reason (:class:`Reason`); :func:`judge` returns them as :class:`Verdict` objects and the
reward logs ``rewards/accuracy/reason/<code>`` counts per step and writes each sample's verdict to
``completions.jsonl``. Other metrics (``rewards/accuracy/<key>``): ``timeouts``, ``math_verify_calls``,
``rejected`` (pathological answers refused unparsed), ``bad_gold``, ``worker_failures``.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

# boxed_contents, extract_answer, check_golds, parse_gold(s): imported from here before extract/golds existed
from rewards.extract import ANSWER_FORMATS, boxed_contents, clean, extract_answer, find_answer, stated_answers  # noqa: F401
from rewards.golds import Gold, GoldProblem, check_golds, gold_structure, parse_gold, parse_golds  # noqa: F401
from rewards.last_number import LAST_NUMBER, find_last_number
from rewards.numbers import count_candidates, is_pathological, plain_value, split_relation
from rewards.registry import annotate, register, report
from rewards.sandbox import get_pool

AFTER_ANSWER = ("strict", "ignore")
# the accuracy reward's formats: extract's (r1, boxed, auto) and lm-eval's flexible-extract (rewards/last_number.py)
ACCURACY_FORMATS = (*ANSWER_FORMATS, LAST_NUMBER)


class Reason(str, enum.Enum):
    """Why a sample scored what it did (the value is the code logged as ``rewards/accuracy/reason/<code>``)."""

    RIGHT = "right"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"
    MULTIPLE_ANSWERS = "multiple_answers"
    ANSWER_IN_THINK = "answer_in_think"
    UNCLOSED = "unclosed"
    MALFORMED = "malformed"
    OTHER_ANSWER_AFTER = "other_answer_after"
    TOO_LONG = "too_long"
    REFUSED_PATHOLOGICAL = "refused_pathological"
    TIMEOUT = "timeout"
    UNPARSABLE = "unparsable"
    BAD_GOLD = "bad_gold"
    WORKER_FAILURE = "worker_failure"


_WORKER_STATUS = {"timeout": Reason.TIMEOUT, "bad_gold": Reason.BAD_GOLD, "unparsable": Reason.UNPARSABLE,
                  "error": Reason.WORKER_FAILURE, "crash": Reason.WORKER_FAILURE, "unavailable": Reason.WORKER_FAILURE}


@dataclass(frozen=True)
class Verdict:
    """One sample's verdict.

    Attributes:
        score: 1.0 right, else 0.0.
        reason: why (:class:`Reason`).
        answer: the extracted final answer (``None`` when there is none).
        path: what decided it: ``extract`` (no usable answer), ``guard`` (refused unparsed), ``exact``
            (in-process exact arithmetic), ``cas`` (math-verify in the worker pool) or ``cache`` (a CAS verdict
            remembered from an earlier call).
        seconds: time spent on this sample (for ``cas``: the wall time of the batch's worker-pool call).
    """

    score: float
    reason: Reason
    answer: str | None
    path: str
    seconds: float = 0.0

    def to_json(self) -> dict:
        """A JSON-able dict (``reason`` as its code, ``seconds`` rounded to microseconds)."""
        # by hand, not dataclasses.asdict: that deep-copies and took a third of a GSM8K batch's scoring time
        return {"score": self.score, "reason": self.reason.value, "answer": self.answer, "path": self.path,
                "seconds": round(self.seconds, 6)}


@dataclass(frozen=True)
class LocalVerdict:
    """What :func:`judge_locally` decides: a ``reason`` when decided in-process, else the ``checks`` that
    math-verify must all accept (``reason`` is then ``None``)."""

    reason: Reason | None
    checks: tuple[str, ...] = ()
    path: str = "exact"


def judge_locally(gold: Gold, answer: str, max_answer_chars: int = 1000) -> LocalVerdict:
    """The verdict when it needs no CAS, else the cleaned strings math-verify must all accept.

    Example:
        >>> from rewards.golds import parse_gold
        >>> judge_locally(parse_gold("18"), "$18.00").reason
        <Reason.RIGHT: 'right'>
    """
    s = clean(answer)
    if not s:
        return LocalVerdict(Reason.NO_ANSWER, path="extract")
    if len(s) > max_answer_chars:
        return LocalVerdict(Reason.TOO_LONG, path="extract")
    if "".join(s.split()) == "".join(gold.text.split()):
        return LocalVerdict(Reason.RIGHT)  # the very same text as the gold
    if count_candidates(s) > gold.items:
        return LocalVerdict(Reason.MULTIPLE_ANSWERS, path="extract")
    checks = [s] if gold.relation else split_relation(s)
    if not checks:
        return LocalVerdict(Reason.UNPARSABLE, path="extract")
    if gold.number is not None:
        pending = []
        for c in checks:
            v = plain_value(c)
            if v is None:
                pending.append(c)
                continue
            value, percent = v
            # a "%" on an answer to a plain-number gold is cosmetic (25\% = 25); 0.25 for a "25%" gold is fine
            ok = value == gold.number or (gold.percent and not percent and value * 100 == gold.number)
            if not ok:
                return LocalVerdict(Reason.WRONG)
        if not pending:
            return LocalVerdict(Reason.RIGHT)
        checks = pending
    if not gold.pathological and any(is_pathological(c) for c in checks):
        return LocalVerdict(Reason.REFUSED_PATHOLOGICAL, path="guard")
    return LocalVerdict(None, tuple(checks), path="cas")


def _same_answer(stated: str, answer: str) -> bool:
    """Does text after the answer state the same answer (same cleaned text, or the same plain number)?"""
    a, b = clean(stated), clean(answer)
    sides = split_relation(b) or [b]
    stated_sides = split_relation(a) or [a]
    flat = lambda x: "".join(x.split())
    if flat(stated_sides[-1]) in (flat(b), flat(sides[-1])):
        return True
    va, vb = plain_value(stated_sides[-1]), plain_value(sides[-1])
    return va is not None and vb is not None and va[0] == vb[0]


def other_answer_after(tail: str, answer: str) -> bool:
    """True when the text after the answer states a different answer (a box, a math span or a number).

    Example:
        >>> other_answer_after(" Actually, the final answer is 13.", "12"), other_answer_after(" So 12.", "12")
        (True, False)
    """
    return any(not _same_answer(s, answer) for s in stated_answers(tail)) if tail.strip() else False


_VERDICTS: OrderedDict[tuple, Reason] = OrderedDict()  # (gold text, checks) -> reason; LRU, shared by threads
_VERDICTS_LOCK = threading.Lock()
_VERDICTS_MAX = 1 << 16


def _remember(key: tuple, reason: Reason) -> None:
    with _VERDICTS_LOCK:
        _VERDICTS[key] = reason
        if len(_VERDICTS) > _VERDICTS_MAX:
            _VERDICTS.popitem(last=False)


def _recall(key: tuple) -> Reason | None:
    with _VERDICTS_LOCK:
        reason = _VERDICTS.get(key)
        if reason is not None:
            _VERDICTS.move_to_end(key)
        return reason


def _verdict(reason: Reason, answer: str | None, path: str, seconds: float) -> Verdict:
    return Verdict(1.0 if reason is Reason.RIGHT else 0.0, reason, answer, path, seconds)


def judge(completions: list[str], answer: list[str], answer_format: str = "r1", after_answer: str = "strict",
          max_completion_chars: int = 65536, max_answer_chars: int = 1000, deadline_s: float = 3.0,
          workers: int | None = None) -> list[Verdict]:
    """One :class:`Verdict` per completion (the ``accuracy`` reward's decisions, with reasons). Never raises on
    completion text; a gold that cannot be used gives ``bad_gold`` verdicts.

    Example:
        >>> [v.reason.value for v in judge(["<answer>12</answer> \\\\boxed{13}", "<answer>12</answer>"], ["12", "12"])]
        ['other_answer_after', 'right']
    """
    if answer_format not in ACCURACY_FORMATS:
        raise ValueError(f"accuracy: answer_format must be one of {', '.join(ACCURACY_FORMATS)}; got {answer_format!r}")
    if after_answer not in AFTER_ANSWER:
        raise ValueError(f"accuracy: after_answer must be one of {', '.join(AFTER_ANSWER)}; got {after_answer!r}")
    if not deadline_s > 0:
        raise ValueError(f"accuracy: deadline_s must be > 0 seconds, got {deadline_s!r}")
    out: list[Verdict | None] = [None] * len(completions)
    jobs: dict[tuple, list[int]] = {}
    preds: list[str | None] = [None] * len(completions)
    for i, (completion, gold_text) in enumerate(zip(completions, answer)):
        t0 = time.perf_counter()
        gold = gold_structure(str(gold_text)) if gold_text is not None else "not_a_string"
        found = (find_last_number(completion, max_completion_chars) if answer_format == LAST_NUMBER
                 else find_answer(completion, answer_format, max_completion_chars))
        preds[i] = found.answer
        if not isinstance(gold, Gold):
            out[i] = _verdict(Reason.BAD_GOLD, found.answer, "extract", time.perf_counter() - t0)
            continue
        if found.answer is None:
            out[i] = _verdict(Reason(found.reason), None, "extract", time.perf_counter() - t0)
            continue
        if after_answer == "strict" and other_answer_after(found.tail, found.answer):
            out[i] = _verdict(Reason.OTHER_ANSWER_AFTER, found.answer, "extract", time.perf_counter() - t0)
            continue
        local = judge_locally(gold, found.answer, max_answer_chars)
        if local.reason is not None:
            out[i] = _verdict(local.reason, found.answer, local.path, time.perf_counter() - t0)
            continue
        key = (gold.text, local.checks)
        cached = _recall(key)
        if cached is not None:
            out[i] = _verdict(cached, found.answer, "cache", time.perf_counter() - t0)
        else:
            jobs.setdefault(key, []).append(i)
    keys = list(jobs)
    t0 = time.perf_counter()
    results = get_pool(workers).run([{"op": "verify", "gold": k[0], "preds": list(k[1])} for k in keys], deadline_s)
    seconds = time.perf_counter() - t0
    for key, res in zip(keys, results):
        reason = Reason.RIGHT if res.ok else _WORKER_STATUS.get(res.status, Reason.WRONG)
        for i in jobs[key]:
            out[i] = _verdict(reason, preds[i], "cas", seconds)
        if res.status in ("ok", "bad_gold", "timeout", "unparsable"):  # a timeout repeats: remember the 0
            _remember(key, reason)
    report("math_verify_calls", len(keys))
    return out  # type: ignore[return-value]


def report_verdicts(verdicts: list[Verdict]) -> None:
    """Log counts per reason (``reason/<code>``, every code, 0 included, so curves have every step) and the
    legacy counters, and attach each verdict to its sample for ``completions.jsonl``."""
    counts = {r: 0 for r in Reason}
    for v in verdicts:
        counts[v.reason] += 1
    for r, n in counts.items():
        report(f"reason/{r.value}", n)
    report("timeouts", counts[Reason.TIMEOUT])
    report("rejected", counts[Reason.REFUSED_PATHOLOGICAL])
    report("bad_gold", counts[Reason.BAD_GOLD])
    report("worker_failures", counts[Reason.WORKER_FAILURE])  # math-verify raised, a worker died, or cannot start
    annotate([v.to_json() for v in verdicts])


@register("accuracy")
def accuracy_reward(completions: list[str], answer: list[str], answer_format: str = "r1",
                    after_answer: str = "strict", max_completion_chars: int = 65536, max_answer_chars: int = 1000,
                    deadline_s: float = 3.0, workers: int | None = None, **columns) -> list[float | None]:
    """1.0 when the single final answer equals the gold answer, else 0.0. Never raises on completion text.

    Args:
        completions: N completion texts.
        answer: N gold answers (strings; parsed once each and cached).
        answer_format: ``r1`` (default), ``boxed``, ``auto`` (see the module docstring) or ``last_number`` (the
            last number in the completion, lm-eval's flexible-extract; for instruct models that answer in prose,
            see :mod:`rewards.last_number`).
        after_answer: ``strict`` (default): a different answer stated after the final answer scores 0;
            ``ignore``: text after the answer is not read.
        max_completion_chars: longer completions score 0 unparsed.
        max_answer_chars: longer final answers score 0 unparsed.
        deadline_s: hard wall-clock limit per math-verify call; past it the worker is killed and the
            sample scores 0 (metric ``timeouts``).
        workers: size of the math-verify process pool (default: one per core, 2 to 8).
        **columns: other dataset columns (ignored).

    Raises:
        ValueError: a gold answer cannot be used (empty, several boxes); check rows at load with
            :func:`rewards.golds.check_golds` to catch this before training.

    Example:
        >>> accuracy_reward(["<think>8+9=17</think><answer>17</answer>"], answer=["17"])
        [1.0]
    """
    for gold_text in answer:
        gold = gold_structure(str(gold_text)) if gold_text is not None else "not_a_string"
        if not isinstance(gold, Gold):
            raise ValueError(GoldProblem(0, gold, gold_text).describe())  # noqa: TRY004 - bad data, not a bad type  # score() adds the sample index
    verdicts = judge(completions, answer, answer_format, after_answer, max_completion_chars, max_answer_chars,
                     deadline_s, workers)
    report_verdicts(verdicts)
    return [v.score for v in verdicts]

