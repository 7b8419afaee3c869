"""One worker process of the math-verify pool (see ``rewards/sandbox.py``); run as a script, never imported.

Protocol: the parent writes one JSON object per line on stdin and reads one per line on stdout.

- ``{"op": "verify", "gold": str, "preds": [str, ...], "soft_s": float}`` -> ``{"ok": bool, "status": str}``:
  ``ok`` is True when every prediction verifies against the gold (``verify(gold, pred)``, gold FIRST).
- ``{"op": "gold", "gold": str, "soft_s": float}`` -> ``{"ok": bool, "status": str}``: does the gold parse?

- ``{"op": "clear"}``: benchmark hook; forgets every parsed gold and sympy's cache.
- ``{"op": "hang", "seconds": float}``: test hook; sleeps with the timer signal blocked, standing for C code
  that ignores signals, which only the parent's hard deadline stops.

``status`` is ``ok``, ``bad_gold`` (the gold parses to nothing), ``unparsable`` (a prediction parses to
nothing), ``partial`` (it parses only in part), ``timeout`` (the soft timer fired) or ``error`` (parsing
raised). A math-verify
"equal" between two numbers must also hold exactly (``_exact_differs``); radical forms are retried with
positive symbols (``_radicals_equal``). The worker runs in its own process, in its main thread, so a timer signal can
interrupt sympy between bytecodes (the soft timeout); C-level work such as a huge integer power cannot be
interrupted by any signal, and for that the parent kills the whole process at the hard deadline.

This file imports only the standard library and math-verify, so a worker starts in about half a second.
"""

import json
import logging
import os
import re
import resource
import signal
import sys
import time
from functools import lru_cache


class SoftTimeout(BaseException):
    """Raised by the timer signal; a BaseException so math-verify's ``except Exception`` cannot swallow it."""


def _on_alarm(signum, frame):
    raise SoftTimeout()


# Three or more plain letters in a row outside a LaTeX command or \text{}: the answer has words
# ("18 dollars"), which LaTeX parsing would read as a product of variables. Then parse it as text.
_WORDS = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_TEXT_CMD = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}|\\[A-Za-z]+\s*\{[A-Za-z*]*\}")  # \begin{pmatrix}


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent goes, even while stuck in C code that never reads stdin again."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the worker still exits at stdin EOF once its current job ends
    if os.getppid() != int(os.environ.get("GRPO_ZERO_VERIFY_PARENT", os.getppid())):
        sys.exit(0)  # the parent died before prctl took effect


def _flat(s: str) -> str:
    return re.sub(r"\s+|\$|\\[,;:! ]", "", s)


def _partial(pred: str, parsed: list) -> bool:
    """math-verify parsed only part of the prediction (it gave up mid-way and kept the prefix it understood):
    ``1 + \\frac{1}{\\mathrm{e}}`` becomes ``1``. A partial parse must never become a 1."""
    matched = next((x for x in parsed if isinstance(x, str)), None)
    if matched is None:
        return False
    if matched.count("{") != matched.count("}"):
        return True
    if "\\\\" in re.sub(r"\\begin\{(\w+)\}.*?\\end\{\1\}", "", matched, flags=re.DOTALL) and "\\\\" not in pred:
        return True  # math-verify rewrote the answer into lines (``2\\sqrt(3)`` -> ``2\\\\sqrt{3}``) and kept the first
    m, p = _flat(_TEXT_CMD.sub("", matched)), _flat(_TEXT_CMD.sub("", pred))  # text and units are meant to go
    return len(m) < len(p) and p.startswith(m)


def _sympy_expr(parsed: list):
    import sympy

    return next((x for x in parsed if isinstance(x, sympy.Expr)), None)


def _exact(x):
    """``x`` with every float replaced by the rational its decimal digits denote (0.1 -> 1/10)."""
    import sympy

    return x.replace(lambda e: isinstance(e, sympy.Float), lambda e: sympy.Rational(str(e)))


