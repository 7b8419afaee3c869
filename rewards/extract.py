"""The one definition of "the final answer": tags, boxes, extraction and cleaning.

Every reward (``accuracy``, ``format``, ``countdown``), gold parsing (``rewards/golds.py``, ``grpo``'s
solution-to-gold helpers) and the reasoning signals (``grpo/signals.py``'s think block) read completions
through this module, so "where is the answer" has one answer. It imports only the standard library.

Answer formats (``answer_format``):

- ``r1`` (default): the content of the single ``<answer>…</answer>`` block; if it holds ``\\boxed{}``, that box.
- ``boxed``: the ``\\boxed{}`` of the completion (Qwen-Math style templates).
- ``auto``: ``r1`` when the completion has an ``<answer>`` tag, else ``boxed``.

:func:`find_answer` says why there is no answer (a reason code) and returns the text after the answer, which
``accuracy`` checks for a second, different answer. Completions are read after
:func:`rewards.normalize.normalize_text` (what a reader sees: NFKC, look-alike tags, no zero-width characters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rewards.normalize import normalize_text

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
R1_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
ANSWER_FORMATS = ("r1", "boxed", "auto")
_TAG_PREFIXES = ("<answer", "</answer", "<think", "</think")  # also catches "<answer >" and "<think\n>"
BOX = re.compile(r"\\(?:boxed|fbox)")
_BRACE = re.compile(r"(?<!\\)[{}]")  # an unescaped brace (\{ is a literal brace in LaTeX)
_TOKEN = re.compile(r"[^\s$]+")

# math delimiters and wrappers that carry no meaning around a final answer
_WRAPPERS = [(r"\(", r"\)"), (r"\[", r"\]"), ("$$", "$$"), ("$", "$"), ("**", "**"), ("__", "__"), ("`", "`")]
# LaTeX spacing commands; "\\\\ " (a matrix row break, two backslashes) must survive, hence the lookbehind
_SPACING = re.compile(r"(?<!\\)(?:\\[,!;: ]|\\quad|\\qquad|\\displaystyle|\\left|\\right)|~")
# \text{}, emphasis (\textbf, \mathbf, \emph, \textit, \boldsymbol) and \mathrm around the whole answer
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|textit|emph|mathrm|mathbf|boldsymbol)\s*\{([^{}]*)\}$")
_MD_ITALIC = re.compile(r"^\*([^*]+)\*$")
_THOUSANDS_BANG = re.compile(r"(?<=\d),\s*\\!\s*(?=\d{3}(?!\d))")


@dataclass(frozen=True)
class Extraction:
    """Where a completion's final answer is, or why it has none.

    Attributes:
        answer: the single final answer (stripped), or ``None``.
        reason: ``None`` when found, else ``too_long``, ``no_answer``, ``multiple_answers``, ``answer_in_think``,
            ``unclosed`` or ``malformed`` (tags nested inside the answer block).
        tail: the text after the answer (after ``</answer>`` for r1, after the last box for boxed; for an r1 block
            that holds a box, from that box on).
        boxes: for ``multiple_answers`` from several different boxes, their contents (``accuracy`` counts boxes
            of equal value, ``\\boxed{\\frac{1}{2}} = \\boxed{0.5}``, as one answer).
        context: for an r1 block that holds a box, the block's text outside its boxes (``about \\boxed{8}``:
            ``accuracy`` reads hedges there).
    """

    answer: str | None
    reason: str | None
    tail: str = ""
    boxes: tuple[str, ...] = ()
    context: str = ""


def box_spans(text: str) -> list[tuple[int, int, str]] | None:
    """Every top-level ``\\boxed{…}`` / ``\\fbox{…}`` (``\\boxed 5`` too) as (start, end, content); ``None`` if one
    is unbalanced.

    Boxes nested inside a box belong to its content, so the scan never re-reads text: linear time, even for
    ``\\boxed{\\boxed{…}}`` nested thousands deep.
    """
    out = []
    pos = 0
    while True:
        m = BOX.search(text, pos)
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
            out.append((m.start(), j + 1, text[i + 1 : j]))
            pos = j + 1
        else:  # "\boxed 5": one token
            m2 = _TOKEN.match(text, i)
            if m2 is None:
                return None
            out.append((m.start(), m2.end(), m2.group(0)))
            pos = m2.end()


def boxed_contents(text: str) -> list[str] | None:
    """Contents of every top-level ``\\boxed{…}``; ``None`` if one is unbalanced.

    Example:
        >>> boxed_contents(r"\\boxed{1} and \\boxed{\\frac{1}{2}}")
        ['1', '\\\\frac{1}{2}']
    """
    spans = box_spans(text)
    return None if spans is None else [content for _, _, content in spans]


def last_boxed(text: str) -> str | None:
    r"""Content of the last top-level ``\boxed{...}`` in ``text`` (a reference solution), stripped; ``None`` if none.

    Example:
        >>> last_boxed(r"so $x = \boxed{\frac{1}{2}}$.")
        '\\frac{1}{2}'
    """
    spans = box_spans(text)
    return spans[-1][2].strip() if spans else None


def single(values: list[str]) -> str | None:
    """The one value among ``values`` (repeats allowed), ``None`` if they differ or are empty."""
    distinct = {re.sub(r"\s+", "", v) for v in values}
    if len(distinct) != 1 or distinct == {""}:
        return None
    return values[-1].strip()


def _from_boxes(text: str, tail_from: int | None) -> Extraction:
    """The single boxed value of ``text``; the tail starts after the last box unless ``tail_from`` is given."""
    spans = box_spans(text)
    if spans is None:
        return Extraction(None, "unclosed")
    if not spans:
        return Extraction(None, "no_answer")
    one = single([content for _, _, content in spans])
    if one is None:
        empty = all(not content.strip() for _, _, content in spans)
        if empty:
            return Extraction(None, "no_answer")
        boxes = tuple(content.strip() for _, _, content in spans)
        return Extraction(None, "multiple_answers", text[spans[-1][1] :] if tail_from is None else "", boxes)
    return Extraction(one, None, text[spans[-1][1] :] if tail_from is None else "")


def find_answer(text: str, answer_format: str = "r1", max_chars: int = 65536) -> Extraction:
    """The single final answer of a completion with the reason when there is none, and the text after it.

    Args:
        text: the completion.
        answer_format: ``r1`` (``<answer>`` block, its box if any), ``boxed``, or ``auto``.
        max_chars: longer completions have no answer (reason ``too_long``).

    Example:
        >>> find_answer("<think>6+2=8</think><answer>8</answer> So \\\\boxed{9}")
        Extraction(answer='8', reason=None, tail=' So \\\\boxed{9}', boxes=())
    """
    if not isinstance(text, str):
        return Extraction(None, "no_answer")
    if len(text) > max_chars:
        return Extraction(None, "too_long")
    text = normalize_text(text)
    if answer_format == "auto":
        answer_format = "r1" if ANSWER_OPEN in text else "boxed"
    if answer_format == "boxed":
        return _from_boxes(text, None)
    if answer_format != "r1":
        raise ValueError(f"answer_format must be r1, boxed or auto; got {answer_format!r}")
    opens, closes = text.count(ANSWER_OPEN), text.count(ANSWER_CLOSE)
    if opens == 0:
        return Extraction(None, "no_answer")
    if opens > 1 or closes > 1:
        return Extraction(None, "multiple_answers")
    start, end = text.index(ANSWER_OPEN) + len(ANSWER_OPEN), text.find(ANSWER_CLOSE)
    if end < start:
        return Extraction(None, "unclosed")
    before, body = text[:start], text[start:end]
    if before.count(THINK_OPEN) > before.count(THINK_CLOSE):
        return Extraction(None, "answer_in_think")  # the answer sits inside an open think block: it is a thought
    if not body.strip():
        return Extraction(None, "no_answer")
    if any(tag in body for tag in _TAG_PREFIXES):
        return Extraction(None, "malformed")
    tail = text[end + len(ANSWER_CLOSE) :]
    if BOX.search(body):  # the box is the answer; text after it inside the block is part of the tail
        boxed = _from_boxes(body, None)
        after = boxed.tail + ANSWER_CLOSE + tail if boxed.answer or boxed.boxes else ""
        spans = box_spans(body) or []
        cuts = zip([0] + [e for _, e, _ in spans], [s for s, _, _ in spans] + [len(body)])
        outside = " ".join(body[a:b] for a, b in cuts)
        return Extraction(boxed.answer, boxed.reason, after, boxed.boxes, outside.strip())
    return Extraction(body.strip(), None, tail)


def extract_answer(text: str, answer_format: str = "r1", max_chars: int = 65536) -> str | None:
    """The single final answer of a completion, or ``None`` (no answer, several, malformed, too long).

    Example:
        >>> extract_answer("<think>6+2=8</think><answer>\\\\boxed{8}</answer>")
        '8'
    """
    return find_answer(text, answer_format, max_chars).answer


def think_block(text: str) -> str | None:
    """The text inside the first think block, or None when the completion has none.

    - ``<think>X</think>...`` -> ``X``;
    - ``X</think>...`` with no opening tag -> ``X`` (the template prefilled ``<think>`` in the prompt,
      as TinyZero and Open-Reasoner-Zero do);
    - ``<think>X`` with no closing tag -> ``X`` (cut off by the length limit: the thinking so far);
    - no tag at all -> None.

    Example:
        >>> think_block("<think>6+2=8\\n8+7=15</think><answer>15</answer>")
        '6+2=8\\n8+7=15'
    """
    start, end = text.find(THINK_OPEN), text.find(THINK_CLOSE)
    if start >= 0 and (end < 0 or start < end):
        body_start = start + len(THINK_OPEN)
        close = text.find(THINK_CLOSE, body_start)
        return text[body_start:] if close < 0 else text[body_start:close]
    if end >= 0:
        return text[:end]
    return None


def clean(answer: str) -> str:
    """Strip math delimiters, ``\\text{}``/``\\textbf{}`` and markdown emphasis, LaTeX spacing, a final period;
    normalise minus signs.

    Example:
        >>> clean(r"**\\textbf{73}**.")
        '73'
    """
    s = answer.strip().replace("\u2212", "-").replace("\u2013", "-")
    s = _THOUSANDS_BANG.sub(",", s)  # "11,\\! 111" is one number typeset with a negative thin space
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SPACING.sub(lambda m: " " if m.group(0) in ("\\ ", "~", "\\quad", "\\qquad") else "", s).strip()
    for _ in range(4):
        before = s
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
        m = _TEXT_WRAP.match(s) or _MD_ITALIC.match(s)
        if m:
            s = m.group(1).strip()
        s = s.rstrip(".").strip()
        if s == before:
            break
    return s


_LEADING_CLOSE = re.compile(r"^\s*[.,;:!]?\s*(?:\$\$|\$|\\\)|\\\])")  # the rest of the math span that held the answer
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?%?")


def stated_answers(tail: str) -> list[str]:
    """Answers that the text after the final answer states: its boxes, its math spans with a digit in them, and
    its bare numbers. A math span without digits (``$B$``, ``$\\text{cm}$``) names something, not an answer.

    Example:
        >>> stated_answers("$ for $B$. Check: $6+6$, so 12. Actually \\\\boxed{13}")
        ['13', '6+6', '12']
    """
    tail = _LEADING_CLOSE.sub("", tail)  # "$\\boxed{2}$ ...": the tail starts by closing the answer's span
    spans = box_spans(tail)
    if spans is None:  # an unbalanced box after the answer still states something
        spans = [(m.start(), len(tail), tail[m.end() :]) for m in BOX.finditer(tail)][:1]
    out = [content for _, _, content in spans]
    rest = "".join(tail[a:b] for a, b in zip([0] + [e for _, e, _ in spans], [s for s, _, _ in spans] + [len(tail)]))
    for m in _MATH_SPAN.finditer(rest):
        span = next(g for g in m.groups() if g is not None)
        if any(ch.isdigit() for ch in span):
            out.append(span)
    rest = _MATH_SPAN.sub(" ", rest)
    out += [m.group(0) for m in _NUMBER.finditer(rest)]
    out += [str(v) for v in number_words(rest)]
    out += [f"({m.group(1)})" for m in _OPTION.finditer(rest)]
    return [s for s in (x.strip() for x in out) if s]


_UNITS_WORDS = {w: i for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                        "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
                                        "sixteen", "seventeen", "eighteen", "nineteen", "twenty"])}
_TENS_WORDS = {w: 10 * i for i, w in enumerate(["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy",
                                                 "eighty", "ninety"]) if w != "_"}

_SCALE_WORDS = {"hundred": 100, "thousand": 1000, "million": 10**6}
NUMBER_WORD = re.compile(r"\b(?:" + "|".join(sorted({*_UNITS_WORDS, *_TENS_WORDS, *_SCALE_WORDS}, key=len,
                                                       reverse=True)) + r")(?:[\s-]+(?:and[\s-]+)?(?:" +
                          "|".join(sorted({*_UNITS_WORDS, *_TENS_WORDS, *_SCALE_WORDS}, key=len, reverse=True)) +
                          r"))*\b", re.IGNORECASE)
# "one" after a determiner is a pronoun ("the right one"), not a number
_PRONOUN_ONE = re.compile(r"\b(?:the|this|that|which|each|every|any|no|some|another|other|right|correct)\s+one\b",
                          re.IGNORECASE)
_OPTION = re.compile(r"\(\s*([A-E])\s*\)")


def number_words(text: str) -> list[int]:
    """Numbers written in words (``zero`` to ``twenty``, the tens, ``hundred``, ``thousand``, ``million``).

    Example:
        >>> number_words("No wait, it is twenty-one, not one hundred and five.")
        [21, 105]
    """
    text = _PRONOUN_ONE.sub(" ", text)
    out = []
    for m in NUMBER_WORD.finditer(text):
        total = current = 0
        last = ""  # kind of the previous word: "small" (0-19), "tens", "scale"
        for word in re.findall(r"[a-z]+", m.group(0).lower()):
            kind = ("scale" if word in _SCALE_WORDS else "tens" if word in _TENS_WORDS
                    else "small" if word in _UNITS_WORDS else "")
            if not kind:
                continue  # "and"
            if (last == "small" and kind != "scale") or (last == "tens" and kind == "tens"):
                out.append(total + current)  # "seven eight" is two numbers, not 15
                total = current = 0
            if kind == "scale":
                scale = _SCALE_WORDS[word]
                if scale == 100:
                    current = max(current, 1) * 100
                else:
                    total, current = total + max(current, 1) * scale, 0
            else:
                current += _TENS_WORDS[word] if kind == "tens" else _UNITS_WORDS[word]
            last = kind
        out.append(total + current)
    return out
