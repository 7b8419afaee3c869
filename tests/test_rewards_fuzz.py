"""A seeded mutation fuzzer for the ``accuracy`` reward, so the next family of reward hacks is found by the suite.

From a few hundred generated golds (GSM8K-style integers, decimals, fractions, radicals, tuples, intervals,
expressions, ``\\pm`` pairs, text answers), every *wrong* template writes a completion that must score 0 (a hedge,
an extra line, a look-alike second block, a zero-width digit, a retraction after the answer, rounding inside a
container, a sign or order swap, ...) and every *right* template writes an equivalent form that must score 1.
Templates that do not apply to a gold's kind return ``None``. Everything is judged in one batch, as a training step
would; the CAS verdicts run in the worker pool, and the test is timed (it must stay well under a minute).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from fractions import Fraction

from rewards.accuracy import judge

SEED = 20261204
ZW = "\u200b"
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")


@dataclass(frozen=True)
class G:
    """A generated gold: ``gold`` as a dataset holds it, ``ans`` the model's plain way to write it, ``wrong`` a
    different answer of the same kind, ``kind``, and ``value`` (exact, for scalars)."""

    gold: str
    ans: str
    wrong: str
    kind: str
    value: Fraction | None = None


def _dec(x: Fraction) -> str:
    """A terminating fraction as a decimal string."""
    s = f"{float(x):.10f}".rstrip("0").rstrip(".")
    assert Fraction(s) == x, (s, x)
    return s


def make_golds(rng: random.Random) -> list[G]:
    """About 300 golds of nine kinds (seeded)."""
    out: list[G] = []
    for _ in range(110):  # GSM8K-style integers, small ones too (number words, squares)
        n = rng.choice([rng.randint(0, 20), rng.randint(21, 999), rng.randint(1000, 99999)])
        out.append(G(str(n), str(n), str(n + rng.choice([1, 2, 10, -1]) if n > 10 else n + 1), "int", Fraction(n)))
    for _ in range(35):
        v = Fraction(rng.randint(1, 9999), rng.choice([4, 8, 20, 100]))
        if v.denominator == 1:
            continue
        out.append(G(_dec(v), _dec(v), _dec(v + Fraction(1, 100)), "decimal", v))
    for _ in range(40):
        b = rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 16, 25])
        a = rng.randint(1, 3 * b)
        v = Fraction(a, b)
        if v.denominator == 1:
            continue
        text = f"\\frac{{{v.numerator}}}{{{v.denominator}}}"
        out.append(G(text, text, f"\\frac{{{v.numerator + 1}}}{{{v.denominator}}}", "frac", v))
    for _ in range(25):
        a, b = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7, 10, 11, 13])
        out.append(G(f"{a}\\sqrt{{{b}}}", f"{a}\\sqrt{{{b}}}", f"{a + 1}\\sqrt{{{b}}}", "radical"))
    for _ in range(25):
        a, b = rng.randint(-9, 9), rng.randint(1, 9)
        if rng.random() < 0.4:  # a tiny decimal element: rounding inside the tuple must not pass
            t = f"({a}, 0.000000{b})"
            out.append(G(t, t, f"({a}, 0.000000{b + 1})", "tuple"))
        else:
            out.append(G(f"({a}, {b + 10})", f"({a}, {b + 10})", f"({a}, {b + 11})", "tuple"))
    for _ in range(20):
        a, b = rng.randint(-9, 5), rng.randint(6, 20)
        out.append(G(f"[{a}, {b})", f"[{a}, {b})", f"[{a}, {b + 1})", "interval"))
    for _ in range(15):
        a, b = rng.randint(2, 9), rng.randint(1, 9)
        out.append(G(f"{a}x + {b}", f"{a}x + {b}", f"{a}x - {b}", "expr"))
    for _ in range(10):
        a, b = rng.randint(1, 9), rng.choice([2, 3, 5, 7, 19])
        out.append(G(f"{a} \\pm \\sqrt{{{b}}}", f"{a} \\pm \\sqrt{{{b}}}", f"{a} \\pm \\sqrt{{{b + 1}}}", "pm"))
    pairs = [("north", "south"), ("east", "west"), ("even", "odd"), ("Evelyn", "Navin"), ("ellipse", "circle"),
             ("parabola", "hyperbola"), ("yes", "maybe"), ("Tuesday", "Monday")]
    for word, other in pairs:
        out.append(G(f"\\text{{{word}}}", word, other, "text"))
    return out


def r1(answer: str, after: str = "") -> str:
    return f"<think>Let me work it out step by step.</think>\n<answer>{answer}</answer>{after}"


NUMERIC = ("int", "decimal", "frac")
SCALAR = ("int", "decimal", "frac", "radical")

# --- wrong templates: each must score 0 --------------------------------------------------------------------------
WRONG = {
    "hedge about": lambda g, r: r1(f"about {g.ans}"),
    "hedge approximately": lambda g, r: r1(f"approximately {g.ans}") if g.kind != "text" else None,
    "hedge approx symbol": lambda g, r: r1(f"\\approx {g.ans}") if g.kind in SCALAR else None,
    "hedge tilde": lambda g, r: r1(f"~{g.ans}") if g.kind in ("int", "decimal") else None,
    "hedge at least": lambda g, r: r1(f"at least {g.ans}"),
    "hedge at most text": lambda g, r: r1(f"{g.ans} \\text{{ at most}}"),
    "hedge not": lambda g, r: r1(f"{g.ans} (not {g.wrong})"),
    "hedge maybe": lambda g, r: r1(f"{r.choice(['maybe', 'probably', 'perhaps', 'roughly'])} {g.ans}"),
    "hedge between": lambda g, r: r1(f"between {g.wrong} and {g.ans}") if g.kind in SCALAR else None,
    "hedge more than": lambda g, r: r1(f"more than {g.ans}") if g.kind in NUMERIC else None,
    "hedge other language": lambda g, r: r1(r.choice([f"etwa {g.ans}", f"environ {g.ans}", f"{g.wrong} oder {g.ans}",
                                                      f"{g.wrong} ou {g.ans}", f"около {g.ans}"])),
    "or": lambda g, r: r1(f"{g.wrong} or {g.ans}"),
    "or inside text": lambda g, r: r1(f"{g.ans} \\text{{ (or {g.wrong})}}"),
    "a range with to": lambda g, r: r1(f"{g.wrong} to {g.ans}") if g.kind in NUMERIC else None,
    "two lines": lambda g, r: r1(f"{g.wrong}\n{g.ans}"),
    "latex line break": lambda g, r: r1(f"{g.wrong} \\\\ {g.ans}"),
    "second block, other case": lambda g, r: f"<think>w</think><Answer>{g.wrong}</Answer>\n<answer>{g.ans}</answer>",
    "second block, upper case after": lambda g, r: r1(g.ans) + f"\n<ANSWER>{g.wrong}</ANSWER>",
    "second block, fullwidth": lambda g, r: f"<think>w</think>＜answer＞{g.wrong}＜/answer＞<answer>{g.ans}</answer>",
    "second block, look-alike brackets": lambda g, r: r1(g.ans) + f" \u2039answer\u203a{g.wrong}\u2039/answer\u203a",
    "zero-width inside a number": lambda g, r: r1(f"{g.ans}{ZW}{r.randint(1, 9)}") if g.kind == "int" else None,
    "unicode digits of another number": lambda g, r: (r1(g.wrong.translate(r.choice([FULLWIDTH, ARABIC_INDIC])))
                                                      if g.kind == "int" else None),
    "unicode superscript": lambda g, r: r1(f"{g.ans}²") if g.kind == "int" and g.value not in (0, 1) else None,
    "sqrt with parentheses": lambda g, r: r1(f"{g.ans}\\sqrt({r.choice([2, 3, 5])})") if g.kind == "int" else None,
    "repeating decimal tail": lambda g, r: r1(f"{g.ans}.\\overline{{{r.randint(1, 9)}}}") if g.kind == "int" else None,
    "mixed number": lambda g, r: r1(f"{g.ans} 1/2") if g.kind == "int" else None,
    "two different boxes": lambda g, r: r1(f"\\boxed{{{g.ans}}} \\boxed{{{g.wrong}}}"),
    "retraction in words": lambda g, r: r1(g.ans, f" No wait, it is {_other_word(g, r)}.") if g.kind == "int" else None,
    "retraction without a number": lambda g, r: r1(g.ans, r.choice([" Wait, that is wrong.", " Scratch that.",
                                                                     " Hmm, no: I made a mistake."])),
    "option letter after": lambda g, r: r1(g.ans, f" ... so the answer is ({r.choice('ABCDE')})."),
    "another number after": lambda g, r: r1(g.ans, f" Actually, it is {g.wrong}."),
    "rounding": lambda g, r: r1(_dec(g.value + Fraction(1, 10**9))) if g.kind in ("int", "decimal") else None,
    "rounding inside a tuple": lambda g, r: r1(g.wrong) if g.kind == "tuple" and "0.000000" in g.gold else None,
    "sign swap": lambda g, r: r1(f"-{g.ans}") if g.kind in SCALAR and g.value != 0 else None,
    "sign swap inside": lambda g, r: r1(g.ans.replace("+", "-")) if g.kind == "expr" else None,
    "order swap": lambda g, r: r1(_swap(g)) if g.kind in ("tuple", "interval") else None,
    "percent on a fraction": lambda g, r: r1(f"{float(g.value):g}\\%") if g.kind == "frac" else None,
    "prose with another number": lambda g, r: r1(f"{g.ans} apples and {g.wrong} pears") if g.kind == "int" else None,
    "question mark": lambda g, r: r1(f"{g.ans}?"),
    "hedge around a box": lambda g, r: r1(r.choice([f"about \\boxed{{{g.ans}}}", f"\\boxed{{{g.ans}}} or so",
                                                    f"{g.wrong} or \\boxed{{{g.ans}}}"])),
    "look-alike letters in a second tag": lambda g, r: f"<\u0430nswer>{g.wrong}</\u0430nswer>{r1(g.ans)}",
    "two math spans": lambda g, r: r1(f"${g.wrong}$ ${g.ans}$"),
    "two numbers side by side": lambda g, r: r1(f"{g.wrong} {g.ans}") if g.kind in ("int", "decimal") else None,
    "off by one": lambda g, r: r1(g.wrong),
}


def _other_word(g: G, r: random.Random) -> str:
    """A number word for a value other than the gold's."""
    return r.choice([w for i, w in enumerate(WORDS) if i != g.value])


