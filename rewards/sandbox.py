"""A small pool of math-verify worker processes with a hard per-call deadline.

Why processes: math-verify's timeout uses ``signal.alarm``, which only works in the main thread (from any
other thread it raises at once, and TRL switches it off there), and no signal can interrupt C-level work
such as ``9**(9**9)`` anyway. Each worker (``rewards/_mv_worker.py``) is a separate Python process running
math-verify in its own main thread, with a soft timer signal; when a call passes its hard deadline the
parent kills the worker, scores the sample 0 with status ``timeout`` and starts a replacement. The parent
only writes and reads pipes, so it gives the same verdicts from the main thread, a thread pool, a
data-parallel rank or a forked process.

Throughput: a batch's jobs are spread over all workers at once (one job in flight per worker), each
worker caches parsed golds, and callers deduplicate and cache verdicts (``rewards/accuracy.py``).

Workers are started lazily on the first call, exit when the parent closes their stdin (``atexit``) and, on
Linux, are killed by the kernel if the parent dies.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mv_worker.py")
# Run the worker by path without putting its folder on sys.path (rewards/*.py must not shadow stdlib names).
_LAUNCH = "import runpy, sys; sys.path = [p for p in sys.path if p]; runpy.run_path(sys.argv[1], run_name='__main__')"
STARTUP_TIMEOUT_S = 120.0  # a cold import of sympy on a loaded 2-core machine can take seconds
DEFAULT_MEMORY_MB = 4096  # address-space cap per worker: a runaway bigint raises MemoryError instead of swapping


def default_workers() -> int:
    """Pool size: one worker per core, at least 2 (one can be stuck until its deadline), at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


@dataclass
class Result:
    """One job's outcome: ``ok`` (verdict) and ``status``: ok, bad_gold, unparsable, timeout, error, crash,
    unavailable; ``error`` (the exception, for ``error``) and ``data`` (a ``call`` job's encoded return value)."""

    ok: bool
    status: str
    error: str | None = None
    data: str | None = None


