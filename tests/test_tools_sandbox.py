"""The python tool's sandbox, one named test per limit: wall time, CPU/memory/file/process rlimits, output size,
fork bombs, files, network, environment, crashes, concurrency and clean shutdown. What a test can assert depends on
what the machine lets the sandbox isolate, so those tests read the sandbox's own report and check it is true."""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest

from grpo.tools.sandbox import MAX_FILE_MB, MAX_OPEN_FILES, MAX_PROCS, PythonSandbox

TIMEOUT_S = 2.0
MEMORY_MB = 512
MAX_OUTPUT = 500


@pytest.fixture(scope="module")
def sb():
    box = PythonSandbox(workers=2, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB, max_output_chars=MAX_OUTPUT)
    yield box
    box.close()


def run1(sb: PythonSandbox, code: str):
    return sb.run([code])[0]


def processes() -> dict[int, dict]:
    """Every process now, from /proc (Linux, as the sandbox): pid -> state, parent, real uid, cwd, RSS in KiB."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:  # zombies have none
                cwd = ""
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
        rss = int(status.get("VmRSS", "0 kB").split()[0])
        found[int(entry)] = {"state": fields[0], "ppid": int(fields[1]), "uid": int(status["Uid"].split()[0]),
                             "cwd": cwd, "rss_kib": rss}
    return found


def leftovers(root: str) -> list[int]:
    """Processes whose working folder is inside the sandbox's root (every call starts in its own folder there)."""
    return [pid for pid, p in processes().items() if p["cwd"].startswith(root)]


def wait_no_leftovers(root: str, seconds: float = 3.0) -> list[int]:
    end = time.monotonic() + seconds
    while (left := leftovers(root)) and time.monotonic() < end:
        time.sleep(0.05)
    return left


def server_children(sb: PythonSandbox) -> list[int]:
    """Processes (zombies included) under the fork servers: none once a call has returned."""
    procs = processes()
    below, frontier = set(), {w.proc.pid for w in sb.pool.workers}
    while frontier:
        frontier = {pid for pid, p in procs.items() if p["ppid"] in frontier} - below
        below |= frontier
    return sorted(below)


def zombies(uid: int) -> set[int]:
    """Zombie processes of the sandbox's uid anywhere (an orphan reparented to init that nobody reaps)."""
    return {pid for pid, p in processes().items() if p["state"] == "Z" and p["uid"] == uid}


def test_print_runs_in_a_fresh_process(sb):
    a, b = sb.run(["import os; x = 1; print(os.getpid(), 6 * 7)", "print('x' in globals())"])
    assert a.error is None and a.output.split()[1] == "42"
    assert b.output.strip() == "False"  # nothing of one call is visible in the next
    assert run1(sb, "import os; print(os.getpid())").output.split()[0] != a.output.split()[0] or sb.isolation()["pidns"]


def test_exception_gives_traceback_and_error_line(sb):
    call = run1(sb, "print('before')\n1/0")
    assert call.error == "ZeroDivisionError: division by zero"
    assert call.output.startswith("before\n") and 'File "<tool>", line 2' in call.output
    assert run1(sb, "def f(:\n").error.startswith("SyntaxError")


def test_wall_time_limit_infinite_loop(sb):
    start = time.monotonic()
    call = run1(sb, "while True:\n    pass")
    elapsed = time.monotonic() - start
    assert call.timed_out and "timed out after 2 s" in call.error and call.error in call.output
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.5


def test_wall_time_limit_keeps_output_before_the_kill(sb):
    call = run1(sb, "print('started', flush=True)\nimport time\ntime.sleep(60)")
    assert call.timed_out and call.output.startswith("started")


def test_fork_bomb_is_contained_and_leaves_no_process(sb):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    before = zombies(sb.isolation()["uid"])
    start = time.monotonic()
    call = run1(sb, bomb)
    assert time.monotonic() - start < TIMEOUT_S + 2.0
    assert call.timed_out  # the bomb keeps forking until the wall limit
    assert wait_no_leftovers(sb.root) == [] and server_children(sb) == []
    time.sleep(0.2)
    assert zombies(sb.isolation()["uid"]) - before == set()  # not even a zombie
    assert run1(sb, "print(1)").output == "1\n"