def _exact_differs(gold: list, parsed: list) -> bool:
    """Both sides are numbers and differ exactly, though math-verify's rounded comparison called them equal
    (``1/2^{98}`` vs ``1/2^{99}``, ``1/2004!`` vs ``1/2006!``, ``0.333333`` vs ``1/3``)."""
    g, p = _sympy_expr(gold), _sympy_expr(parsed)
    if g is None or p is None or g.free_symbols or p.free_symbols or not (g.is_number and p.is_number):
        return False
    g, p = _exact(g), _exact(p)
    d = g - p
    if d == 0:
        return False
    try:
        dv, scale = abs(d.evalf(60)), max(abs(g.evalf(60)), abs(p.evalf(60)))
        return not bool(dv <= scale * 10**-40)
    except (TypeError, ValueError, ArithmeticError):
        return False  # cannot evaluate (e.g. complex infinities): keep math-verify's verdict


def _leaves(x) -> tuple[list, bool] | None:
    """The elements of a tuple, interval, set or matrix, and whether their order is free; None otherwise."""
    import sympy

    if isinstance(x, (sympy.Tuple, tuple, list, sympy.MatrixBase)):
        return list(x), False
    if isinstance(x, sympy.Interval):
        return [x.start, x.end, sympy.Integer(1 if x.left_open else 0), sympy.Integer(1 if x.right_open else 0)], False
    if isinstance(x, sympy.FiniteSet):
        return list(x.args), True
    return None


def _same_exact(a, b) -> bool:
    """``a`` and ``b`` (numbers or containers of them) are equal exactly; True when they cannot be compared so
    (symbols), which leaves math-verify's verdict standing."""
    la, lb = _leaves(a), _leaves(b)
    if la is None or lb is None:
        return la is None and lb is None and not _exact_differs([a], [b])
    (xs, free), (ys, _) = la, lb
    if len(xs) != len(ys):
        return True  # a shape math-verify judged; not a rounding question
    if not free:
        return all(_same_exact(x, y) for x, y in zip(xs, ys))
    rest = list(ys)
    for x in xs:  # a set: every element must meet an exactly equal partner
        match = next((i for i, y in enumerate(rest) if _same_exact(x, y)), None)
        if match is None:
            return False
        rest.pop(match)
    return True


def _container_differs(gold: list, parsed: list) -> bool:
    """Two containers math-verify called equal differ exactly in some numeric element (its comparison rounds
    inside tuples, intervals, sets and matrices: ``(0.0000003, 1)`` vs ``(0.0000004, 1)``)."""
    first = lambda xs: next((x for x in xs if not isinstance(x, str)), None)
    g, p = first(gold), first(parsed)
    if _leaves(g) is None or _leaves(p) is None:
        return False
    return not _same_exact(g, p)


def _radicals_equal(gold: list, parsed: list) -> bool:
    """Radical forms equal for positive symbols (``\\sqrt{\\frac{1}{n}}`` = ``\\frac{1}{\\sqrt{n}}``), which
    math-verify's general-complex comparison misses. Only when a radical is involved."""
    import sympy

    g, p = _sympy_expr(gold), _sympy_expr(parsed)
    if g is None or p is None or not (g.free_symbols or p.free_symbols):
        return False
    has_root = lambda e: any(isinstance(a, sympy.Pow) and not a.exp.is_integer for a in sympy.preorder_traversal(e))
    if not (has_root(g) or has_root(p)):
        return False
    positive = {s: sympy.Symbol(s.name, positive=True) for s in g.free_symbols | p.free_symbols}
    return sympy.simplify(g.xreplace(positive) - p.xreplace(positive)) == 0


