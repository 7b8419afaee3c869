"""The python tool's fork server (see ``grpo/tools/sandbox.py``); run as a script by the pool, never imported.

It speaks the worker protocol of ``rewards/sandbox.py``: it writes ``{"ready": true}`` once warm, then for each
request line ``{"code": str, "timeout_s": float, "memory_mb": int, "max_output_bytes": int, "max_file_mb": int,
"max_open_files": int, "max_procs": int}`` it forks a fresh child that runs the code under the limits, and answers
``{"ok": bool, "status": "ok" | "error" | "timeout" | "crash", "error": str | None, "data": JSON text of {"output",
"output_bytes", "seconds", "isolation"}}``.

Why a fork server: the interpreter and any preloaded modules (``GRPO_ZERO_TOOL_PRELOAD``) are loaded once, so a call
costs a fork (about a millisecond) instead of an interpreter start, and each call still gets a process of its own
that nothing of an earlier call survives in. The server itself never runs model code.

A call's child (see ``_setup_child``): a new session (process group); stdin from /dev/null, stdout and stderr into
one pipe the server reads up to ``max_output_bytes`` and discards beyond; cwd an empty folder that is removed
afterwards; as root, the uid and gid of ``nobody``; new network and PID namespaces when the kernel allows; rlimits on
CPU time, address space, file size, open files, processes and core dumps; an environment with only PATH, HOME, TMPDIR,
LANG. With a PID namespace the code runs as that namespace's init, so killing it kills every process the call started.

This file imports only the standard library.
"""

import ctypes
import json
import os
import resource
import select
import shutil
import signal
import stat
import sys
import time
import traceback

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
NOBODY = 65534  # the conventional unprivileged uid/gid; root drops to it so file permissions apply to the code
STATUS_FD = 3  # the child's side channel for its setup report and its error line
PATH = "/usr/local/bin:/usr/bin:/bin"
LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent goes (PR_SET_PDEATHSIG), so nothing outlives the trainer."""
    try:
        LIBC.prctl(1, signal.SIGKILL)
    except AttributeError:
        pass


def _unshare(root: bool) -> dict:
    """Enter new network and PID namespaces if the kernel lets this process; which ones it got.

    Root needs no user namespace (and must not take one: it then could not drop to ``nobody``); anyone else asks
    for a user namespace too, which unprivileged processes may create where the kernel allows it.
    """
    if os.environ.get("GRPO_ZERO_TOOL_NAMESPACES") == "0":  # test hook: the path of kernels that refuse them
        return {"netns": False, "pidns": False}
    user = 0 if root else CLONE_NEWUSER
    uid, gid = os.getuid(), os.getgid()
    for flags in (user | CLONE_NEWNET | CLONE_NEWPID, user | CLONE_NEWNET, user | CLONE_NEWPID):
        if LIBC.unshare(flags) == 0:
            if user:  # map our own ids, so the code sees (and the report says) the real uid, not 65534
                for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                    try:
                        with open(f"/proc/self/{name}", "w") as f:
                            f.write(text)
                    except OSError:
                        pass
            return {"netns": bool(flags & CLONE_NEWNET), "pidns": bool(flags & CLONE_NEWPID)}
    return {"netns": False, "pidns": False}


def _world_readable(paths: list[str]) -> bool:
    """Can any user read these folders (r-x for others on each and x on every folder above)? Mode bits only."""
    for path in paths:
        path = os.path.abspath(path)
        if not os.path.isdir(path) or os.stat(path).st_mode & 0o005 != 0o005:
            return False
        while path != "/":
            path = os.path.dirname(path)
            if not os.stat(path).st_mode & 0o001:
                return False
    return True


def _drop_root(nobody_can_import: bool) -> str:
    """Stop being root before running code, so file permissions and RLIMIT_NPROC apply. Returns how.

    Where ``nobody`` can read the interpreter and its modules, become ``nobody`` outright. Otherwise (e.g. a Python
    under /root) keep the effective uid 0, which file reads need, but make the real uid ``nobody`` (RLIMIT_NPROC
    counts and applies by real uid) and drop every capability: the code then has no root privilege beyond owning
    root's files, and cannot regain one through a setuid program or exec.
    """
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    if nobody_can_import:
        os.setresuid(NOBODY, NOBODY, NOBODY)
        return "nobody"
    for cap in range(64):  # empty the bounding set: an exec cannot grant root's capabilities back
        LIBC.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; EINVAL past the last capability is fine
    os.setresuid(NOBODY, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    if LIBC.capset(header, (ctypes.c_uint32 * 6)()) != 0:
        raise OSError(ctypes.get_errno(), "capset failed: cannot drop capabilities")
    return "real uid nobody, effective uid 0 without capabilities"


def _user_processes(uid: int) -> int:
    """How many processes ``uid`` runs now (RLIMIT_NPROC counts them all, not just this call's)."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                n += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return n


def _limits(req: dict, uid: int) -> int:
    """Set the call's rlimits; returns the process limit set (RLIMIT_NPROC is per user: the user's current count
    plus ``max_procs``; root ignores it, which is why root drops to ``nobody`` first)."""
    cpu = int(req["timeout_s"]) + 1  # SIGXCPU only for CPU burnt beyond the wall limit (threads); the wall kills first
    mem = int(req["memory_mb"]) << 20
    size = int(req["max_file_mb"]) << 20
    nproc = _user_processes(uid) + int(req["max_procs"])
    for what, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                        (resource.RLIMIT_FSIZE, (size, size)), (resource.RLIMIT_CORE, (0, 0)),
                        (resource.RLIMIT_NOFILE, (int(req["max_open_files"]),) * 2),
                        (resource.RLIMIT_NPROC, (nproc, nproc))):
        resource.setrlimit(what, value)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write then raises OSError (EFBIG) in the code
    return nproc