def test_process_limit(sb):
    code = ("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n"
            "            os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(n, type(e).__name__)")
    call = run1(sb, code)
    n, kind = call.output.split()
    assert kind == "BlockingIOError" and 0 < int(n) <= MAX_PROCS
    assert wait_no_leftovers(sb.root) == [] and server_children(sb) == []  # the sleepers died with the call


def test_background_process_is_killed_when_the_call_ends(sb):
    start = time.monotonic()
    call = run1(sb, "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('done')")
    assert call.output.strip() == "done" and time.monotonic() - start < TIMEOUT_S  # no wait for the child's pipe
    assert wait_no_leftovers(sb.root) == []


def test_memory_limit_10gb_allocation(sb):
    start = time.monotonic()
    call = run1(sb, "x = bytearray(10 * 1024**3)")
    assert call.error == f"MemoryError (memory limit {MEMORY_MB} MB)" and not call.timed_out
    assert time.monotonic() - start < TIMEOUT_S


def test_output_limit_100mb_print(sb):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    call = run1(sb, "print('x' * 100_000_000)")
    elapsed = time.monotonic() - start
    assert call.error is None and call.output.startswith("x" * MAX_OUTPUT)
    assert call.output.endswith("[output truncated: 100000001 bytes]") and len(call.output) < MAX_OUTPUT + 50
    assert elapsed < TIMEOUT_S
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB: far below 100 MB
    procs = processes()
    assert all(procs[w.proc.pid]["rss_kib"] < 100_000 for w in sb.pool.workers)  # the server discarded it as it came


def test_rlimits_are_set(sb):
    names = ["RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"]
    call = run1(sb, f"import resource\nfor n in {names!r}:\n    print(n, *resource.getrlimit(getattr(resource, n)))")
    limits = {line.split()[0]: tuple(map(int, line.split()[1:])) for line in call.output.splitlines()}
    cpu = int(TIMEOUT_S) + 1
    assert limits == {"RLIMIT_CPU": (cpu, cpu + 1), "RLIMIT_AS": (MEMORY_MB << 20,) * 2,
                      "RLIMIT_FSIZE": (MAX_FILE_MB << 20,) * 2, "RLIMIT_NOFILE": (MAX_OPEN_FILES,) * 2,
                      "RLIMIT_CORE": (0, 0)}


def test_file_size_limit(sb):
    call = run1(sb, f"open('big', 'wb').write(b'0' * ({MAX_FILE_MB} + 1) * 2**20)")
    assert call.error is not None and "File too large" in call.error


def test_open_files_limit(sb):
    call = run1(sb, f"fs = [open('f%d' % i, 'w') for i in range({MAX_OPEN_FILES} + 10)]")
    assert call.error is not None and "Too many open files" in call.error


def test_files_start_in_an_empty_folder_that_is_removed(sb):
    code = ("import os\nprint(os.listdir('.'))\nprint(os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'])\n"
            "open('left.txt', 'w').write('x')\nprint(os.getcwd())")
    listing, same, cwd = run1(sb, code).output.splitlines()
    assert listing == "[]" and same == "True" and cwd.startswith(sb.root + os.sep)
    assert not os.path.exists(cwd) and os.listdir(sb.root) == []


def test_writing_outside_the_folder(sb, tmp_path):
    """Without a chroot the code may write where its user may; what the sandbox reports must hold."""
    target = tmp_path / "outside"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    call = run1(sb, f"open({str(target / 'x.txt')!r}, 'w').write('x')")
    report = sb.isolation()
    if report["files_protected"]:
        assert "PermissionError" in call.error and not (target / "x.txt").exists()
    else:
        assert call.error is None and (target / "x.txt").exists()
    if os.getuid() == 0:  # as root the code never keeps root's power over other users' files
        os.chown(target, 12345, 12345)
        call = run1(sb, f"open({str(target / 'y.txt')!r}, 'w').write('y')")
        assert "PermissionError" in call.error and not (target / "y.txt").exists()


def test_network_connect_fails(sb):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
        call = run1(sb, code)
    finally:
        server.close()
    report = sb.isolation()
    assert "connected" not in call.output and call.error is not None
    if report["netns"]:  # a network namespace of its own: the host's loopback is not there
        assert not report["python_socket_block"] and ("unreachable" in call.error or "refused" in call.error)
    else:
        assert report["python_socket_block"] and "disabled in the tool sandbox" in call.error


