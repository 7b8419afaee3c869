"""What the reward reads is what a reader sees: one normalisation of a completion's text before any answer is
looked for (Unicode forms, superscripts and vulgar fractions, zero-width and control characters, look-alike tags).
It imports only the standard library.
"""

from __future__ import annotations

import re
import unicodedata

_SUPER = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁽⁾ⁿⁱ", "0123456789+-()ni"))
_SUB = dict(zip("₀₁₂₃₄₅₆₇₈₉₊₋₍₎", "0123456789+-()"))
_SUPER_RUN = re.compile("[" + "".join(_SUPER) + "]+")
_SUB_RUN = re.compile("[" + "".join(_SUB) + "]+")
_VULGAR = re.compile(r"(?:(\d)\s*)?([\u00bc-\u00be\u2150-\u215e\u2189])")
# a tag in any case and in look-alike brackets (NFKC already folded fullwidth and small forms to < and >)
# Letters that look like those of "answer" and "think" (Cyrillic, Greek): "<аnswer>" is a tag to a reader
_CONFUSABLE = {"a": "аα", "e": "еε", "s": "ѕ", "w": "ԝѡ", "r": "г", "t": "т", "h": "һ", "i": "іι", "k": "кκ", "n": "ո"}


def _spelled(word: str) -> str:
    return "".join(f"[{c}{_CONFUSABLE.get(c, '')}{_CONFUSABLE.get(c, '').upper()}]" for c in word)


_OPEN_LIKE, _CLOSE_LIKE = "[<\u2039\u2329\u27e8\u3008\u00ab\u227a]", "[>\u203a\u232a\u27e9\u3009\u00bb\u227b]"
# a tag in any case, look-alike letters and look-alike brackets (NFKC already folded fullwidth and small forms)
_TAG_LIKE = re.compile(rf"{_OPEN_LIKE}\s*(/?)\s*({_spelled('answer')}|{_spelled('think')})\s*{_CLOSE_LIKE}",
                       re.IGNORECASE)
# the same, but only when not spelled exactly "<answer>", "</think>", ...
_TAG_ODD = re.compile(rf"{_OPEN_LIKE}(?!(?-i:/?(?:answer|think)>))\s*/?\s*(?:{_spelled('answer')}|{_spelled('think')})"
                      rf"\s*{_CLOSE_LIKE}", re.IGNORECASE)
_TAG_ODD_ASCII = re.compile(r"<(?!/?(?:answer|think)>)\s*/?\s*(?i:answer|think)\s*>")
_ASCII_CONTROL_BYTES = bytes([*range(9), 11, 12, *range(14, 32), 127])
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_KEEP_CONTROL = frozenset("\n\t\r")


def _unicode_char(ch: str) -> str:
    """One non-ASCII character as a reader sees it: invisible ones go, any decimal digit becomes ASCII."""
    cat = unicodedata.category(ch)  # Cc: ASCII and C1 controls, Cf: format characters (zero-width, bidi)
    if cat in ("Cf", "Cc", "Co", "Cs", "Cn") and ch not in _KEEP_CONTROL:
        return ""  # zero-width joiners and spaces, bidi marks, soft hyphens: a number must not hide a digit
    if cat == "Nd":
        return str(unicodedata.digit(ch))
    return ch


class _ReaderTable(dict):
    """``str.translate`` table, filled on first sight of each character (C-speed on the common text)."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        self[code] = out = _unicode_char(ch)
        return out


_READER = _ReaderTable()
_SPECIAL = re.compile("[" + "".join(_SUPER) + "".join(_SUB) + "\u00bc-\u00be\u2150-\u215e\u2189]")


def _vulgar(m: re.Match) -> str:
    num, _, den = unicodedata.normalize("NFKC", m.group(2)).partition("\u2044")
    return f"{m.group(1)} {num}/{den or 1}" if m.group(1) else f"{num}/{den or 1}"


def _tag(m: re.Match) -> str:
    return f"<{m.group(1)}{'answer' if len(m.group(2)) == 6 else 'think'}>"


def normalize_text(text: str) -> str:
    """A completion as a reader sees it: NFKC (fullwidth forms, mathematical digits), superscripts as ``^{..}`` and
    subscripts as ``_{..}`` (``3²`` is ``3^{2}``, not 32), vulgar fractions as ``a/b`` (``3½`` is the mixed number
    ``3 1/2``), every decimal digit as ASCII, zero-width and control characters removed, and answer/think tags in
    any case or look-alike bracket spelled ``<answer>``, so a second block in another spelling is a second answer.

    Example:
        >>> normalize_text("<Answer>３²</ANSWER>")
        '<answer>3^{2}</answer>'
    """
    if not text.isascii():  # the common case skips every Unicode step
        if _SPECIAL.search(text):
            text = _SUPER_RUN.sub(lambda m: "^{" + "".join(_SUPER[c] for c in m.group(0)) + "}", text)
            text = _SUB_RUN.sub(lambda m: "_{" + "".join(_SUB[c] for c in m.group(0)) + "}", text)
            text = _VULGAR.sub(_vulgar, text)
        text = text.translate(_READER)
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
        text = text.replace("\u2044", "/").replace("\u2215", "/")
        if _TAG_ODD.search(text):
            text = _TAG_LIKE.sub(_tag, text)
        return text
    # ASCII, every completion: bytes.translate and a literal-prefix regex are several times faster than a scan
    # with a character class (this path must not slow down the GSM8K-style in-process path)
    if len(text.encode().translate(None, _ASCII_CONTROL_BYTES)) != len(text):
        text = _ASCII_CONTROL.sub("", text)
    if _TAG_ODD_ASCII.search(text):
        text = _TAG_LIKE.sub(_tag, text)
    return text