def _block_python_sockets() -> None:
    """Without a network namespace: refuse connect/bind/send at the Python level. Defence in depth only, not a
    security boundary (``_socket``, ctypes or a subprocess get around it)."""
    import errno
    import socket

    def refuse(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "network access is disabled in the tool sandbox")

    for name in ("connect", "connect_ex", "bind", "sendto"):
        setattr(socket.socket, name, refuse)
    socket.create_connection = refuse


def _setup_child(req: dict, workdir: str, out_w: int, status_w: int) -> dict:
    """In the forked child: session, fds, folder, user, namespaces, limits, environment. Returns what it got."""
    os.setsid()
    _die_with_parent()
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.dup2(status_w, STATUS_FD)  # after 1 and 2: the pipes are fds above 3 (0-3 are the server's own), never 1 or 2
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.closerange(STATUS_FD + 1, 1 << 16)  # the server's protocol pipes and every other inherited fd
    os.chdir(workdir)
    root = os.getuid() == 0
    got = _unshare(root)
    got["user"] = _drop_root(req["nobody_can_import"]) if root else "the trainer's user"
    got["files_protected"] = os.geteuid() != 0 and root  # writes limited to what nobody may write
    LIBC.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid program gives privileges back
    got["uid"] = os.getuid()
    got["nproc"] = _limits(req, os.getuid())
    os.environ.clear()
    os.environ.update(PATH=PATH, HOME=workdir, TMPDIR=workdir, LANG="C.UTF-8", OMP_NUM_THREADS="1")
    got["python_socket_block"] = not got["netns"]
    if not got["netns"]:
        _block_python_sockets()
    return got


def _report(msg: dict) -> None:
    os.write(STATUS_FD, (json.dumps(msg) + "\n").encode())