class _Worker:
    def __init__(self, memory_mb: int, kind: str = "verify", script: str | None = None, env: dict | None = None):
        base = dict(os.environ) if env is None else dict(env)  # a caller's env replaces ours (a scrubbed one)
        env = dict(base, GRPO_ZERO_VERIFY_MEM_MB=str(memory_mb), GRPO_ZERO_VERIFY_PARENT=str(os.getpid()),
                   GRPO_ZERO_WORKER_KIND=kind, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, script or _WORKER_FILE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, close_fds=True)
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.born = time.monotonic()
        self.job: int | None = None  # index of the job in flight
        self.started = 0.0

    def send(self, payload: dict) -> None:
        self.proc.stdin.write(json.dumps(payload).encode() + b"\n")
        self.proc.stdin.flush()

    def read_lines(self) -> list[dict] | None:
        """Complete messages available now; ``None`` when the worker has exited (EOF)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

class VerifyPool:
    """``num_workers`` math-verify processes. ``run(jobs, deadline_s)`` -> one :class:`Result` per job.

    Thread-safe: concurrent callers take turns (each call uses every worker). ``script`` and ``env`` run another
    worker program that speaks the same protocol (the tool sandbox's fork server) in another environment.
    """

    def __init__(self, num_workers: int | None = None, memory_mb: int = DEFAULT_MEMORY_MB, kind: str = "verify",
                 script: str | None = None, env: dict | None = None):
        self.num_workers = num_workers or default_workers()
        self.memory_mb = memory_mb
        self.kind = kind  # "verify" (math-verify) or "call" (reward functions by import path, no memory cap)
        self.script, self.env = script, env
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.failed_starts = 0
        self.broken: str | None = None  # set when workers cannot start at all (e.g. math-verify missing)
        self.stats = {"timeouts": 0, "kills": 0, "crashes": 0, "respawns": 0, "jobs": 0}

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = _Worker(self.memory_mb, self.kind, self.script, self.env)
        self.stats["respawns"] += 1

    def run(self, jobs: list[dict], deadline_s: float) -> list[Result]:
        """Run ``jobs`` (worker requests, see ``_mv_worker.py``) with a hard deadline of ``deadline_s`` each.

        The deadline counts from the moment a job is handed to an idle, started worker, so worker start-up
        and queueing never count against a job.
        """
        results: list[Result | None] = [None] * len(jobs)
        if not jobs:
            return []
        with self.lock:
            if self.broken:
                return [Result(False, "unavailable")] * len(jobs)
            while len(self.workers) < self.num_workers:
                self.workers.append(_Worker(self.memory_mb, self.kind, self.script, self.env))
            pending = deque(range(len(jobs)))
            soft_s = 0.8 * deadline_s  # the worker's own timer: a clean 0 without a restart when sympy is interruptible
            while pending or any(w.job is not None for w in self.workers):
                now = time.monotonic()
                for w in list(self.workers):
                    if w.ready and w.job is None and pending:
                        i = pending.popleft()
                        try:
                            w.send({**jobs[i], "soft_s": soft_s})
                        except (OSError, ValueError):  # died while idle (e.g. the thread that started it ended): retry the job
                            pending.appendleft(i)
                            self._replace(w)
                            continue
                        w.job, w.started = i, now
                waits = [w.started + deadline_s - now for w in self.workers if w.job is not None]
                waits += [w.born + STARTUP_TIMEOUT_S - now for w in self.workers if not w.ready]
                selector = selectors.PollSelector()
                for w in self.workers:
                    selector.register(w.fd, selectors.EVENT_READ, w)
                events = selector.select(timeout=max(0.0, min(waits)) if waits else None)
                selector.close()
                for key, _ in events:
                    self._on_readable(key.data, results)
                if self.broken:
                    for i in list(pending) + [w.job for w in self.workers if w.job is not None]:
                        results[i] = Result(False, "unavailable")
                    for w in self.workers:
                        w.job = None
                    break
                now = time.monotonic()
                for w in list(self.workers):
                    if w.job is not None and now >= w.started + deadline_s:
                        results[w.job] = Result(False, "timeout")
                        self.stats["timeouts"] += 1
                        self.stats["kills"] += 1
                        self._replace(w)
                    elif not w.ready and now >= w.born + STARTUP_TIMEOUT_S:
                        self._start_failed(w, f"a worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
            self.stats["jobs"] += len(jobs)
        return [r or Result(False, "unavailable") for r in results]

    def _on_readable(self, w: _Worker, results: list[Result | None]) -> None:
        try:
            messages = w.read_lines()
        except (OSError, ValueError):
            messages = None
        if messages is None:  # the worker exited: a crash mid-job, or a failed start
            if w.job is not None:
                results[w.job] = Result(False, "crash")
                self.stats["crashes"] += 1
                w.job = None
            if not w.ready:
                self._start_failed(w, f"a worker exited during start-up (exit code {w.proc.poll()})")
            else:
                self._replace(w)
            return
        for msg in messages:
            if msg.get("ready"):
                w.ready = True
                self.failed_starts = 0
            elif w.job is not None:
                results[w.job] = Result(bool(msg["ok"]), msg["status"], msg.get("error"), msg.get("data"))
                self.stats["timeouts"] += msg["status"] == "timeout"
                w.job = None

    def _start_failed(self, w: _Worker, why: str) -> None:
        self.failed_starts += 1
        if self.failed_starts >= 3:
            what = {"verify": "math-verify", "call": "reward"}.get(self.kind, self.kind)
            check = "import math_verify" if self.kind == "verify" else "import json"
            self.broken = (f"{what} workers cannot start ({why}); check that `python -c '{check}'` "
                           "works in this environment")
            then = "math-verify checks now score 0" if self.kind in ("verify", "call") else "its calls now fail"
            print(f"grpo-zero {'rewards' if self.kind in ('verify', 'call') else self.kind}: {self.broken}; {then}",
                  file=sys.stderr)
            return
        self._replace(w)

    def close(self) -> None:
        """Stop all workers (idempotent). Only the process that started them does anything."""
        if os.getpid() != self.pid:
            return
        with self.lock:
            workers, self.workers = self.workers, []
        for w in workers:  # workers keep no state worth a polite exit (sympy's teardown alone takes ~0.5 s)
            w.kill()


_POOL: VerifyPool | None = None
_POOL_LOCK = threading.Lock()
_CALL_POOL: VerifyPool | None = None


def get_pool(num_workers: int | None = None) -> VerifyPool:
    """The process-wide pool (a forked child gets its own). ``num_workers`` resizes it when given."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = VerifyPool(num_workers)  # after a fork the parent's workers are not ours to use
        elif num_workers and num_workers != _POOL.num_workers:
            with _POOL.lock:
                _POOL.num_workers = num_workers
                for w in _POOL.workers[num_workers:]:
                    w.kill()
                del _POOL.workers[num_workers:]
        return _POOL


def get_call_pool() -> VerifyPool:
    """The process-wide pool that runs reward functions with a ``deadline_s`` (workers without math-verify and
    without a memory cap; started on first use)."""
    global _CALL_POOL
    with _POOL_LOCK:
        if _CALL_POOL is None or _CALL_POOL.pid != os.getpid():
            _CALL_POOL = VerifyPool(default_workers(), memory_mb=0, kind="call")
        return _CALL_POOL


@dataclass
class CallResult:
    """A reward function's outcome on samples ``start:stop`` of a batch, run in a worker: ``status`` ok,
    timeout, error, crash or unavailable; on ok the values, the counters it ``report``-ed and its per-sample
    notes; otherwise the error text (if any)."""

    start: int
    stop: int
    status: str
    values: list | None = None
    counters: dict | None = None
    notes: list | None = None
    metrics: dict | None = None  # log_metric values: name -> list of floats
    error: str | None = None


def call_reward(path: str, completions: list[str], columns: dict, kwargs: dict, deadline_s: float) -> list[CallResult]:
    """Run the reward ``path`` (``"module:qualname"``) on a batch in the call pool's workers, each killed after
    ``deadline_s``.

    The batch is split into one contiguous chunk per worker, run in parallel, so a reward that hangs costs the
    step about ``deadline_s``, and a chunk that hangs zeroes only its own samples.

    Args:
        path: import path of the function (the worker imports it, with this process's ``sys.path``).
        completions: the batch's N completions; columns ({name: N values}) and kwargs as the reward takes them
            (picklable).
        deadline_s: hard wall-clock limit per chunk.

    Returns:
        one :class:`CallResult` per chunk, in order, covering samples 0..N.
    """
    import base64
    import pickle

    pool = get_call_pool()
    n = len(completions)
    k = max(1, min(pool.num_workers, n))
    bounds = [(i * n // k, (i + 1) * n // k) for i in range(k)]
    sys_path = [p or os.getcwd() for p in sys.path]
    jobs = []
    for a, b in bounds:
        chunk = (list(completions[a:b]), {key: list(v[a:b]) for key, v in columns.items()}, kwargs)
        jobs.append({"op": "call", "fn": path, "sys_path": sys_path,
                     "data": base64.b64encode(pickle.dumps(chunk)).decode()})
    out = []
    for (a, b), res in zip(bounds, pool.run(jobs, deadline_s)):
        if res.status != "ok":
            out.append(CallResult(a, b, res.status, error=res.error))
            continue
        values, counters, notes, metrics = pickle.loads(base64.b64decode(res.data))
        out.append(CallResult(a, b, "ok", values, counters, notes, metrics))
    return out


def shutdown() -> None:
    """Stop the pools' workers; the next call starts fresh ones. Registered with ``atexit``."""
    global _POOL, _CALL_POOL
    with _POOL_LOCK:
        pools, _POOL, _CALL_POOL = (_POOL, _CALL_POOL), None, None
    for pool in pools:
        if pool is not None:
            pool.close()


atexit.register(shutdown)
