"""The canonical answer: one reading of an extracted final answer, made before any comparison.

:func:`rewards.extract.find_answer` finds the answer (after :func:`rewards.normalize.normalize_text`: NFKC, look-alike
tags, zero-width characters, superscripts); this module turns that answer into what is compared, on the answer and
the gold alike:

- **hedges** (:data:`HEDGE_WORDS`, :data:`HEDGE_SYMBOLS`): ``about 8``, ``at least 8``, ``8 (not 7)``, ``~8``,
  ``\\approx 8`` score 0 (reason ``hedged``) unless the gold itself uses the word or symbol;
- **candidates**: lines, ``\\\\`` outside a matrix, ``,``, ``;``, ``or``, ``and``, ``to`` separate candidates
  (:func:`rewards.exact.count_candidates`); more than the gold holds scores 0;
- **cosmetics that go**: a lead-in (``the answer is``), units and currency (:data:`UNITS`, ``\\$``, ``€``, ``°``, in
  ``\\text{}``, ``\\mbox{}`` or plain, with ``^2``/``^3``, ``per week``), and one plain noun after a single number
  (``18 apples``); any other prose left over scores 0 (reason ``partial_parse``), as does anything math-verify is
  known to read only in part (``\\sqrt(3)``, unbalanced brackets, unknown Unicode);
- **exact notations**: mixed numbers (``3 1/2``, ``3\\frac{1}{2}`` are 7/2), repeating decimals
  (``0.\\overline{3}`` is 1/3), ``a \\pm b`` as the two items ``a+b, a-b``;
- **text answers** (``\\text{north}``, ``(C)``) compare case-insensitively, in-process.

Imports ``rewards.extract`` and ``rewards.exact`` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from rewards.exact import plain_value
from rewards.extract import NUMBER_WORD, clean, number_words

# Units and currency words that are cosmetic after a number (singular and plural forms, case-insensitive).
UNITS = ("mm", "cm", "km", "m", "meters?", "metres?", "centimeters?", "centimetres?", "kilometers?", "millimeters?",
         "in", "inch(?:es)?", "ft", "feet", "foot", "yds?", "yards?", "mi", "miles?", "kg", "g", "mg", "grams?",
         "kilograms?", "lbs?", "pounds?", "oz", "ounces?", "tons?", "l", "ml", "liters?", "litres?", "gallons?",
         "s", "secs?", "seconds?", "min", "mins", "minutes?", "h", "hrs?", "hours?", "days?", "weeks?", "months?",
         "years?", "dollars?", "cents?", "euros?", "usd", "mph", "km/h", "units?", "degrees?", "sq\\.?", "square",
         "cubic", "percent")
_UNIT = r"(?:(?:square|sq\.?|cubic)\s+)?(?:" + "|".join(UNITS) + r")"
_UNIT_PER = rf"{_UNIT}(?:\s*(?:per|/|an?|each)\s*{_UNIT})?"
# a unit at the end: plain (after a digit, space or brace), or in \text{} / \mbox{} / \mathrm{}, with ^2 or ^3
_UNIT_TAIL = re.compile(
    rf"(?:\s*\\(?:text|textnormal|mbox|mathrm|textrm|textbf|textit|rm|operatorname)\s*\{{\s*{_UNIT_PER}\s*\}}"
    rf"|(?<=[\d\s}}]){_UNIT_PER}"
    rf"|\^\s*\{{?\s*\\circ\s*\}}?|°)\s*(?:\^\s*\{{?\s*[23]\s*\}}?)?\s*\.?\s*$", re.IGNORECASE)
_CURRENCY_HEAD = re.compile(r"^\s*(?:\\\$|\$|€|£|¥|usd|eur)\s*", re.IGNORECASE)
_PER_TAIL = re.compile(rf"\s*(?:per|an?|each|/)\s*{_UNIT}\s*$", re.IGNORECASE)
_LEAD_IN = re.compile(r"^(?:(?:so|thus|therefore|hence)\s*,?\s*)?(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*:?|:|=)\s*",
                      re.IGNORECASE)

# Words that hedge or qualify an answer, in English and a few other languages: any one scores 0.
HEDGE_WORDS = frozenset(
    ["not", "than", "about", "roughly", "approximately", "approx", "approx.", "around", "nearly", "almost", "least",
     "most", "between", "maybe", "perhaps", "probably", "possibly", "likely", "guess", "circa", "ca", "either",
     "neither", "nor", "unless", "except", "instead", "over", "under", "above", "below", "exceeds", "more", "less",
     "fewer", "few", "several", "some", "somewhere", "ish", "close", "closer", "estimate", "estimated", "wait",
     "actually", "hmm", "unsure", "whether", "if", "else", "otherwise", "plus", "minus", "give", "take", "max",
     "tops", "upto", "up", "range", "ranges", "something", "wrong", "incorrect", "false", "no", "mistake", "isn",
     "aren", "wasn", "doesn", "don", "never", "approximate", "rounded", "round", "nearest", "minimum", "maximum",
     "lower", "upper", "bound", "bounds", "possible", "might", "could", "should", "would", "seems", "think", "believe",
     "assume", "assuming", "unclear", "alternatively", "roughly", "oder", "etwa", "ungefähr", "ou", "environ",
     "aproximadamente", "cerca", "unos", "около", "или", "примерно"])
# Symbols that qualify a value instead of stating it, by class: an answer may use a class the gold uses (an
# inequality gold allows every inequality sign; ``x \\geq 5`` for ``x >= 5``).
HEDGE_SYMBOLS = {"approx": ("\\approx", "\\sim", "\\simeq", "\\lesssim", "\\gtrsim", "≈", "约", "大约", "左右"),
                 "inequality": ("\\le", "\\ge", "\\leq", "\\geq", "\\lt", "\\gt", "\\neq", "\\ne", "<", ">", "≤",
                                "≥", "≠", "!="),
                 "either": ("\\mp", "∓", "或"), "uncertain": ("?", "¿")}
_SYMBOL_CLASS = {sym: cls for cls, syms in HEDGE_SYMBOLS.items() for sym in syms}
_HEDGE_SYMBOL = re.compile("|".join(re.escape(s) + (r"(?![A-Za-z])" if s[0] == "\\" else "")
                                    for s in sorted(_SYMBOL_CLASS, key=len, reverse=True)))
_SEPARATOR = re.compile(r"(?<![A-Za-z])(?:or|to|nor)(?![A-Za-z])", re.IGNORECASE)
# "~8" in prose means "about 8"; LaTeX's ~ elsewhere is a space
_TILDE_HEAD = re.compile(r"^\s*~\s*[\d.]")
_WORD = re.compile(r"(?<![\\A-Za-z])[^\W\d_]{2,}", re.UNICODE)
_COMMAND = re.compile(r"\\[A-Za-z]+")
MATH_WORDS = frozenset(["pi", "sin", "cos", "tan", "sec", "csc", "cot", "log", "ln", "exp", "sqrt", "lim", "inf",
                        "infty", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "det", "mod", "gcd", "lcm",
                        "deg"])
# Unicode that math-verify reads after we spell it in LaTeX; any other non-ASCII left is a partial read.
_UNICODE_MATH = {"π": "\\pi ", "√": "\\sqrt", "∞": "\\infty ", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ",
                 "°": "°", "−": "-", "–": "-"}
_KNOWN_PARTIAL = re.compile(r"\\sqrt\s*\(|\\sqrt\s*$|\\frac\s*\(|\\overline|\\dot\s*\{|\\\w+\s*\(\s*\)|\.\.\.|…")
_MIXED_PLAIN = re.compile(r"(?<![\d.^_{/\\])(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d./])")
_MIXED_FRAC = re.compile(r"(?<![\d.^_{/}\\])(\d+)\s*\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_REPEATING = re.compile(r"(\d*)\.(\d*)\s*(?:\\overline\s*\{\s*(\d+)\s*\}|\\dot\s*\{\s*(\d)\s*\}|\((\d+)\))")
_TEXT_ONLY = re.compile(r"^\(?[A-Za-z][A-Za-z' .-]*\)?$")
_TEXT_WRAPPERS = re.compile(r"\\(?:text|textnormal|textbf|mathrm|mbox|textit|mathbf|emph)\s*\{([^{}]*)\}")
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_LIST_AND = re.compile(r"\s*,?\s*(?:\\text\s*\{\s*and\s*\}|\band\b)\s*,?\s*")
_ALL_NUMBER_WORDS = re.compile(rf"^\s*(?:{NUMBER_WORD.pattern})(?:\s+(?:{NUMBER_WORD.pattern}))*\s*$", re.IGNORECASE)
_ENV_NAME = re.compile(r"\\(?:begin|end)\s*\{\w+\*?\}(?:\s*\{[lcr|]*\})?")  # \begin{array}{cc}
_ENV = re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.DOTALL)
_PLAIN_NUMBER_ONLY = re.compile(r"^[-+]?\$?\d[\d,]*(?:\.\d+)?$")


@dataclass(frozen=True)
class Canon:
    """An answer (or a gold) read once.

    Attributes:
        text: the canonical text compared from here on (units, currency, lead-in gone; exact notations rewritten).
        hedges: hedge words and symbols it uses (lower case).
        prose: words left over that are neither units, math names nor one noun after a single number.
        partial: a construct math-verify reads only in part (``\\sqrt(3)``, unknown Unicode, unbalanced brackets).
        text_answer: the answer as lower-case text when it is words only (``\\text{North}`` -> ``north``), else None.
        separators: ``or``/``to``/``nor`` anywhere, also inside brackets or ``\\text{}`` (``7 \\text{ (or 8)}``),
            where counting top-level candidates does not see them.
        spans: distinct math spans with a digit in the raw answer (``$7$ $8$``: more than one is several answers).
    """

    text: str
    hedges: frozenset[str]
    prose: tuple[str, ...]
    partial: bool
    text_answer: str | None
    separators: frozenset[str] = frozenset()
    spans: int = 0


def _repeating(m: re.Match) -> str:
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3) or m.group(4) or m.group(5)
    value = int(whole) + Fraction(int(fixed + rep) - int(fixed or "0"), 10 ** len(fixed) * (10 ** len(rep) - 1))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _mixed(m: re.Match) -> str:
    whole, num, den = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not 0 < num < den:
        return m.group(0)  # "2 4/2" is not a mixed number: leave it (two candidates or a product)
    value = whole + Fraction(num, den)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _strip_units(s: str) -> str:
    """``\\$45 per week`` -> ``45``; ``15\\mbox{ cm}^2`` -> ``15``; only while a digit remains."""
    for _ in range(4):
        before = s
        head = _CURRENCY_HEAD.sub("", s)
        if any(ch.isdigit() for ch in head):
            s = head
        for pattern in (_PER_TAIL, _UNIT_TAIL):
            rest = pattern.sub("", s).rstrip()
            if any(ch.isdigit() for ch in rest) and not rest.endswith(("^", "_", "\\")):
                s = rest
        if s == before:
            break
    return s.strip()


def expand_pm(s: str) -> str:
    """``a \\pm b`` (one top-level ``\\pm``, no list) as the two items ``a+b, a-b``; anything else unchanged.

    Example:
        >>> expand_pm("1 \\\\pm \\\\sqrt{2}")
        '1+\\\\sqrt{2}, 1-\\\\sqrt{2}'
    """
    parts = re.split(r"\\pm(?![A-Za-z])|±", s)
    if len(parts) != 2 or "," in s or "\\{" in s:
        return s
    a, b = parts[0].strip(), parts[1].strip()
    if not a or not b or a.count("{") != a.count("}") or a.count("(") != a.count(")"):
        return s
    b = f"({b})" if re.search(r"(?<=.)[-+]", b) else b
    return f"{a}+{b}, {a}-{b}"


def hedges_in(raw: str) -> frozenset[str]:
    """The hedge words (:data:`HEDGE_WORDS`) and symbols (:data:`HEDGE_SYMBOLS`) in ``raw``, lower case; words are
    read inside ``\\text{}`` too (``7 \\text{ (or 8)}``).

    Example:
        >>> sorted(hedges_in("about 7 \\\\text{ (not 8)} \\\\geq 6"))
        ['about', 'inequality', 'not']
    """
    found = {_SYMBOL_CLASS[m.group(0)] for m in _HEDGE_SYMBOL.finditer(raw)}
    if _TILDE_HEAD.match(raw):
        found.add("approx")
    text = _COMMAND.sub(" ", raw.replace("\\text", " ").replace("\\mbox", " "))
    found |= {w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w in HEDGE_WORDS}
    return frozenset(found)


def hedges_around(text: str) -> frozenset[str]:
    """Hedges and alternatives (``or``, ``to``, ``nor``) in text around a boxed answer (``about \\boxed{8}``,
    ``\\boxed{8} or so``); ``accuracy`` compares them with the gold's own."""
    words = frozenset(m.group(0).lower() for m in _SEPARATOR.finditer(_COMMAND.sub(" ", text)))
    return hedges_in(text) | words


