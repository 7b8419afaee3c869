"""The local sandbox of the ``python`` tool: each call runs in a fresh process forked from a warm server.

``PythonSandbox(workers=...)`` starts ``workers`` fork servers (``grpo/tools/_fork_server.py``) in the killable
worker pool of ``rewards/sandbox.py`` (started on first use, restarted if one dies or hangs). A call forks a child
from an idle server, so it costs about a fork, not an interpreter start; calls run ``workers`` at a time.

What is isolated (Linux; :meth:`PythonSandbox.isolation` reports what this machine gave):

- **Process**: every call is a new process in a new session; nothing of one call survives into the next. With a PID
  namespace the code runs as its init, so when it ends or is killed every process it started dies with it (a fork
  bomb leaves nothing); without one, the call's process group is killed, which misses processes that call
  ``setsid`` themselves. The server is a child subreaper and reaps what a call leaves, so no zombie remains.
- **Limits** (rlimits, per process): CPU time (wall limit + 1 s), address space (``memory_mb``), size of any file
  written, open files, core dumps off, and processes (RLIMIT_NPROC, which counts all processes of the user: the
  limit is the user's count at the call plus ``max_procs``; root is exempt from it, so as root the child first
  becomes ``nobody`` (uid 65534), where it applies, shared by the concurrent calls). Wall-clock time is enforced
  by the server, which kills the process group at the deadline; the pool kills a server that overruns by more.
- **Output**: stdout and stderr go through one pipe; the server keeps the first ``max_output_chars`` (times 4
  bytes) and discards the rest while the child writes, so a 100 MB print costs a pipe's throughput, not memory.
- **Files**: cwd, ``HOME`` and ``TMPDIR`` are a fresh empty folder, removed after the call. There is no chroot and
  no mount namespace: as root the code runs as ``nobody``, so it can write only where anyone can (e.g. ``/tmp``,
  files of 0o777 folders); as any other user it can write wherever that user can. Reading is likewise limited
  only by file permissions.
- **Environment**: only PATH, HOME, TMPDIR, LANG and OMP_NUM_THREADS; the server itself is started with a scrubbed
  environment, so ``/proc/self/environ`` holds no secrets of the trainer either.
- **Network**: a new network namespace (only a down loopback: connecting anywhere fails) when the kernel lets the
  process create one (root, or an unprivileged user namespace). Otherwise the network is NOT isolated; ``socket``
  is then refused at the Python level only, which is defence in depth, not a security boundary.

This is a guard against accidents of model-written code (loops, bombs, huge prints, stray files), not a boundary
against code written to escape: use a container or VM for untrusted users.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading

from grpo.tools.calls import ToolCall
from rewards.sandbox import VerifyPool

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fork_server.py")
GRACE_S = 5.0  # the pool kills a fork server that overruns a call's wall limit by this much (the server hangs)
MAX_FILE_MB = 16  # largest file a call may write
MAX_OPEN_FILES = 64
MAX_PROCS = 32  # processes a call may start beyond those its user already runs


class PythonSandbox:
    """A pool of fork servers that run Python code under limits; thread-safe, started on first use.

    Args:
        workers: fork servers, i.e. calls that run at the same time.
        timeout_s: wall-clock limit per call.
        memory_mb: address-space limit per process of a call.
        max_output_chars: output kept per call (the rest is discarded as it is written).
        preload: modules the servers import once (e.g. ``("numpy", "sympy")``) so calls get them warm; they count
            towards the address-space limit.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 512, max_output_chars: int = 2000,
                 preload: tuple[str, ...] = ()):
        self.timeout_s, self.memory_mb, self.max_output_chars = float(timeout_s), int(memory_mb), int(max_output_chars)
        self.root = tempfile.mkdtemp(prefix="grpo-tools-")
        os.chmod(self.root, 0o711)  # as root the calls run as nobody, who must reach their own folder inside
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "GRPO_ZERO_TOOL_ROOT": self.root,
               "GRPO_ZERO_TOOL_PRELOAD": ",".join(preload)}
        for hook in ("GRPO_ZERO_TOOL_USER", "GRPO_ZERO_TOOL_NAMESPACES"):  # test hooks: force the fallback paths
            if hook in os.environ:
                env[hook] = os.environ[hook]
        self.pool = VerifyPool(max(1, workers), memory_mb=0, kind="tools", script=SERVER, env=env)
        self.report: dict | None = None  # what the first call's child got (see isolation())
        self.lock = threading.Lock()
        self.closed = False
        atexit.register(self.close)

    def run(self, codes: list[str]) -> list[ToolCall]:
        """Run each code string in its own sandboxed process; one :class:`ToolCall` (name ``python``) per code.

        Never raises: an exception, crash, timeout or limit gives ``error`` (and ``timed_out``) with an error text as
        ``output``.
        """
        if self.closed:
            return [ToolCall("python", c, "error: the sandbox is closed", "the sandbox is closed") for c in codes]
        jobs = [{"code": c, "timeout_s": self.timeout_s, "memory_mb": self.memory_mb,
                 "max_output_bytes": 4 * self.max_output_chars + 4, "max_file_mb": MAX_FILE_MB,
                 "max_open_files": MAX_OPEN_FILES, "max_procs": MAX_PROCS} for c in codes]
        results = self.pool.run(jobs, self.timeout_s + GRACE_S)
        return [self._call(code, res) for code, res in zip(codes, results)]

    def _call(self, code: str, res) -> ToolCall:
        """A pool result as a ToolCall: output capped, the error line appended when the output lacks it."""
        data = json.loads(res.data) if res.data else {}
        if data.get("isolation") and self.report is None:
            self.report = data["isolation"]
        output, error = data.get("output", ""), res.error
        if res.status in ("timeout", "crash", "unavailable") and error is None:  # the pool's own verdicts
            error = {"timeout": f"timed out after {self.timeout_s:g} s (the sandbox server was killed)",
                     "crash": "the sandbox server died during the call",
                     "unavailable": self.pool.broken or "the sandbox is unavailable"}[res.status]
        if len(output) > self.max_output_chars or data.get("output_bytes", 0) > 4 * self.max_output_chars + 4:
            output = output[: self.max_output_chars] + f"\n[output truncated: {data.get('output_bytes', 0)} bytes]"
        if error and error not in output[-len(error) - 2:]:
            output = (output.rstrip("\n") + "\n" + error) if output.strip() else error
        return ToolCall("python", code, output, error, float(data.get("seconds", 0.0)), res.status == "timeout")

    def isolation(self) -> dict:
        """What this machine's sandbox isolates: ``netns``/``pidns`` (namespaces obtained), ``user`` (how the code
        runs: "nobody", "real uid nobody, effective uid 0 without capabilities" or "the trainer's user"), ``uid``
        (its real uid), ``files_protected`` (it may write only where ``nobody`` may), ``nproc`` (its process limit),
        ``python_socket_block`` (the Python-level fallback is on). Runs a probe call if no call has run yet."""
        if self.report is None:
            self.run(["pass"])
        return dict(self.report or {})

    def close(self) -> None:
        """Stop the fork servers and remove the calls' root folder (idempotent)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self.pool.close()
        shutil.rmtree(self.root, ignore_errors=True)
