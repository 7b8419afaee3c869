"""``accuracy``: is the single final answer right? Hack-resistant, exact for numbers, bounded in time, explained.

Extraction (``answer_format``, see :mod:`rewards.extract`): ``r1`` (default; the single ``<answer>`` block, its
box if any), ``boxed`` or ``auto``, read after :func:`rewards.normalize.normalize_text` (tags in any case or
look-alike spelling are tags); or ``last_number`` (:mod:`rewards.last_number`: the last number of the completion,
for instruct models that answer in prose; it cannot tell a hedge from an answer). Several answer blocks, tags
nested inside the block, an unclosed block, or a block inside an open ``<think>`` score 0. Several different boxed
values (``\\boxed{1}\\boxed{2}``; equal values such as ``\\boxed{\\frac{1}{2}} = \\boxed{0.5}`` are one) or several
candidate answers (``3 or 4``, two lines, ``3, 4`` when the gold is one value) score 0. An equation counts only for
its last side and only if every numeric side agrees (``x = 42`` is 42; ``41 = 42`` scores 0).

The canonical reading (:mod:`rewards.canon`, the same for the answer and the gold) comes before any comparison:
a hedge (``about 8``, ``\\approx 8``, ``8 (not 7)``) scores 0 as ``hedged``; units, currency and a lead-in go;
mixed numbers, repeating decimals and ``\\pm`` are read exactly; text answers compare case-insensitively;
prose left over, or a construct math-verify reads only in part, scores 0 as ``partial_parse``.

Text after the answer (``after_answer``): with ``strict`` (default), a box, a math span, a number, a number word
or an option letter after the final ``</answer>`` (r1) or after the last box (boxed) that differs from the
extracted answer scores 0 (``<answer>12</answer> \\boxed{13}``, ``... No wait, it is thirteen.``, ``... (B)``),
and so do words that take the answer back (``Wait, that is wrong.``: ``retracted``); ``ignore`` leaves trailing
text to the format reward.

Comparison: plain numbers and arithmetic of plain numbers take an exact in-process path (thousands
separators, ``$``, ``%`` (cosmetic when the gold is an integer or decimal: ``25\\%`` is 25, ``0.25`` is not; a
hundredth otherwise), unicode minus, trailing ``.0``, ``1e5``, fractions vs decimals, ``\\frac{a}{b}``); so do
containers of plain numbers (tuples, intervals, sets, matrices). Everything else goes to math-verify
(``verify(gold, pred)``, gold first) in the worker pool of ``rewards/sandbox.py`` with a hard per-call deadline.
There, a prediction that parses only in part is a 0 (``partial_parse``), and when both sides are numbers, or
containers of them (powers, factorials, radicals, constants), a math-verify "equal" must also hold exactly
(rational arithmetic, or a difference below 1e-40 relative at 60 digits), so ``\\frac{1}{2^{98}}`` is not
``\\frac{1}{2^{99}}``; radical forms that math-verify misses (``\\sqrt{\\frac{1}{n}}`` vs
``\\frac{1}{\\sqrt{n}}``) are compared with positive symbols. Completions longer than ``max_completion_chars``
and answers longer than ``max_answer_chars`` score 0, and answers built to stall a CAS (towers, huge exponents or
factorials, deep nesting) score 0 without being parsed.

Every verdict carries a reason (:class:`Reason`); :func:`judge` returns them as :class:`Verdict` objects and the
reward logs ``rewards/accuracy/reason/<code>`` counts per step and writes each sample's verdict to
``completions.jsonl``. Other metrics (``rewards/accuracy/<key>``): ``timeouts``, ``math_verify_calls``,
``rejected`` (pathological answers refused unparsed), ``bad_gold``, ``worker_failures``.
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from rewards.after_answer import other_answer_after, retracted
from rewards.canon import Canon, canonical, containers_compare, hedges_around, same_value
from rewards.exact import count_candidates, is_pathological, plain_value, split_relation
from rewards.extract import ANSWER_FORMATS, Extraction, clean, find_answer
from rewards.golds import Gold, GoldProblem, gold_structure
from rewards.last_number import LAST_NUMBER, find_last_number
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
    HEDGED = "hedged"
    OTHER_ANSWER_AFTER = "other_answer_after"
    RETRACTED = "retracted"
    TOO_LONG = "too_long"
    REFUSED_PATHOLOGICAL = "refused_pathological"
    TIMEOUT = "timeout"
    UNPARSABLE = "unparsable"
    PARTIAL_PARSE = "partial_parse"
    BAD_GOLD = "bad_gold"
    WORKER_FAILURE = "worker_failure"


_WORKER_STATUS = {"timeout": Reason.TIMEOUT, "bad_gold": Reason.BAD_GOLD, "unparsable": Reason.UNPARSABLE,
                  "partial": Reason.PARTIAL_PARSE,
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


_BARE_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_AND = re.compile(r"\\text\{\s*and\s*\}|\band\b")


def _text_verdict(gold: Gold, canon: Canon) -> Reason:
    """A words-only gold (``\\text{north}``, ``(C)``) against an answer, case-insensitively."""
    said = canon.text_answer
    if said is None:
        bare = canon.text.strip("() ").lower()
        said = bare if len(bare) == 1 and bare.isalpha() else None  # "C" for the option "(C)"
    return Reason.RIGHT if said == gold.text_answer else Reason.WRONG


def _shape(gold: Gold, s: str, canon: Canon) -> Reason | None:
    """Too many candidates, an alternative inside brackets, prose or a partial read: the shape decides a 0."""
    if count_candidates(s) > gold.items or canon.spans > 1:  # "$7$ $8$": two math spans are two answers
        return Reason.MULTIPLE_ANSWERS
    if canon.separators - gold.hedges:
        return Reason.HEDGED  # "7 \\text{ (or 8)}": an alternative inside brackets or text
    if canon.partial or set(canon.prose) - set(gold.prose) - {"and", "or", "to"}:
        return Reason.PARTIAL_PARSE
    return None


def _exact(gold: Gold, checks: list[str]) -> tuple[Reason | None, list[str]]:
    """The plain-number checks decided in-process; the rest go on to math-verify."""
    pending = []
    for c in checks:
        v = plain_value(c)
        if v is None:
            pending.append(c)
            continue
        value, percent = v
        if percent and not (gold.decimal or gold.percent):
            value /= 100  # "%" is cosmetic for an integer or decimal gold only: 0.5\% is not \frac{1}{2}
        ok = value == gold.number or (gold.percent and not percent and value * 100 == gold.number)
        if not ok:
            return Reason.WRONG, []
    return (Reason.RIGHT if not pending else None), pending


def judge_locally(gold: Gold, answer: str, max_answer_chars: int = 1000) -> LocalVerdict:
    """The verdict when it needs no CAS, else the canonical strings math-verify must all accept.

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
    if gold.number is not None and _BARE_NUMBER.match(answer.strip()):  # GSM8K's common case: one exact check
        return LocalVerdict(Reason.RIGHT if s == gold.text else _exact(gold, [s])[0] or Reason.WRONG)
    canon = canonical(answer)  # the raw answer: "~8" is a hedge before clean() reads "~" as a space
    if canon.hedges - gold.hedges:
        return LocalVerdict(Reason.HEDGED, path="extract")
    if "".join(s.split()) == "".join(gold.text.split()):
        return LocalVerdict(Reason.RIGHT)  # the very same text as the gold
    s = canon.text
    if gold.text_answer is not None:
        return LocalVerdict(_text_verdict(gold, canon))
    shape = _shape(gold, s, canon)
    if shape is not None:
        return LocalVerdict(shape, path="extract")
    if gold.items > 1:
        s = _AND.sub(",", s)  # "3 and 4" for the gold "3, 4"
        same = containers_compare(gold.text, s)
        if same is not None:
            return LocalVerdict(Reason.RIGHT if same else Reason.WRONG)
    checks = [s] if gold.relation else split_relation(s)
    if not checks:
        return LocalVerdict(Reason.UNPARSABLE, path="extract")
    if gold.number is not None:
        reason, checks = _exact(gold, checks)
        if reason is not None:
            return LocalVerdict(reason)
    elif gold.items == 1 and len(checks) == 1:
        same = containers_compare(gold.text, checks[0])  # a tuple, interval or matrix is one item
        if same is not None:
            return LocalVerdict(Reason.RIGHT if same else Reason.WRONG)
    if not gold.pathological and any(is_pathological(c) for c in checks):
        return LocalVerdict(Reason.REFUSED_PATHOLOGICAL, path="guard")
    return LocalVerdict(None, tuple(checks), path="cas")


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


