"""A small, exact arithmetic parser for model text: numbers, ``+ - * /`` and parentheses, nothing else.

Used by ``countdown`` (is the equation right?) and by ``accuracy``'s fast path (``15+3`` for gold 18), so that
model text is never handed to ``eval``. Values are :class:`fractions.Fraction`, so ``1/3*3 == 1`` exactly.
The grammar is recursive descent with a depth cap; there is no exponent, so a value's size is bounded by
the length of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# A decimal number without sign or exponent ("12", "3.5", ".5"); the sign is a unary operator.
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([-+*/()]))")
MAX_DEPTH = 64  # deeper parentheses than any real answer; keeps recursion far from Python's limit
MAX_CHARS = 1000


class ArithError(ValueError):
    """The text is not a well-formed arithmetic expression (or divides by zero)."""


@dataclass
class Parsed:
    """An evaluated expression: its exact ``value`` and the number literals it used, in order."""

    value: Fraction
    numbers: list[Fraction]


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise ArithError(f"unexpected character {text[pos]!r} at {pos}")
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], allow_unary: bool):
        self.tokens, self.i, self.allow_unary, self.numbers = tokens, 0, allow_unary, []

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ArithError("expression ends early")
        self.i += 1
        return tok

    def expr(self, depth: int) -> Fraction:  # expr := term (('+'|'-') term)*
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Fraction:  # term := factor (('*'|'/') factor)*
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "/" and rhs == 0:
                raise ArithError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def factor(self, depth: int) -> Fraction:  # factor := number | '(' expr ')' | '-' factor
        if depth > MAX_DEPTH:
            raise ArithError(f"nested deeper than {MAX_DEPTH}")
        tok = self.take()
        if tok == "(":
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise ArithError("unbalanced parentheses")
            return value
        if tok in ("-", "+") and self.allow_unary:
            value = self.factor(depth + 1)
            return -value if tok == "-" else value
        if tok[0].isdigit() or tok[0] == ".":
            number = Fraction(tok)
            self.numbers.append(number)
            return number
        raise ArithError(f"unexpected {tok!r}")


def evaluate(text: str, allow_unary: bool = True) -> Parsed:
    """Evaluate ``text`` exactly.

    Args:
        text: e.g. ``"(25 - 5) * 4 / 2"``.
        allow_unary: accept a leading ``-``/``+`` on a factor (``-3``); Countdown turns it off.

    Returns:
        the exact value and the number literals in order of appearance.

    Raises:
        ArithError: anything but numbers, ``+ - * / ( )`` and spaces; malformed; division by zero; too long.

    Example:
        >>> evaluate("(6 + 2) / 4").value
        Fraction(2, 1)
    """
    if len(text) > MAX_CHARS:
        raise ArithError(f"longer than {MAX_CHARS} characters")
    tokens = _tokenize(text)
    if not tokens:
        raise ArithError("empty expression")
    parser = _Parser(tokens, allow_unary)
    value = parser.expr(0)
    if parser.peek() is not None:
        raise ArithError(f"unexpected {parser.peek()!r} after the expression")
    return Parsed(value, parser.numbers)