def _prose(s: str) -> tuple[str, ...]:
    """Words left in ``s`` that no math parser reads as math; one plain noun after a single number is allowed."""
    bare = _COMMAND.sub(" ", _TEXT_WRAPPERS.sub(r" \1 ", _ENV_NAME.sub(" ", s)))
    words = [m.group(0) for m in _WORD.finditer(bare) if m.group(0).lower() not in MATH_WORDS]
    if len(words) == 1 and re.fullmatch(rf"[-+]?[\d.,]+\s*(?:\\text\s*\{{\s*)?{re.escape(words[0])}\s*\}}?", s.strip()):
        return ()  # "18 apples": one noun naming what was counted
    return tuple(words)


def _partial(s: str) -> bool:
    if _KNOWN_PARTIAL.search(s):
        return True
    if not s.isascii() and any(not ch.isascii() and ch not in _UNICODE_MATH for ch in s):
        return True
    flat = _ENV.sub("M", s)
    opens, closes = flat.count("(") + flat.count("["), flat.count(")") + flat.count("]")
    return flat.count("{") != flat.count("}") or opens != closes


def text_answer(s: str) -> str | None:
    """``s`` as lower-case words when it is words only (``\\text{(C)}`` -> ``(c)``), else ``None``."""
    inner = _TEXT_WRAPPERS.sub(r"\1", s).strip()
    if not _TEXT_ONLY.match(inner) or inner.lower() in MATH_WORDS or len(inner.strip("() ")) < 1:
        return None
    if len(inner.strip("() ")) == 1 and not inner.startswith("("):
        return None  # a single letter is a variable, not a word
    return " ".join(inner.lower().strip("() .").split())