def _run_code(code: str) -> None:
    """Run ``code`` as ``__main__`` and exit this process; an exception prints its traceback (without this frame)
    and reports its last line."""
    # The process's own streams stay open until it exits; running the code is the tool's purpose (its own process).
    sys.stdin = open(os.devnull)  # noqa: SIM115
    out = open(1, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)  # noqa: SIM115
    sys.stdout = sys.stderr = out
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(code, "<tool>", "exec"), namespace)  # noqa: S102
    except SystemExit as e:
        if e.code not in (None, 0):
            _report({"error": f"SystemExit: {e.code}"[:300]})
    except BaseException as e:  # noqa: BLE001 - whatever the code raises is the model's feedback
        try:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        except BaseException:  # noqa: BLE001, S110 - printing a MemoryError can itself run out of memory
            pass
        _report({"error": f"{type(e).__name__}: {e}".splitlines()[0][:300] if str(e) else type(e).__name__})
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001, S110 - output past the file-size limit or a closed pipe: nothing to add
        pass
    os._exit(0)


def _child(req: dict, workdir: str, out_w: int, status_w: int) -> None:
    """The forked child: set up, then run the code itself, or, with a PID namespace, as the namespace's init."""
    try:
        got = _setup_child(req, workdir, out_w, status_w)
        _report({"isolation": got})
        # With a PID namespace: this process forks the namespace's init (when it dies, everything in it dies),
        # which forks the process that runs the code (init ignores signals it has no handler for, e.g. SIGABRT).
        for level in ("outside", "init") if got["pidns"] else ():
            pid = os.fork()
            if pid:
                os.close(1)
                os.close(2)
                _, status = os.waitpid(pid, 0)
                if level == "init":
                    _report({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"code": status >> 8})
                os._exit(0)
            _die_with_parent()
        _run_code(req["code"])
    except BaseException as e:  # noqa: BLE001 - a setup failure is reported, never raised into the server
        try:
            _report({"error": f"sandbox setup failed: {type(e).__name__}: {e}"[:300]})
        finally:
            os._exit(70)


def _read_some(fd: int, buf: bytearray, cap: int) -> int:
    """Read what ``fd`` has now into ``buf`` up to ``cap`` bytes (the rest is discarded); bytes read, -1 at EOF."""
    try:
        chunk = os.read(fd, 1 << 20)
    except BlockingIOError:
        return 0
    if not chunk:
        return -1
    if len(buf) < cap:
        buf += chunk[: cap - len(buf)]
    return len(chunk)


def _wait(pid: int, out_r: int, deadline: float, cap: int) -> tuple[bytearray, int, int | None]:
    """Collect the child's output until it exits or the deadline; returns (output, bytes in all, wait status or
    None on timeout)."""
    buf, total, status = bytearray(), 0, None
    try:
        pidfd = os.pidfd_open(pid)  # readable when the child exits: no polling (Linux 5.3+)
    except (AttributeError, OSError):
        pidfd = None  # then poll its status every 50 ms
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    while status is None:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _ in poller.poll(min(left, 0.05 if pidfd is None else left) * 1000):
            if fd == out_r:
                n = _read_some(out_r, buf, cap)
                if n < 0:
                    poller.unregister(out_r)
                total += max(n, 0)
        done, st = os.waitpid(pid, os.WNOHANG)
        status = st if done else None
    if pidfd is not None:
        os.close(pidfd)
    return buf, total, status


def _drain(fd: int, buf: bytearray, cap: int, budget: int = 1 << 30) -> int:
    """Read what is left in a pipe whose writers are gone (or killed); bytes read."""
    os.set_blocking(fd, False)
    total = 0
    while total < budget:
        n = _read_some(fd, buf, cap)
        if n <= 0:
            break
        total += n
    return total


def _outcome(req: dict, status: int | None, lines: list[dict]) -> tuple[str, str | None]:
    """(status, error line) from the wait status and the child's reports."""
    if status is None:
        return "timeout", f"timed out after {req['timeout_s']:g} s (wall-clock limit)"
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    for line in lines:
        sig = line.get("signal", sig)
    error = next((line["error"] for line in lines if "error" in line), None)
    if sig == signal.SIGXCPU:
        return "error", f"killed: CPU time limit of {int(req['timeout_s']) + 1} s exceeded (SIGXCPU)"
    if sig == signal.SIGKILL:  # not ours (we kill only at the deadline): the hard CPU limit or the kernel's OOM killer
        return "error", f"killed (SIGKILL): CPU time or memory limit ({req['memory_mb']} MB) exceeded"
    if sig:
        return "crash", f"the process crashed ({signal.Signals(sig).name})"
    if error and error.startswith("MemoryError"):
        error += f" (memory limit {req['memory_mb']} MB)"
    return ("error" if error else "ok"), error