def main() -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then closes our stdin
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries go to stderr, never into the protocol
    mem_mb = int(os.environ.get("GRPO_ZERO_VERIFY_MEM_MB", "0"))
    if mem_mb > 0:  # a runaway bigint or matrix raises MemoryError here instead of swapping the host
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
    handle = _call_handler() if os.environ.get("GRPO_ZERO_WORKER_KIND") == "call" else _verify_handler()
    signal.signal(signal.SIGALRM, _on_alarm)
    handle({"op": "verify", "gold": "1", "preds": ["1"]})  # warm the parsers before saying ready
    proto.write('{"ready": true}\n')
    for line in sys.stdin:
        req = json.loads(line)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, float(req.get("soft_s", 1.0))))
        try:
            res = handle(req)
        except SoftTimeout:
            res = {"ok": False, "status": "timeout"}
        except BaseException as e:  # noqa: BLE001 - MemoryError, RecursionError, sympy internals: all score 0
            res = {"ok": False, "status": "error", "error": f"{type(e).__name__}: {str(e)[:200]}"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        proto.write(json.dumps(res) + "\n")


def _call_handler():
    """``{"op": "call", "fn": "module:qualname", "sys_path": [...], "data": b64(pickle((completions, columns,
    kwargs)))}`` -> ``{"ok": true, "status": "ok", "data": b64(pickle((values, counters, notes, metrics)))}``: a reward
    function run here so that the parent can kill it at its deadline (``rewards.combine``'s ``deadline_s``)."""
    import base64
    import importlib
    import pickle

    functions: dict = {}

    def handle(req: dict) -> dict:
        if req["op"] != "call":
            return {"ok": True, "status": "ok"}  # the warm-up request
        for p in req.get("sys_path", []):
            if p not in sys.path:
                sys.path.append(p)
        if req["fn"] not in functions:
            module_name, _, qualname = req["fn"].partition(":")
            obj = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            functions[req["fn"]] = obj
        completions, columns, kwargs = pickle.loads(base64.b64decode(req["data"]))
        try:
            from rewards.calling import invoke
            from rewards.registry import Sink
        except ImportError:  # the project is not importable here: run without counters
            values, counters, notes = functions[req["fn"]](completions=completions, **columns, **kwargs), {}, None
            metrics = {}
        else:  # TRL's convention (log_extra, log_metric, async) as in-process
            sink = Sink()
            values = invoke(functions[req["fn"]], completions, columns, kwargs, sink)
            counters, notes, metrics = sink.counters, sink.notes, sink.metrics
        payload = base64.b64encode(pickle.dumps((list(values), counters, notes, metrics))).decode()
        return {"ok": True, "status": "ok", "data": payload}

    return handle


def _verify_handler():
    """The math-verify requests (``verify``, ``gold``, ``clear``, ``hang``)."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout disabled" notices: we time out ourselves
    from math_verify import parse, verify

    # math-verify's own timeouts use signal.alarm, which would cancel our timer: switch them off.
    @lru_cache(maxsize=4096)
    def parse_gold(gold: str) -> list:
        found = parse("$" + gold + "$", parsing_timeout=None) or parse(gold, parsing_timeout=None)
        # Only the raw-string fallback matched: nothing was understood, so the gold is unusable.
        return found if any(not isinstance(x, str) for x in found) else []

    def parse_pred(pred: str) -> tuple[list, bool]:
        """The parsed prediction and whether it was read as LaTeX (not as text with words around a value)."""
        if _WORDS.search(_TEXT_CMD.sub(" ", pred)):
            found = parse(pred, parsing_timeout=None)
            if found:
                return found, False
        return parse("$" + pred + "$", parsing_timeout=None), True

    def handle(req: dict) -> dict:
        if req["op"] == "hang":  # test hook: C code that ignores signals, which only the hard deadline stops
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(float(req.get("seconds", 3600)))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
            return {"ok": False, "status": "ok"}
        if req["op"] == "clear":  # benchmark hook: forget every parsed expression (ours and sympy's caches)
            from sympy.core.cache import clear_cache

            parse_gold.cache_clear()
            clear_cache()
            return {"ok": True, "status": "ok"}
        gold = parse_gold(req["gold"])
        if not gold:
            return {"ok": False, "status": "bad_gold"}
        if req["op"] == "gold":
            return {"ok": True, "status": "ok"}
        for pred in req["preds"]:
            parsed, as_latex = parse_pred(pred)
            if not parsed:
                return {"ok": False, "status": "unparsable"}
            if as_latex and _partial(pred, parsed):
                return {"ok": False, "status": "partial"}
            if verify(gold, parsed, timeout_seconds=None):
                if _exact_differs(gold, parsed) or _container_differs(gold, parsed):
                    return {"ok": False, "status": "ok"}
            elif not _radicals_equal(gold, parsed):
                return {"ok": False, "status": "ok"}
        return {"ok": True, "status": "ok"}

    return handle

if __name__ == "__main__":
    main()