def canonical(answer: str) -> Canon:
    """The canonical reading of an answer or gold (see the module docstring).

    Example:
        >>> canonical("The answer is \\\\$3 1/2 per week").text
        '\\\\frac{7}{2}'
    """
    if _PLAIN_NUMBER_ONLY.match(answer):  # GSM8K's common case: nothing to rewrite
        return Canon(answer, frozenset(), (), False, None)
    hedges = hedges_in(answer)
    outside = ""
    spans = list(_MATH_SPAN.finditer(answer))
    stated = len({"".join(g.split()) for m in spans for g in m.groups()
                  if g is not None and any(c.isdigit() for c in g)})
    if len(spans) == 1:  # "Therefore $x \\geq 5$ is the solution.": the one math span is the answer
        outside = answer[: spans[0].start()] + " " + answer[spans[0].end() :]
        if outside.strip() and not any(ch.isdigit() for ch in outside) and "\\" not in outside:
            answer = next(g for g in spans[0].groups() if g is not None)
        else:
            outside = ""
    s = clean(answer)
    for ch, latex in _UNICODE_MATH.items():
        if ch in s:
            s = s.replace(ch, latex)
    s = _LEAD_IN.sub("", s.replace("**", ""))  # "**Answer:** 8"
    if _ALL_NUMBER_WORDS.match(s):
        s = " ".join(str(v) for v in number_words(s))  # "eight" is 8; "seven eight" stays two candidates
    s = _strip_units(s)
    s = clean(s)
    s = _REPEATING.sub(_repeating, s)
    s = _MIXED_PLAIN.sub(_mixed, s)
    s = _MIXED_FRAC.sub(_mixed, s)
    s = expand_pm(s)
    if "," in s:
        s = _LIST_AND.sub(", ", s)  # "19, 46, and 82" is the list "19, 46, 82"
    text = text_answer(s)
    prose = () if text is not None else _prose(s)
    separators = frozenset(m.group(0).lower() for m in _SEPARATOR.finditer(_COMMAND.sub(" ", s + " " + outside)))
    return Canon(s, hedges, prose, _partial(s), text, separators, stated)