def _remove(path: str) -> None:
    """Remove a call's folder even if the code took away its own permissions on parts of it."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        for dirpath, _, _ in os.walk(path):
            os.chmod(dirpath, stat.S_IRWXU)
        shutil.rmtree(path, ignore_errors=True)


def _reap(group: int) -> None:
    """Collect the exit status of the call's orphans (they become ours: this server is a child subreaper), so no
    zombie is left behind: the killed group's members now, any stragglers of earlier calls too."""
    for target, flags in ((-group, 0), (-1, os.WNOHANG)):
        while True:
            try:
                if os.waitpid(target, flags)[0] == 0:
                    break
            except ChildProcessError:
                break


def run(req: dict, root_dir: str) -> dict:
    """One call: fork a child, collect its output, kill its process group, remove its folder."""
    start = time.monotonic()
    workdir = os.path.join(root_dir, f"call-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(workdir, 0o700)
    if os.getuid() == 0 and req["nobody_can_import"]:  # the code will run as nobody (see _drop_root)
        os.chown(workdir, NOBODY, NOBODY)
    out_r, out_w = os.pipe()
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(req, workdir, out_w, status_w)
    os.close(out_w)
    os.close(status_w)
    cap = int(req["max_output_bytes"])
    buf, total, status = _wait(pid, out_r, start + float(req["timeout_s"]), cap)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever the call left running in its group (and, on timeout, the call)
    except (ProcessLookupError, PermissionError):
        pass
    if status is None:
        os.waitpid(pid, 0)
    _reap(pid)
    total += _drain(out_r, buf, cap)
    raw = bytearray()
    _drain(status_r, raw, 1 << 16)
    os.close(out_r)
    os.close(status_r)
    lines = [json.loads(x) for x in raw.decode(errors="replace").splitlines() if x.startswith("{")]
    state, error = _outcome(req, status, lines)
    _remove(workdir)
    isolation = next((x["isolation"] for x in lines if "isolation" in x), None)
    data = {"output": buf.decode("utf-8", errors="replace"), "output_bytes": total,
            "seconds": time.monotonic() - start, "isolation": isolation}
    return {"ok": state == "ok", "status": state, "error": error, "data": json.dumps(data)}


def main() -> None:
    """Preload, say ready, then serve one request per stdin line."""
    _die_with_parent()
    LIBC.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: a call's orphans become ours to reap, not init's zombies
    if os.getppid() != int(os.environ.get("GRPO_ZERO_VERIFY_PARENT", os.getppid())):
        sys.exit(0)  # the trainer died before PR_SET_PDEATHSIG took effect
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it then closes our stdin
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of preloaded modules go to stderr, never into the protocol
    for name in filter(None, os.environ.get("GRPO_ZERO_TOOL_PRELOAD", "").split(",")):
        try:
            __import__(name)
        except ImportError as e:
            print(f"grpo-zero tools: cannot preload {name!r} ({e})", file=sys.stderr)
    root_dir = os.environ["GRPO_ZERO_TOOL_ROOT"]
    import sysconfig

    importable = _world_readable([p for p in sys.path if os.path.isdir(p)] + [sysconfig.get_paths()["stdlib"]])
    importable = importable or os.environ.get("GRPO_ZERO_TOOL_USER") == "nobody"  # test hook: force the nobody path
    proto.write('{"ready": true}\n')
    for line in sys.stdin:
        req = dict(json.loads(line), nobody_can_import=importable)
        try:
            res = run(req, root_dir)
        except Exception as e:  # noqa: BLE001 - the server must keep serving; the call gets the error
            res = {"ok": False, "status": "error", "error": f"sandbox error: {type(e).__name__}: {e}"[:300]}
        proto.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
