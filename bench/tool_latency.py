"""Tool-call latency: the python sandbox's warm pool and the in-process calculator.

    python bench/tool_latency.py                 # 200 sequential calls, then batches of 16
    python bench/tool_latency.py --n 50 --workers 4

Prints, in ms: the median and 90th percentile of one ``print(1)`` call round trip on the warm pool (the parent's
``PythonSandbox.run`` to its return, fork, limits, namespaces and folder removal included), of a batch of 16 calls
spread over the workers, of one call with ``sympy`` preloaded (``import sympy``), the first call (servers start) and
one ``calculator`` call. The sandbox's isolation report comes first. State the machine's load with the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.tools import build_toolbox
from grpo.tools.sandbox import PythonSandbox


def timed(fn, n: int) -> list[float]:
    """Milliseconds of ``n`` calls of ``fn``."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return out


def show(label: str, ms: list[float]) -> None:
    q = statistics.quantiles(ms, n=10) if len(ms) > 1 else ms
    print(f"| {label} | {statistics.median(ms):.1f} | {q[-1]:.1f} | {len(ms)} |")


def main() -> None:
    """Time the calls and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sb = PythonSandbox(workers=args.workers)
    start = time.perf_counter()
    print("isolation:", sb.isolation())
    first = 1000 * (time.perf_counter() - start)
    print("| call | median ms | p90 ms | calls |\n|---|---|---|---|")
    print(f"| first call (fork servers start) | {first:.0f} | | 1 |")
    show("python `print(1)`, one call", timed(lambda: sb.run(["print(1)"]), args.n))
    show("python `print(1)` x 16, one batch", timed(lambda: sb.run(["print(1)"] * 16), max(5, args.n // 16)))
    sb.close()
    warm = PythonSandbox(workers=1, preload=("sympy",))
    warm.run(["pass"])
    code = "import sympy; print(sympy.Integer(2)**10)"
    show("python `import sympy` (preloaded)", timed(lambda: warm.run([code]), 20))
    warm.close()
    box = build_toolbox(["calculator"])
    show("calculator `3*7+2`", timed(lambda: box.run_many([("calculator", "3*7+2")]), args.n))


if __name__ == "__main__":
    main()
