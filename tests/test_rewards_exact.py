"""Unit tests for rewards.exact: exact values of plain answers, candidate counting, relations, the stall guard."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rewards.exact import count_candidates, is_pathological, plain_value, split_relation


@pytest.mark.parametrize("text, value, percent", [
    ("42", Fraction(42), False), ("1,234", Fraction(1234), False), ("1{,}234", Fraction(1234), False),
    ("\\$2.50", Fraction(5, 2), False), ("25\\%", Fraction(25), True), ("7%", Fraction(7), True),
    ("\\frac{7}{2}", Fraction(7, 2), False), ("-\\frac{1}{4}", Fraction(-1, 4), False), ("7/2", Fraction(7, 2), False),
    ("1e3", Fraction(1000), False), ("15+3", Fraction(18), False), ("0.1", Fraction(1, 10), False),
])
def test_plain_values_are_exact(text, value, percent):
    assert plain_value(text) == (value, percent)


@pytest.mark.parametrize("text", ["\\sqrt{2}", "x+1", "\\frac{1}{0}", "", "9" * 201, "(1, 2)"])
def test_anything_else_is_left_to_the_cas(text):
    assert plain_value(text) is None


@pytest.mark.parametrize("text, n", [
    ("3 or 4", 2), ("3, 4", 2), ("7 to 8", 2), ("7\n8", 2), ("7 \\\\ 8", 2), ("3; 4", 2), ("7 8", 2),
    ("8 | 9", 2), ("8 \\mid 9", 2), ("1, 2, 3", 3),
    ("(3, 4)", 1), ("1,234", 1), ("|-3|", 1), ("\\{x \\mid x > 0\\}", 1), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", 1),
    ("factor", 1), ("\\text{north}", 1),
])
def test_count_candidates(text, n):
    assert count_candidates(text) == n


@pytest.mark.parametrize("text, sides", [
    ("x = 42", ["42"]), ("41 = 42", ["41", "42"]), ("f(x) = 2x", ["2x"]), ("x \\leq 3", ["x \\leq 3"]),
    ("a != b", ["a != b"]), ("x =", None),
])
def test_split_relation_checks_every_numeric_side(text, sides):
    assert split_relation(text) == sides


@pytest.mark.parametrize("text, bad", [
    ("9^{9^{9}}", True), ("2^{10}", False), ("10^{100000}", True), ("12345!", True), ("5!", False),
    ("{" * 30 + "1" + "}" * 30, True), ("\\frac{1}{2}", False),
])
def test_pathological_answers_are_refused_unparsed(text, bad):
    assert is_pathological(text) is bad
