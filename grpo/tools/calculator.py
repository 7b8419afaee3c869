"""The ``calculator`` tool: exact arithmetic over integers, decimals and fractions, parsed with ``ast``, never ``eval``.

An expression is parsed with ``ast.parse(mode="eval")`` and walked over a whitelist of nodes (numbers, ``+ - * / //
% **``, unary ``+ -``, parentheses); anything else (a name, a call, an attribute, a string) is an error, so
``__import__('os')`` is rejected before anything runs. Numbers are :class:`fractions.Fraction`, so ``0.1 + 0.2`` is
exactly ``0.3`` and ``1/3`` stays ``1/3``. ``^`` is read as a power (the calculator convention, not Python's xor).
Size bounds keep it fast: a power's exponent and every result's size are capped, so ``9**9**9`` is an error at once,
not a hang.

Example:
    >>> calculate("3*7+2")
    '23'
    >>> calculate("1/3 + 1/6")
    '1/2'
    >>> calculate("0.1 + 0.2")
    '0.3'
"""

from __future__ import annotations

import ast
import math
from fractions import Fraction

MAX_CHARS = 500  # longer "expressions" are not calculator input
MAX_BITS = 10_000  # about 3,000 decimal digits per numerator or denominator: far beyond any answer, instant to compute
MAX_EXPONENT = 10_000
_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: lambda a, b: a % b,
}


class CalculatorError(ValueError):
    """An expression the calculator cannot or will not evaluate; the message is the tool's one-line output."""


def _check(x: Fraction) -> Fraction:
    if x.numerator.bit_length() > MAX_BITS or x.denominator.bit_length() > MAX_BITS:
        raise CalculatorError(f"result too large (over {MAX_BITS} bits)")
    return x


def _root(x: Fraction, q: int) -> Fraction:
    """The exact ``q``-th root of ``x``, or an error when it is irrational."""
    if x < 0 and q % 2 == 0:
        raise CalculatorError("even root of a negative number")
    out = []
    for n in (abs(x.numerator), x.denominator):
        r = math.isqrt(n) if q == 2 else round(n ** (1.0 / q)) if n.bit_length() < 1000 else None
        hit = next((c for c in (r, (r or 0) - 1, (r or 0) + 1) if c is not None and c >= 0 and c**q == n), None)
        if hit is None:
            raise CalculatorError("the result is irrational; the calculator gives exact results only")
        out.append(hit)
    return Fraction(out[0] * (1 if x >= 0 else -1), out[1])


def _power(base: Fraction, exp: Fraction) -> Fraction:
    if abs(exp.numerator) > MAX_EXPONENT or exp.denominator > 64:
        raise CalculatorError(f"exponent too large (the limit is {MAX_EXPONENT})")
    if base == 0 and exp < 0:
        raise CalculatorError("division by zero")
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(exp.numerator) > MAX_BITS * exp.denominator:
        raise CalculatorError(f"result too large (over {MAX_BITS} bits)")
    if exp.denominator != 1:
        base = _root(base, exp.denominator)
    return _check(base ** exp.numerator)


def _number(node: ast.Constant, source: str) -> Fraction:
    """A literal as written (``0.1`` is exactly 1/10, not the float nearest it)."""
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculatorError(f"not a number: {ast.get_source_segment(source, node) or value!r}")
    text = ast.get_source_segment(source, node) or repr(value)
    try:
        return _check(Fraction(text.replace("_", "")))
    except (ValueError, ZeroDivisionError):
        return _check(Fraction(value))


def _eval(node: ast.AST, source: str) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body, source)
    if isinstance(node, ast.Constant):
        return _number(node, source)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        x = _eval(node.operand, source)
        return -x if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, source), _eval(node.right, source)
        if isinstance(node.op, (ast.Pow, ast.BitXor)):
            return _power(a, b)
        op = _BINOPS.get(type(node.op))
        if op is not None:
            if b == 0 and not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
                raise CalculatorError("division by zero")
            return _check(op(a, b))
    what = ast.get_source_segment(source, node) or type(node).__name__
    raise CalculatorError(f"unsupported: {what[:40]!r} (numbers, + - * / // % ** and parentheses only)")


def format_number(x: Fraction) -> str:
    """An exact result as text: an integer, a terminating decimal (``0.25``), or a fraction (``7/3``)."""
    if x.denominator == 1:
        return str(x.numerator)
    d = x.denominator
    twos, fives = (d & -d).bit_length() - 1, 0
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d >> twos == 1:  # only 2s and 5s: the decimal terminates after max(twos, fives) digits
        digits = max(twos, fives)
        scaled = abs(x.numerator) * 10**digits // x.denominator
        sign = "-" if x < 0 else ""
        whole, frac = divmod(scaled, 10**digits)
        return f"{sign}{whole}.{frac:0{digits}d}".rstrip("0")
    return f"{x.numerator}/{x.denominator}"


def calculate(expression: str) -> str:
    """Evaluate ``expression`` exactly; returns the result as text.

    Args:
        expression: arithmetic over integers, decimals and fractions: ``+ - * / // % **`` (``^`` as power),
            unary minus, parentheses.

    Raises:
        CalculatorError: the expression is malformed, uses anything else, divides by zero, or its result would be
            too large or irrational; the message is one line.
    """
    text = expression.strip().replace("×", "*").replace("÷", "/").rstrip("=").strip()
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"expression too long ({len(text)} characters, the limit is {MAX_CHARS})")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise CalculatorError(f"cannot parse {text[:40]!r} ({type(e).__name__})") from None
    try:
        return format_number(_eval(tree, text))
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None
