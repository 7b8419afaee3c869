"""Bounded time in any context: pathological answers score 0 within the deadline; the main thread, a
thread pool and another process give the same verdicts; killed workers are replaced and none leak."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import rewards
from rewards import sandbox
from rewards.accuracy import accuracy_reward


def r1(answer: str) -> str:
    return f"<think>let me see</think><answer>{answer}</answer>"


PATHOLOGICAL = {
    "exponent tower": (r1("\\boxed{9^{9^{9^{9}}}}"), "1"),
    "plain tower": (r1("9^9^9^9"), "1"),
    "huge exponent": (r1("2^{999999999}"), "2"),
    "huge factorial": (r1("\\boxed{99999999!}"), "1"),
    "1 MB string": ("<think>" + "9" * (1 << 20) + "</think><answer>1</answer>", "1"),
    "1 MB answer": (r1("9" * (1 << 20)), "1"),
    "deep nesting": (r1("(" * 5000 + "1" + ")" * 5000), "1"),
    "deep braces": (r1("\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}"), "1"),
}
# Mixed with ordinary answers, so a batch shows pathological ones do not spoil the rest.
ORDINARY = [(r1("2\\sqrt{2}"), "\\sqrt{8}", 1.0), (r1("\\frac{\\pi}{3}"), "60^\\circ", 0.0),
            (r1("(1, 2)"), "(1,2)", 1.0), (r1("x^2 + 2x + 1"), "(x+1)^2", 1.0), (r1("18"), "18", 1.0)]


@pytest.mark.parametrize("completion,gold", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_pathological_scores_zero_fast(completion, gold):
    t = time.perf_counter()
    assert accuracy_reward([completion], answer=[gold], deadline_s=3.0) == [0.0]
    assert time.perf_counter() - t < 3.5


def _pathological_batch() -> tuple[list[str], list[str]]:
    items = list(PATHOLOGICAL.values())[:8]
    return [c for c, _ in items], [g for _, g in items]


def test_batch_of_8_pathological_under_15s_main_and_thread():
    completions, golds = _pathological_batch()
    t = time.perf_counter()
    main = accuracy_reward(completions, answer=golds)
    assert main == [0.0] * 8 and time.perf_counter() - t < 15
    with ThreadPoolExecutor(1) as ex:
        t = time.perf_counter()
        threaded = ex.submit(accuracy_reward, completions, answer=golds).result()
    assert threaded == main and time.perf_counter() - t < 15


def test_hard_deadline_kills_uninterruptible_work_and_recovers():
    """Work that ignores signals (C code) is stopped by killing the worker at the deadline; it is replaced."""
    pool = sandbox.get_pool()
    jobs = [{"op": "hang"} for _ in range(2)] + [{"op": "verify", "gold": "\\sqrt{8}", "preds": ["2\\sqrt{2}"]}]
    before = dict(pool.stats)
    t = time.perf_counter()
    results = pool.run(jobs, deadline_s=1.0)
    elapsed = time.perf_counter() - t
    assert [r.status for r in results[:2]] == ["timeout"] * 2 and not any(r.ok for r in results[:2])
    assert results[2].ok and results[2].status == "ok"
    assert pool.stats["kills"] - before["kills"] == 2 and pool.stats["respawns"] - before["respawns"] == 2
    assert elapsed < 2 * 1.0 + 6  # at most 2 deadlines in a row, plus a restart on a loaded machine
    assert pool.run([{"op": "verify", "gold": "2", "preds": ["\\sqrt{4}"]}], deadline_s=5.0)[0].ok


def test_soft_timeout_inside_sympy_is_a_timeout():
    """Slow but interruptible CAS work ends at the worker's own timer: status timeout, no restart."""
    pool = sandbox.get_pool()
    before = dict(pool.stats)
    res = pool.run([{"op": "verify", "gold": "1", "preds": ["\\binom{10^{9}}{5 \\cdot 10^{8}}"]}], deadline_s=1.0)
    assert res[0].status == "timeout" and not res[0].ok
    assert pool.stats["timeouts"] - before["timeouts"] == 1


def test_timeouts_are_counted_in_metrics():
    pool = sandbox.get_pool()
    # not caught by the stall guard: it reaches a worker, and the deadline ends it
    with rewards.collect_metrics() as m:
        got = accuracy_reward([r1("\\binom{10^{9}}{5 \\cdot 10^{8}}")], answer=["1"], deadline_s=1.0)
    assert got == [0.0] and m["timeouts"] == 1
    assert pool.workers and all(w.proc.poll() is None for w in pool.workers)


def _verdicts_in_child(queue) -> None:
    queue.put(accuracy_reward([c for c, _, _ in ORDINARY], answer=[g for _, g, _ in ORDINARY]))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_same_verdicts_main_thread_pool_and_process(start_method):
    completions, golds = [c for c, _, _ in ORDINARY], [g for _, g, _ in ORDINARY]
    expected = [v for _, _, v in ORDINARY]
    assert accuracy_reward(completions, answer=golds) == expected
    with ThreadPoolExecutor(4) as ex:  # several threads at once share the pool safely
        futures = [ex.submit(accuracy_reward, completions, answer=golds) for _ in range(4)]
        assert [f.result() for f in futures] == [expected] * 4
    ctx = mp.get_context(start_method)
    queue = ctx.Queue()
    child = ctx.Process(target=_verdicts_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == expected
    child.join(30)
    assert child.exitcode == 0


def test_math_verify_alone_fails_off_the_main_thread():
    """The peer failure we avoid: math-verify's signal timeout raises in a thread (so naive wrappers score 0)."""
    from math_verify import parse

    errors = []

    def work():
        try:
            parse("$\\sqrt{8}$")
        except ValueError as e:
            errors.append(str(e))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors and "thread" in errors[0]
    with ThreadPoolExecutor(1) as ex:
        assert ex.submit(accuracy_reward, [r1("2\\sqrt{2}")], answer=["\\sqrt{8}"]).result() == [1.0]


def test_shutdown_stops_workers_and_pool_restarts():
    pool = sandbox.get_pool()
    pool.run([{"op": "verify", "gold": "1", "preds": ["1"]}], 5.0)
    procs = [w.proc for w in pool.workers]
    assert procs
    sandbox.shutdown()
    assert all(p.poll() is not None for p in procs)  # exited, reaped: nothing leaks
    assert accuracy_reward([r1("\\sqrt{4}")], answer=["2"]) == [1.0]  # a fresh pool starts on demand
    assert sandbox.get_pool().pid == os.getpid()


def test_workers_that_cannot_start_give_zero_not_a_hang(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "_WORKER_FILE", "/nonexistent/_mv_worker.py")
    pool = sandbox.VerifyPool(2)
    t = time.perf_counter()
    results = pool.run([{"op": "verify", "gold": "1", "preds": ["1"]}] * 3, deadline_s=1.0)
    assert [r.status for r in results] == ["unavailable"] * 3 and not any(r.ok for r in results)
    assert time.perf_counter() - t < 30
    assert "math-verify workers cannot start" in capsys.readouterr().err
    pool.close()