def _check_options(answer_format: str, after_answer: str, deadline_s: float) -> None:
    """The reward's own kwargs; a bad value is one ValueError line naming it and the accepted values."""
    if answer_format not in ACCURACY_FORMATS:
        raise ValueError(f"accuracy: answer_format must be one of {', '.join(ACCURACY_FORMATS)}; got {answer_format!r}")
    if after_answer not in AFTER_ANSWER:
        raise ValueError(f"accuracy: after_answer must be one of {', '.join(AFTER_ANSWER)}; got {after_answer!r}")
    if not deadline_s > 0:
        raise ValueError(f"accuracy: deadline_s must be > 0 seconds, got {deadline_s!r}")


def judge(completions: list[str], answer: list[str], answer_format: str = "r1", after_answer: str = "strict",
          max_completion_chars: int = 65536, max_answer_chars: int = 1000, deadline_s: float = 3.0,
          workers: int | None = None) -> list[Verdict]:
    """One :class:`Verdict` per completion (the ``accuracy`` reward's decisions, with reasons). Never raises on
    completion text; a gold that cannot be used gives ``bad_gold`` verdicts.

    Example:
        >>> [v.reason.value for v in judge(["<answer>12</answer> \\\\boxed{13}", "<answer>12</answer>"], ["12", "12"])]
        ['other_answer_after', 'right']
    """
    _check_options(answer_format, after_answer, deadline_s)
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
        if found.answer is None and found.boxes and same_value(list(found.boxes)):
            found = Extraction(found.boxes[-1], None, found.tail)  # \boxed{\frac{1}{2}} = \boxed{0.5}: one answer
        if found.answer is None:
            out[i] = _verdict(Reason(found.reason), None, "extract", time.perf_counter() - t0)
            continue
        if after_answer == "strict" and found.tail.strip():
            reason = (Reason.OTHER_ANSWER_AFTER if other_answer_after(found.tail, found.answer)
                      else Reason.RETRACTED if retracted(found.tail) else None)
            if reason is not None:
                out[i] = _verdict(reason, found.answer, "extract", time.perf_counter() - t0)
                continue
        if found.context and hedges_around(found.context) - gold.hedges:  # "about \\boxed{8}" in the block
            out[i] = _verdict(Reason.HEDGED, found.answer, "extract", time.perf_counter() - t0)
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