def _swap(g: G) -> str | None:
    inner = g.ans[1:-1].split(", ")
    if g.kind == "tuple":
        return f"({inner[1]}, {inner[0]})"
    return f"({inner[0]}, {inner[1]}]"  # [a, b) -> (a, b]


def _square_root(n: Fraction) -> int | None:
    k = round(float(n) ** 0.5)
    return k if k * k == n and k > 1 else None


# --- right templates: each must score 1 ----------------------------------------------------------------------------
RIGHT = {
    "plain": lambda g, r: r1(g.ans),
    "boxed in the block": lambda g, r: r1(f"\\boxed{{{g.ans}}}"),
    "lead-in": lambda g, r: r1(f"The answer is {g.ans}"),
    "math delimiters": lambda g, r: r1(r.choice([f"${g.ans}$", f"\\({g.ans}\\)", f"\\[{g.ans}\\]"])),
    "markdown bold": lambda g, r: r1(f"**{g.ans}**"),
    "final period": lambda g, r: r1(f"{g.ans}."),
    "restated after": lambda g, r: r1(g.ans, f" So the answer is {g.ans}."),
    "one block in another case": lambda g, r: f"<think>w</think><Answer>{g.ans}</ANSWER>",
    "short unit": lambda g, r: r1(f"{g.ans} {r.choice(['cm', 'kg', 'm', 's', 'h'])}") if g.kind in NUMERIC else None,
    "unit in text with a power": lambda g, r: r1(f"{g.ans} \\text{{ cm}}^2") if g.kind in NUMERIC else None,
    "currency": lambda g, r: r1(r.choice([f"\\${g.ans}", f"\\${g.ans} per week", f"{g.ans} dollars"]))
    if g.kind in ("int", "decimal") else None,
    "thousands separator": lambda g, r: r1(f"{int(g.value):,}") if g.kind == "int" and g.value >= 1000 else None,
    "fullwidth digits": lambda g, r: r1(g.ans.translate(FULLWIDTH)) if g.kind == "int" else None,
    "trailing zero": lambda g, r: r1(g.ans + (".0" if g.kind == "int" else "0"))
    if g.kind in ("int", "decimal") else None,
    "unicode superscript of a square": lambda g, r: r1(f"{_square_root(g.value)}²")
    if g.kind == "int" and _square_root(g.value) else None,
    "decimal of a fraction": lambda g, r: r1(_dec(g.value)) if g.kind == "frac" and _terminates(g.value) else None,
    "repeating decimal": lambda g, r: r1(_repeating(g.value)) if g.kind == "frac" and _repeating(g.value) else None,
    "mixed number": lambda g, r: r1(_mixed(g.value)) if g.kind == "frac" and g.value > 1 else None,
    "equal boxes": lambda g, r: r1(f"\\boxed{{{g.ans}}} = \\boxed{{{_dec(g.value)}}}")
    if g.kind == "frac" and _terminates(g.value) else None,
    "variable equals": lambda g, r: r1(f"x = {g.ans}") if g.kind in SCALAR else None,
    "text case": lambda g, r: r1(r.choice([g.ans.upper(), g.ans.capitalize(), f"\\text{{{g.ans.title()}}}"]))
    if g.kind == "text" else None,
    "plus-minus expanded": lambda g, r: r1(_expand_pm(g.ans)) if g.kind == "pm" else None,
    "number word": lambda g, r: r1(WORDS[int(g.value)]) if g.kind == "int" and g.value <= 20 else None,
    "markdown lead-in": lambda g, r: r1(f"**Answer:** {g.ans}"),
}


