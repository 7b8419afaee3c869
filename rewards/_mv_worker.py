"""One worker process of the math-verify pool (see ``rewards/sandbox.py``); run as a script, never imported.

Protocol: the parent writes one JSON object per line on stdin and reads one per line on stdout.

- ``{"op": "verify", "gold": str, "preds": [str, ...], "soft_s": float}`` -> ``{"ok": bool, "status": str}``:
  ``ok`` is True when every prediction verifies against the gold (``verify(gold, pred)``, gold FIRST).
- ``{"op": "gold", "gold": str, "soft_s": float}`` -> ``{"ok": bool, "status": str}``: does the gold parse?

- ``{"op": "clear"}``: benchmark hook; forgets every parsed gold and sympy's cache.
- ``{"op": "hang", "seconds": float}``: test hook; sleeps with the timer signal blocked, standing for C code
  that ignores signals, which only the parent's hard deadline stops.

``status`` is ``ok``, ``bad_gold`` (the gold parses to nothing), ``timeout`` (the soft timer fired) or
``error`` (parsing raised). The worker runs in its own process, in its main thread, so a timer signal can
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


def main() -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then closes our stdin
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries go to stderr, never into the protocol
    mem_mb = int(os.environ.get("GRPO_ZERO_VERIFY_MEM_MB", "0"))
    if mem_mb > 0:  # a runaway bigint or matrix raises MemoryError here instead of swapping the host
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout disabled" notices: we time out ourselves
    from math_verify import parse, verify

    # math-verify's own timeouts use signal.alarm, which would cancel our timer: switch them off.
    @lru_cache(maxsize=4096)
    def parse_gold(gold: str) -> list:
        found = parse("$" + gold + "$", parsing_timeout=None) or parse(gold, parsing_timeout=None)
        # Only the raw-string fallback matched: nothing was understood, so the gold is unusable.
        return found if any(not isinstance(x, str) for x in found) else []

    def parse_pred(pred: str) -> list:
        if _WORDS.search(_TEXT_CMD.sub(" ", pred)):
            found = parse(pred, parsing_timeout=None)
            if found:
                return found
        return parse("$" + pred + "$", parsing_timeout=None)

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
            parsed = parse_pred(pred)
            if not parsed or not verify(gold, parsed, timeout_seconds=None):
                return {"ok": False, "status": "ok"}
        return {"ok": True, "status": "ok"}

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


if __name__ == "__main__":
    main()
