"""``accuracy``: is the single final answer right? Hack-resistant, exact for numbers, bounded in time.

Extraction (``answer_format``):

- ``r1`` (default): the content of the single ``<answer>…</answer>`` block; if it holds ``\\boxed{}``, that box.
  Several answer blocks, tags nested inside the block, an unclosed block, or a block inside an open
  ``<think>`` score 0.
- ``boxed``: the ``\\boxed{}`` of the completion (Qwen-Math style templates).
- ``auto``: ``r1`` when the completion has an ``<answer>`` tag, else ``boxed``.

Several different boxed values (``\\boxed{1}\\boxed{2}``) or several candidate answers (``3 or 4``,
``3, 4`` when the gold is one value) score 0: math-verify alone would read them as a set or take one.
An equation counts only for its last side and only if every numeric side agrees (``x = 42`` is 42;
``41 = 42`` scores 0).

Comparison: plain numbers and arithmetic of plain numbers take an exact in-process path (thousands
separators, ``$``, ``%`` when the gold is a percentage, unicode minus, trailing ``.0``, ``1e5``, fractions vs
decimals, ``\\frac{a}{b}``); everything else goes to math-verify (``verify(gold, pred)``, gold first) in the
worker pool of ``rewards/sandbox.py`` with a hard per-call deadline. Completions longer than
``max_completion_chars`` and answers longer than ``max_answer_chars`` score 0, and answers built to stall a
CAS (exponent towers, huge exponents or factorials, deep nesting) score 0 without being parsed.

Metrics (reported through ``rewards.report``, logged as ``rewards/accuracy/<key>``): ``timeouts``,
``math_verify_calls``, ``rejected`` (pathological answers refused unparsed), ``bad_gold``,
``worker_failures`` (math-verify raised, a worker died, or workers cannot start; those samples score 0).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from rewards import register, report
from rewards.arith import ArithError, evaluate
from rewards.sandbox import get_pool

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
ANSWER_FORMATS = ("r1", "boxed", "auto")
_TAGS = ("<answer", "</answer", "<think", "</think")
_BOX = re.compile(r"\\(?:boxed|fbox)")
# math delimiters and wrappers that carry no meaning around a final answer
_WRAPPERS = [(r"\(", r"\)"), (r"\[", r"\]"), ("$$", "$$"), ("$", "$")]
# LaTeX spacing commands; "\\\\ " (a matrix row break, two backslashes) must survive, hence the lookbehind
_SPACING = re.compile(r"(?<!\\)(?:\\[,!;: ]|\\quad|\\qquad|\\displaystyle|\\left|\\right)|~")
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}$")
_THOUSANDS = re.compile(r"(?<=\d)(?:,|\{,\}|\\,| )(?=\d{3}(?!\d))")
_THOUSANDS_BANG = re.compile(r"(?<=\d),\s*\\!\s*(?=\d{3}(?!\d))")
_FRAC = re.compile(r"^([-+]?)\\[dt]?frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))$")
_SCI = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d{1,4}$")
_ARITH_CHARS = re.compile(r"^[\d\s.+\-*/()]+$")
# separators between candidate answers at the top level: "3 or 4", "3, 4", "3; 4", "3 \text{ or } 4"
_CANDIDATE_SEP = re.compile(r",|;|\\text\{\s*(?:or|and)\s*\}|\b(?:or|and)\b|\\(?:lor|vee)\b")
_RELATION = re.compile(r"(?<![<>!\\])=(?!=)")  # a plain "=", not <=, >=, != or \neq
_NAME = re.compile(r"^\s*\\?[A-Za-z]{1,10}(?:_\{?\w+\}?)?(?:\s*\(\s*\\?[A-Za-z]+\s*\))?\s*$")
# Pathological inputs for a CAS: exponents inside exponents, huge exponent or factorial literals.
_BIG_EXPONENT = re.compile(r"(?:\^|\*\*)\s*\{?\s*\d{5,}")
_PLAIN_TOWER = re.compile(r"\^\s*\\?\w\s*\^|\*\*\s*\(?\s*[\w.]+\s*\*\*")  # 9^9^9 (LaTeX: one-token exponent), 9**9**9
_BRACE = re.compile(r"(?<!\\)[{}]")  # an unescaped brace (\{ is a literal brace in LaTeX)
_TOKEN = re.compile(r"[^\s$]+")
_OPEN_BRACE = re.compile(r"\s*\{")
_BIG_FACTORIAL = re.compile(r"\d{4,}\s*\}?\s*!")
MAX_DEPTH = 24


@dataclass(frozen=True)
class Gold:
    """A gold answer parsed once per dataset row.

    Attributes:
        text: the answer as the worker pool receives it (wrappers stripped).
        number: its exact value when it is a plain number (the fast path), else ``None``.
        percent: the gold is written as a percentage ("25\\%").
        items: top-level candidates in the gold (``3, 4`` is 2); a prediction may not offer more.
        relation: the gold itself is an equation (``y = 2x``): compare whole, do not take its right side.
        pathological: the gold itself trips the stall guard (then predictions are not refused for it).
    """

    text: str
    number: Fraction | None
    percent: bool
    items: int
    relation: bool
    pathological: bool


# --- extraction --------------------------------------------------------------------------------------


def boxed_contents(text: str) -> list[str] | None:
    """Contents of every top-level ``\\boxed{…}`` / ``\\fbox{…}`` (``\\boxed 5`` too); ``None`` if one is unbalanced.

    Boxes nested inside a box belong to its content, so the scan never re-reads text: linear time, even for
    ``\\boxed{\\boxed{…}}`` nested thousands deep.
    """
    out = []
    pos = 0
    while True:
        m = _BOX.search(text, pos)
        if m is None:
            return out
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, -1
            for brace in _BRACE.finditer(text, i):  # jump from brace to brace: fast on long text
                depth += 1 if brace.group(0) == "{" else -1
                if depth == 0:
                    j = brace.start()
                    break
            if j < 0:
                return None
            out.append(text[i + 1 : j])
            pos = j + 1
        else:  # "\boxed 5": one token
            m2 = _TOKEN.match(text, i)
            if m2 is None:
                return None
            out.append(m2.group(0))
            pos = m2.end()


def _single(values: list[str]) -> str | None:
    """The one value among ``values`` (repeats allowed), ``None`` if they differ or are empty."""
    distinct = {re.sub(r"\s+", "", v) for v in values}
    if len(distinct) != 1 or distinct == {""}:
        return None
    return values[-1].strip()


def extract_answer(text: str, answer_format: str = "r1", max_chars: int = 65536) -> str | None:
    """The single final answer of a completion, or ``None`` (no answer, several, malformed, too long).

    Args:
        text: the completion.
        answer_format: ``r1`` (``<answer>`` block, its box if any), ``boxed``, or ``auto``.
        max_chars: longer completions have no answer (they score 0 unparsed).

    Example:
        >>> extract_answer("<think>6+2=8</think><answer>\\\\boxed{8}</answer>")
        '8'
    """
    if not isinstance(text, str) or len(text) > max_chars:
        return None
    if answer_format == "auto":
        answer_format = "r1" if ANSWER_OPEN in text else "boxed"
    if answer_format == "r1":
        if text.count(ANSWER_OPEN) != 1 or text.count(ANSWER_CLOSE) != 1:
            return None
        start, end = text.index(ANSWER_OPEN) + len(ANSWER_OPEN), text.index(ANSWER_CLOSE)
        body = text[start:end] if end >= start else ""
        before = text[:start]
        if before.count("<think>") > before.count("</think>"):
            return None  # the answer sits inside an open think block: it is a thought, not the answer
        if not body.strip() or any(tag in body for tag in _TAGS):
            return None
        boxes = boxed_contents(body)
        if boxes is None:
            return None
        return _single(boxes) if boxes else body.strip()
    if answer_format == "boxed":
        boxes = boxed_contents(text)
        return _single(boxes) if boxes else None
    raise ValueError(f"answer_format must be r1, boxed or auto; got {answer_format!r}")


# --- normalisation and the exact path ----------------------------------------------------------------


def clean(answer: str) -> str:
    """Strip math delimiters, ``\\text{}`` wrappers, LaTeX spacing, a final period, and normalise minus signs."""
    s = answer.strip().replace("\u2212", "-").replace("\u2013", "-")
    s = _THOUSANDS_BANG.sub(",", s)  # "11,\\! 111" is one number typeset with a negative thin space
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SPACING.sub(lambda m: " " if m.group(0) in ("\\ ", "~", "\\quad", "\\qquad") else "", s).strip()
    for _ in range(3):
        before = s
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
        m = _TEXT_WRAP.match(s)
        if m:
            s = m.group(1).strip()
        s = s.rstrip(".").strip()
        if s == before:
            break
    return s


def plain_value(answer: str) -> tuple[Fraction, bool] | None:
    """Exact value of a plain number or arithmetic of plain numbers, and whether it had a percent sign.

    Accepts ``1,234`` / ``1 234`` / ``1{,}234``, ``$`` or ``\\$`` signs, ``%`` / ``\\%``, ``2.50``, ``1e5``,
    ``7/2``, ``\\frac{7}{2}``, ``15+3``. Returns ``None`` for anything else (it goes to math-verify).

    Example:
        >>> plain_value("$1,234.50")
        (Fraction(2469, 2), False)
    """
    s = clean(answer)
    percent = s.endswith("%")
    if percent:
        s = s[:-2] if s.endswith("\\%") else s[:-1]
    s = s.replace("\\$", "").replace("$", "").strip()
    s = _THOUSANDS.sub("", s)
    if not s or len(s) > 200:
        return None
    m = _FRAC.match(s)
    if m:
        num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
        if den == 0:
            return None
        value = Fraction(num, den)
        return (-value if m.group(1) == "-" else value), percent
    if _SCI.match(s):
        return Fraction(s), percent
    if _ARITH_CHARS.match(s):
        try:
            return evaluate(s).value, percent
        except ArithError:
            return None
    return None


def _depth(s: str) -> int:
    depth = best = 0
    for ch in s:
        if ch in "({[":
            depth += 1
            best = max(best, depth)
        elif ch in ")}]":
            depth -= 1
    return best


def _has_tower(s: str) -> bool:
    """An exponent inside an exponent (``9^{9^{9}}``, ``9^9^9``, ``2**3**4``): evaluating it can take forever."""
    if _PLAIN_TOWER.search(s):
        return True
    exp_depth: list[int] = []  # brace depth outside each open ``^{`` group
    depth, last_close = 0, -2
    for i, ch in enumerate(s):
        if ch == "^":
            if exp_depth or (last_close >= 0 and s[last_close + 1 : i].strip() == ""):  # nested, or "^{9}^{9}"
                return True
            if _OPEN_BRACE.match(s, i + 1):
                exp_depth.append(depth)
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if exp_depth and depth == exp_depth[-1]:
                exp_depth.pop()
                last_close = i
    return False


def is_pathological(s: str) -> bool:
    """True for answers built to stall a CAS: towers, huge exponents/factorials, nesting deeper than 24."""
    return _has_tower(s) or bool(_BIG_EXPONENT.search(s)) or bool(_BIG_FACTORIAL.search(s)) or _depth(s) > MAX_DEPTH


def count_candidates(s: str) -> int:
    """Top-level candidate answers in ``s``: ``3 or 4`` and ``3, 4`` are 2; ``(3, 4)`` and ``1,234`` are 1."""
    s = _THOUSANDS.sub("", s)
    depth, count, i = 0, 1, 0
    while i < len(s):
        ch = s[i]
        if ch in "([{" or s.startswith("\\{", i):
            depth += 1
        elif ch in ")]}" or s.startswith("\\}", i):
            depth -= 1
        elif depth == 0:
            m = _CANDIDATE_SEP.match(s, i)
            if m and (m.group(0)[0] not in "ao" or (i == 0 or not s[i - 1].isalnum())):
                count += 1
                i = m.end()
                continue
        i += 1
    return count


def _split_relation(s: str) -> list[str] | None:
    """The sides of ``a = b = c`` to check: every side that is not a bare name (``x``, ``f(x)``); None if none."""
    sides = _RELATION.split(s)
    if len(sides) == 1:
        return [s]
    checks = [side.strip() for side in sides[:-1] if side.strip() and not _NAME.match(side)]
    last = sides[-1].strip()
    return checks + [last] if last else None


# --- golds ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def _gold_structure(answer: str) -> Gold:
    text = clean(answer)
    if not text:
        raise ValueError(f"gold answer {answer!r} is empty; every row needs a gold answer in column 'answer'")
    boxes = boxed_contents(text) if _BOX.search(text) else []
    if boxes:
        one = _single(boxes)
        if one is None:
            raise ValueError(f"gold answer {answer!r} holds several different \\boxed{{}} values; keep one")
        text = clean(one)
    value = plain_value(text)
    percent = text.endswith("%")
    return Gold(text=text, number=value[0] if value else None, percent=percent, items=count_candidates(text),
                relation=bool(_RELATION.search(text)), pathological=is_pathological(text))


_GOLD_CHECKED: dict = {}  # gold text -> math-verify's Result, so reloading a dataset does not re-parse


def parse_golds(answers: list, deadline_s: float = 10.0) -> list[Gold]:
    """Parse and check many gold answers at once (dataset load); non-numbers are checked by math-verify.

    Raises:
        ValueError: naming the first bad row by index, e.g. ``gold answer of row 12 ('\\frac{1}{') ...``.
    """
    golds = []
    for i, answer in enumerate(answers):
        if answer is None or (not isinstance(answer, (str, int, float, Fraction)) or isinstance(answer, bool)):
            raise ValueError(f"row {i}: gold answer is {answer!r}; column 'answer' must hold strings")
        try:
            golds.append(_gold_structure(str(answer)))
        except ValueError as e:
            raise ValueError(f"row {i}: {e}") from None
    todo = sorted({g.text for g in golds if g.number is None} - set(_GOLD_CHECKED))
    if todo:
        fresh = dict(zip(todo, get_pool().run([{"op": "gold", "gold": t} for t in todo], deadline_s)))
        _GOLD_CHECKED.update({t: r for t, r in fresh.items() if r.status in ("ok", "bad_gold", "timeout")})
    else:
        fresh = {}
    for i, g in enumerate(golds):
        res = fresh.get(g.text) or _GOLD_CHECKED.get(g.text)
        if res is not None and not res.ok:
            why = {"timeout": f"parsing it took longer than {deadline_s} s",
                   "bad_gold": "math-verify finds no expression in it"}.get(res.status, f"math-verify {res.status}")
            raise ValueError(f"row {i}: gold answer {answers[i]!r} cannot be parsed ({why}); fix or drop the row")
    return golds


def parse_gold(answer: str) -> Gold:
    """Parse one gold answer once, at dataset load; the result is cached.

    Raises:
        ValueError: the gold is empty, holds several different boxes, or math-verify cannot parse it; the
            message names the gold and the fix. Callers add the row number.

    Example:
        >>> parse_gold("1,234").number
        Fraction(1234, 1)
    """
    try:
        return parse_golds([answer])[0]
    except ValueError as e:
        raise ValueError(str(e).removeprefix("row 0: ")) from None


# --- the reward ----------------------------------------------------------------------------------------

_VERDICTS: OrderedDict[tuple, bool] = OrderedDict()  # (gold text, checks) -> verdict; LRU, shared by threads
_VERDICTS_LOCK = threading.Lock()
_VERDICTS_MAX = 1 << 16


def judge_locally(gold: Gold, answer: str, max_answer_chars: int = 1000) -> float | list[str]:
    """The verdict when it needs no CAS, else the cleaned strings math-verify must all accept.

    Returns 1.0 or 0.0 (decided here), -1.0 (refused unparsed as pathological: scores 0), or a list of
    strings for the worker pool.

    Example:
        >>> judge_locally(parse_gold("18"), "$18.00")
        1.0
    """
    s = clean(answer)
    if not s or len(s) > max_answer_chars:
        return 0.0
    if count_candidates(s) > gold.items:
        return 0.0
    checks = [s] if gold.relation else _split_relation(s)
    if not checks:
        return 0.0
    if gold.number is not None:
        pending = []
        for c in checks:
            v = plain_value(c)
            if v is None:
                pending.append(c)
                continue
            value, percent = v
            if percent and not gold.percent:
                return 0.0
            ok = value == gold.number or (gold.percent and not percent and value * 100 == gold.number)
            if not ok:
                return 0.0
        if not pending:
            return 1.0
        checks = pending
    if not gold.pathological and any(is_pathological(c) for c in checks):
        return -1.0  # refused unparsed; counted as "rejected" by the caller
    return checks


@register("accuracy")
def accuracy_reward(completions: list[str], answer: list[str], answer_format: str = "r1",
                    max_completion_chars: int = 65536, max_answer_chars: int = 1000, deadline_s: float = 3.0,
                    workers: int | None = None, **columns) -> list[float | None]:
    """1.0 when the single final answer equals the gold answer, else 0.0. Never raises on completion text.

    Args:
        completions: N completion texts.
        answer: N gold answers (strings; parsed once each and cached).
        answer_format: ``r1`` (default), ``boxed`` or ``auto`` (see the module docstring).
        max_completion_chars: longer completions score 0 unparsed.
        max_answer_chars: longer final answers score 0 unparsed.
        deadline_s: hard wall-clock limit per math-verify call; past it the worker is killed and the
            sample scores 0 (metric ``timeouts``).
        workers: size of the math-verify process pool (default: one per core, 2 to 8).
        **columns: other dataset columns (ignored).

    Raises:
        ValueError: a gold answer cannot be parsed (empty, several boxes); check rows at load with
            :func:`parse_golds` to catch this before training.

    Example:
        >>> accuracy_reward(["<think>8+9=17</think><answer>17</answer>"], answer=["17"])
        [1.0]
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"accuracy: answer_format must be one of {', '.join(ANSWER_FORMATS)}; got {answer_format!r}")
    if not deadline_s > 0:
        raise ValueError(f"accuracy: deadline_s must be > 0 seconds, got {deadline_s!r}")
    n = len(completions)
    out: list[float | None] = [0.0] * n
    jobs: dict[tuple, list[int]] = {}
    rejected = 0
    for i, (completion, gold_text) in enumerate(zip(completions, answer)):
        gold = _gold_structure(str(gold_text))  # ValueError names the gold; score() adds the sample index
        pred = extract_answer(completion, answer_format, max_completion_chars)
        if pred is None:
            continue
        verdict = judge_locally(gold, pred, max_answer_chars)
        if isinstance(verdict, float):
            rejected += verdict < 0
            out[i] = max(verdict, 0.0)
            continue
        key = (gold.text, tuple(verdict))
        with _VERDICTS_LOCK:
            cached = _VERDICTS.get(key)
            if cached is not None:
                _VERDICTS.move_to_end(key)
        if cached is not None:
            out[i] = 1.0 if cached else 0.0
        else:
            jobs.setdefault(key, []).append(i)
    keys = list(jobs)
    results = get_pool(workers).run([{"op": "verify", "gold": k[0], "preds": list(k[1])} for k in keys], deadline_s)
    timeouts = bad_gold = failures = 0
    for key, res in zip(keys, results):
        for i in jobs[key]:
            out[i] = 1.0 if res.ok else 0.0
        timeouts += res.status == "timeout"
        bad_gold += res.status == "bad_gold"
        failures += res.status in ("error", "crash", "unavailable")
        if res.status in ("ok", "bad_gold", "timeout"):  # a timeout repeats: remember the 0 instead of re-paying it
            with _VERDICTS_LOCK:
                _VERDICTS[key] = res.ok
                if len(_VERDICTS) > _VERDICTS_MAX:
                    _VERDICTS.popitem(last=False)
    report("timeouts", timeouts)
    report("math_verify_calls", len(keys))
    report("rejected", rejected)
    report("bad_gold", bad_gold)
    report("worker_failures", failures)  # math-verify raised, a worker died, or workers cannot start
    return out