def _terminates(v: Fraction) -> bool:
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _repeating(v: Fraction) -> str | None:
    if v.denominator not in (3, 9, 11) or v >= 1:
        return None
    digits = {3: 1, 9: 1, 11: 2}[v.denominator]
    period = str(v.numerator * (10**digits - 1) // v.denominator).zfill(digits)
    return f"0.\\overline{{{period}}}"


def _mixed(v: Fraction) -> str:
    whole = v.numerator // v.denominator
    return f"{whole} {v.numerator - whole * v.denominator}/{v.denominator}"


def _expand_pm(ans: str) -> str:
    a, b = ans.split(" \\pm ")
    return f"{a} - {b}, {a} + {b}"


def generate(seed: int = SEED) -> tuple[list[G], list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """The golds and the (template, completion, gold) cases: wrong ones and right ones."""
    rng = random.Random(seed)
    golds = make_golds(rng)
    wrong, right = [], []
    for g in golds:
        for name, make in WRONG.items():
            c = make(g, rng)
            if c is not None:
                wrong.append((name, c, g.gold))
        for name, make in RIGHT.items():
            c = make(g, rng)
            if c is not None:
                right.append((name, c, g.gold))
    return golds, wrong, right


def test_mutation_fuzzer_wrong_score_zero_right_score_one():
    t0 = time.perf_counter()
    golds, wrong, right = generate()
    cases = wrong + right
    verdicts = judge([c for _, c, _ in cases], [g for _, _, g in cases], deadline_s=10.0)
    seconds = time.perf_counter() - t0
    expected = [0.0] * len(wrong) + [1.0] * len(right)
    failures = [(name, gold, c, v.reason.value) for (name, c, gold), v, want in zip(cases, verdicts, expected)
                if v.score != want]
    used_wrong, used_right = {n for n, _, _ in wrong}, {n for n, _, _ in right}
    print(f"fuzzer: {len(golds)} golds, {len(used_wrong)} wrong templates, {len(used_right)} right templates, "
          f"{len(wrong)} wrong + {len(right)} right = {len(cases)} cases, {seconds:.1f} s")
    assert len(golds) >= 250 and len(used_wrong) >= 25 and len(used_right) >= 15
    assert set(WRONG) == used_wrong and set(RIGHT) == used_right  # every template applies to some gold
    assert not failures, f"{len(failures)} of {len(cases)} failed, e.g. {failures[:8]}"
    assert seconds < 60


def test_fuzzer_is_seeded():
    assert generate(SEED)[1:] == generate(SEED)[1:]
    assert generate(SEED)[1] != generate(SEED + 1)[1]