def same_value(values: list[str]) -> bool:
    """Do all ``values`` (box contents) state the same plain number (``\\frac{1}{2}`` and ``0.5``)?"""
    exact = [plain_value(canonical(v).text) for v in values]
    return all(v is not None for v in exact) and len({v[0] for v in exact}) == 1  # type: ignore[index]


def _split_top(body: str, seps: str = ",") -> list[str]:
    """``body`` split at separators outside brackets and braces."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and ch in seps:
            out.append(body[start:i])
            start = i + 1
    return out + [body[start:]]


def exact_leaves(s: str) -> tuple[str, tuple[Fraction, ...]] | None:
    """A tuple, interval, set, list or matrix whose every element is a plain number: its kind (the brackets, or
    ``set``, ``list``, ``matrix RxC``) and exact values; ``None`` for anything else (then math-verify compares).

    Example:
        >>> exact_leaves("(0.5, 3)")
        ('()', (Fraction(1, 2), Fraction(3, 1)))
    """
    s = s.strip()
    env = _ENV.fullmatch(s)
    if env:
        body = s[s.index("}") + 1 : s.rindex("\\end")]
        rows = [r for r in re.split(r"\\\\", body) if r.strip()]
        cells = [[c for c in r.split("&")] for r in rows]
        if not cells or len({len(r) for r in cells}) != 1:
            return None
        kind, items = f"matrix {len(cells)}x{len(cells[0])}", [c for r in cells for c in r]
    elif s.startswith("\\{") and s.endswith("\\}"):
        kind, items = "set", _split_top(s[2:-2])
    elif len(s) > 1 and s[0] in "([" and s[-1] in ")]":
        kind, items = s[0] + s[-1], _split_top(s[1:-1])
        if len(items) < 2:
            return None
    else:
        kind, items = "list", _split_top(s)
        if len(items) < 2:
            return None
    values = []
    for item in items:
        v = plain_value(item)
        if v is None or v[1]:
            return None
        values.append(v[0])
    return kind, tuple(values)


def containers_compare(gold: str, answer: str) -> bool | None:
    """Exact comparison of two containers of plain numbers: False when their values differ (``(0.0000003, 1)`` is
    not ``(0.0000004, 1)``), True when values and brackets agree, ``None`` when this cannot decide."""
    g, a = exact_leaves(gold), exact_leaves(answer)
    if g is None or a is None or len(g[1]) != len(a[1]):
        return None
    unordered = {"set", "list"}
    gv, av = (sorted(g[1]), sorted(a[1])) if g[0] in unordered and a[0] in unordered else (g[1], a[1])
    if gv != av:
        return False
    return True if g[0] == a[0] else None
