"""Exact values of plain numbers, the CAS stall guard, and the shape checks (candidates, relations) of an answer.

Used by ``accuracy`` (its exact in-process path) and by gold parsing; imports only ``rewards.extract`` and
``rewards.arith``.
"""

from __future__ import annotations

import re
from fractions import Fraction

from rewards.arith import ArithError, evaluate
from rewards.extract import clean

_THOUSANDS = re.compile(r"(?<=\d)(?:,|\{,\}|\\,| )(?=\d{3}(?!\d))")
_FRAC = re.compile(r"^([-+]?)\\[dt]?frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))$")
_SCI = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d{1,4}$")
_ARITH_CHARS = re.compile(r"^[\d\s.+\-*/()]+$")
# separators between candidate answers at the top level: "3 or 4", "3, 4", "3; 4", "3 \text{ or } 4", "7 to 8",
# lines and LaTeX line breaks ("7 \\ 8"; a matrix's rows are inside its environment, see _ENV), and two numbers
# side by side ("7 8"; thousands groups such as "1 234" are joined first)
_CANDIDATE_SEP = re.compile(r",|;|\n|\\\\|(?<=\d)[ \t]+(?=\d)|\\text\{\s*(?:or|and|to)\s*\}|\b(?:or|and|to)\b|"
                            r"\\(?:lor|vee|mid)\b")
_BAR = re.compile(r"(?<!\\)\|")  # absolute-value bars come in pairs; a lone one separates ("8 | 9")
_ENV = re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.DOTALL)
RELATION = re.compile(r"(?<![<>!\\])=(?!=)")  # a plain "=", not <=, >=, != or \neq
_NAME = re.compile(r"^\s*\\?[A-Za-z]{1,10}(?:_\{?\w+\}?)?(?:\s*\(\s*\\?[A-Za-z]+\s*\))?\s*$")
# Pathological inputs for a CAS: exponents inside exponents, huge exponent or factorial literals.
_BIG_EXPONENT = re.compile(r"(?:\^|\*\*)\s*\{?\s*\d{5,}")
_PLAIN_TOWER = re.compile(r"\^\s*\\?\w\s*\^|\*\*\s*\(?\s*[\w.]+\s*\*\*")  # 9^9^9 (LaTeX: one-token exponent), 9**9**9
_OPEN_BRACE = re.compile(r"\s*\{")
_BIG_FACTORIAL = re.compile(r"\d{4,}\s*\}?\s*!")
MAX_DEPTH = 24


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
    """True for answers built to stall a CAS: towers, huge exponents/factorials, nesting deeper than 24.

    Example:
        >>> is_pathological("9^{9^{9}}"), is_pathological("2^{10}")
        (True, False)
    """
    return _has_tower(s) or bool(_BIG_EXPONENT.search(s)) or bool(_BIG_FACTORIAL.search(s)) or _depth(s) > MAX_DEPTH


def count_candidates(s: str) -> int:
    """Top-level candidate answers in ``s``: ``3 or 4``, ``3, 4``, ``7 to 8``, ``8 | 9`` and two lines are 2;
    ``(3, 4)``, ``1,234``, ``|-3|`` and a matrix are 1."""
    s = _THOUSANDS.sub("", s)
    if "\\begin" in s:
        s = _ENV.sub("M", s)
    s = s.strip()
    depth, count, i = 0, 1, 0
    while i < len(s):
        ch = s[i]
        if ch in "([{" or s.startswith("\\{", i):
            depth += 1
        elif ch in ")]}" or s.startswith("\\}", i):
            depth -= 1
        elif depth == 0:
            m = _CANDIDATE_SEP.match(s, i)
            if m and (m.group(0)[0] not in "aot" or (i == 0 or not s[i - 1].isalnum())):
                count += 1
                i = m.end()
                continue
        i += 1
    return count + len(_BAR.findall(s)) % 2


def split_relation(s: str) -> list[str] | None:
    """The sides of ``a = b = c`` to check: every side that is not a bare name (``x``, ``f(x)``); None if none."""
    sides = RELATION.split(s)
    if len(sides) == 1:
        return [s]
    checks = [side.strip() for side in sides[:-1] if side.strip() and not _NAME.match(side)]
    last = sides[-1].strip()
    return checks + [last] if last else None