def test_environment_is_scrubbed(sb, monkeypatch):
    monkeypatch.setenv("GRPO_TEST_SECRET", "hunter2")
    box = PythonSandbox(workers=1, timeout_s=TIMEOUT_S)  # servers started after the secret was set
    try:
        out = box.run(["import os\nprint(sorted(os.environ))\nprint(open('/proc/self/environ').read())"])[0].output
    finally:
        box.close()
    assert out.splitlines()[0] == "['HOME', 'LANG', 'OMP_NUM_THREADS', 'PATH', 'TMPDIR']"
    assert "hunter2" not in out


@pytest.mark.parametrize("code,signal_name", [("import os; os.abort()", "SIGABRT"),
                                              ("import ctypes; ctypes.string_at(0)", "SIGSEGV")])
def test_crash_gives_error_and_pool_keeps_working(sb, code, signal_name):
    call = run1(sb, code)
    assert call.error == f"the process crashed ({signal_name})" and call.output == call.error
    assert run1(sb, "print('alive')").output == "alive\n"


def test_many_concurrent_calls(sb):
    calls = sb.run([f"print({i} * {i})" for i in range(24)] + ["while True: pass"])
    assert [c.output for c in calls[:24]] == [f"{i * i}\n" for i in range(24)]
    assert calls[24].timed_out


def test_close_leaves_no_processes():
    box = PythonSandbox(workers=2, timeout_s=TIMEOUT_S)
    assert box.run(["print(1)", "print(2)"])[1].output == "2\n"
    pids = [w.proc.pid for w in box.pool.workers]
    box.close()
    box.close()  # idempotent
    procs = processes()
    assert not any(p in procs and procs[p]["state"] != "Z" for p in pids)
    assert not os.path.exists(box.root)
    assert box.run(["print(1)"])[0].error == "the sandbox is closed"


def test_isolation_report_matches_the_child(sb):
    report = sb.isolation()
    uid = int(run1(sb, "import os; print(os.getuid())").output)
    assert report["uid"] == uid and report["nproc"] > 0
    assert (uid == 65534) == (os.getuid() == 0)  # root never runs model code as its real uid


@pytest.mark.skipif(os.getuid() != 0, reason="the nobody path is taken only by root")
def test_root_runs_code_as_nobody_where_it_can(monkeypatch, tmp_path):
    """Where nobody can read the interpreter, root's calls run as nobody outright (forced here with the test hook;
    only modules the server already imported can be used then, which is why it is not forced in general)."""
    monkeypatch.setenv("GRPO_ZERO_TOOL_USER", "nobody")
    target = tmp_path / "rootdir"
    target.mkdir()
    os.chmod(target, 0o755)
    box = PythonSandbox(workers=1, timeout_s=TIMEOUT_S)
    try:
        ids = box.run(["import os; print(os.getresuid(), os.getcwd() == os.environ['HOME'])"])[0].output
        write = box.run([f"open({str(target / 'x')!r}, 'w')"])[0]
        report = box.isolation()
    finally:
        box.close()
    assert ids.strip() == "(65534, 65534, 65534) True"
    assert report["user"] == "nobody" and report["files_protected"]
    assert "PermissionError" in write.error and not (target / "x").exists()


def test_without_namespaces_the_fallbacks_hold(monkeypatch):
    """Kernels that refuse namespaces (forced with the test hook): the process group is killed, the Python-level
    socket block is on and reported, and the report says the network is not isolated."""
    monkeypatch.setenv("GRPO_ZERO_TOOL_NAMESPACES", "0")
    box = PythonSandbox(workers=1, timeout_s=TIMEOUT_S)
    try:
        report = box.isolation()
        net = box.run(["import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)"])[0]
        sleepers = "import os, time\nfor _ in range(5):\n    if os.fork() == 0:\n        time.sleep(60)\nprint('ok')"
        bomb = box.run([sleepers])
        assert bomb[0].output.strip() == "ok"
        assert wait_no_leftovers(box.root) == [] and server_children(box) == []  # they shared its process group
    finally:
        box.close()
    assert report["netns"] is False and report["pidns"] is False and report["python_socket_block"] is True
    assert net.error == "OSError: [Errno 101] network access is disabled in the tool sandbox"
