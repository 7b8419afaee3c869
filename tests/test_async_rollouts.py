"""Async rollouts (grpo/worker): the schedule, the wire format, weight fingerprints, and whole runs: deterministic,
exactly resumable after kill -9, and every worker failure ends the run with one line and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grpo.batch import RolloutBatch, StepBatch
from grpo.checkpoint import latest_checkpoint, load_rank_file
from grpo.weight_sync import first_mismatch, fingerprint, shared_slots, tensor_fingerprint, write_slot
from grpo.worker.client import next_batch_using, worker_device
from grpo.worker.process import batch_seed, needed_version
from grpo.worker.wire import batch_from_payload, batch_payload, from_bytes, to_bytes

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--per_device_train_batch_size", "16", "--eval_steps", "0", "--task_kwargs", "{num_eval: 32}",
         "--eval_batch_size", "32", "--seed", "3", "--cpu_threads", "1", "--async_rollouts", "true",
         "--log_completions_steps", "0"]
VOLATILE = ("time/", "throughput/", "async/trainer_wait_s", "async/worker_wait_s", "weight_sync/seconds")


# --- the schedule and the pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("staleness", [0, 1, 2, 3])
def test_batch_k_is_sampled_from_the_weights_after_step_k_minus_1_minus_staleness(staleness):
    for k in range(1, 30):
        assert needed_version(k, staleness, 0) == max(0, k - 1 - staleness)
        # the trained weights (after step k - 1) are exactly `staleness` steps ahead once the pipeline is full
        if k > staleness + 1:
            assert (k - 1) - needed_version(k, staleness, 0) == staleness
    # a resumed session never samples from weights older than the ones it started from
    assert needed_version(8, 1, start_version=7) == 7
    for v in range(1, 20):
        assert needed_version(next_batch_using(v, staleness, 0, 1), staleness, 0) == v


def test_batch_seeds_differ_by_step_and_rank_and_not_by_history():
    seeds = {batch_seed(42, k, r) for k in range(1, 200) for r in range(4)}
    assert len(seeds) == 199 * 4
    assert batch_seed(42, 7, 0) == batch_seed(42, 7, 0) != batch_seed(43, 7, 0)


def test_fingerprints_name_the_tensor_that_differs():
    a = {"w": torch.randn(5, 3), "b": torch.randn(3), "big": torch.randn(3_000_000)}
    fa = fingerprint(a)
    b = {k: v.clone() for k, v in a.items()}
    assert first_mismatch(fa, fingerprint(b)) is None
    b["b"][1] += 1e-6
    assert first_mismatch(fa, fingerprint(b)) == "b"
    assert first_mismatch(fa, {k: v for k, v in fa.items() if k != "w"}) == "w"
    assert tensor_fingerprint(torch.zeros(4)) != tensor_fingerprint(torch.zeros(2, 2))  # shape counts
    assert tensor_fingerprint(torch.zeros(4)) != tensor_fingerprint(torch.zeros(4, dtype=torch.bfloat16))


def test_shared_slots_carry_the_weights():
    src = {"w": torch.randn(4, 4), "v": torch.randn(7).to(torch.bfloat16)}
    (slot,) = shared_slots(src, 1)
    assert all(t.is_shared() for t in slot.values())
    size, _ = write_slot(slot, src)
    assert size == 16 * 4 + 7 * 2
    assert fingerprint(slot) == fingerprint(src)


def test_a_scored_batch_survives_the_wire_bit_for_bit():
    N, T = 4, 5
    rollout = RolloutBatch(torch.randint(0, 9, (N, 3)), torch.ones(N, 3, dtype=torch.long),
                           torch.randint(0, 9, (N, T)), torch.ones(N, T, dtype=torch.long),
                           torch.tensor([False, True, False, False]), ["p"] * N, ["a", "b", "c", "d"],
                           torch.randn(N, T))
    rows = [{"prompt": "p", "answer": "3", "verdicts": {"accuracy": "right"}}] * N
    batch = StepBatch(rollout, rows, 2, torch.tensor([1.0, 0.0, 0.5, 0.25]), {"accuracy": torch.tensor([1.0, 0, 1, 0])})
    payload = from_bytes(to_bytes(batch_payload(batch, {"time/rollout_s": 0.1}, 5, 3, {"pos": 9}, 0.0)))
    back = batch_from_payload(payload)
    assert payload["step"] == 5 and payload["version"] == 3 and json.loads(payload["stream"]) == {"pos": 9}
    for name in ("prompt_ids", "completion_ids", "completion_mask", "truncated", "sampler_logprobs"):
        assert torch.equal(getattr(back.rollout, name), getattr(rollout, name)), name
    assert back.rollout.completions == rollout.completions and back.rows == rows and back.group_size == 2
    assert torch.equal(back.rewards, batch.rewards) and torch.equal(back.per_reward["accuracy"], batch.per_reward["accuracy"])


def test_worker_device_auto_on_cpu():
    assert worker_device("auto", torch.device("cpu"), 0, 1) == "cpu"
    assert worker_device("cuda:3", torch.device("cpu"), 0, 1) == "cuda:3"


# --- whole runs -------------------------------------------------------------------------------------------------


def run(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *SMALL, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, **(env or {})}, **kw)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def worker_of(pid: int) -> int:
    """The rollout worker among ``pid``'s children (multiprocessing also starts a resource tracker)."""
    (worker,) = [c for c in children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return worker


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process ended early"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return sum(1 for r in metrics(out) if "reward" in r) if path.is_file() else 0


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_seeded_async_runs_are_identical_and_kill_9_then_resume_reproduces_them(tmp_path):
    a, b, killed = tmp_path / "a", tmp_path / "b", tmp_path / "killed"
    for out in (a, b):
        proc = run(["--max_steps", "10", "--save_steps", "3", "--output_dir", str(out)])
        assert proc.returncode == 0, proc.stderr[-2000:]
    ma, mb = metrics(a), metrics(b)
    assert [comparable(x) for x in ma] == [comparable(y) for y in mb]
    assert {r["async/staleness"] for r in ma if r["step"] >= 2} == {1.0}  # one-step-off once the pipeline is full
    assert all(r["sampling/importance_sampling_ratio/mean"] > 0 for r in ma)  # the correction is on by default
    ckpt = load_rank_file(a / "checkpoint-9", "in_flight", 0)
    assert list(ckpt) == ["10"] and ckpt["10"]["version"] == 8  # batch 10 in flight, sampled after step 8

    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMALL, "--max_steps", "10", "--save_steps", "3",
                          "--output_dir", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    wait_for(lambda: steps_logged(killed) >= 7, p)
    worker = children(p.pid)  # the rollout worker and multiprocessing's resource tracker
    assert worker_of(p.pid) in worker
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "final").exists(), "the run finished before the kill; the test proves nothing"
    deadline = time.time() + 10
    while any(alive(w) for w in worker) and time.time() < deadline:
        time.sleep(0.1)
    assert worker and not any(alive(w) for w in worker), "the worker outlived its killed trainer"
    step = int(latest_checkpoint(killed).name.split("-")[1])
    assert step == 6
    proc = run(["--max_steps", "10", "--save_steps", "3", "--output_dir", str(killed)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"at step {step}" in proc.stdout
    assert [comparable(x) for x in metrics(killed)] == [comparable(y) for y in ma]


@pytest.mark.slow
def test_a_corrupted_weight_in_the_worker_stops_the_run_naming_the_tensor(tmp_path):
    out = tmp_path / "run"
    proc = run(["--max_steps", "6", "--save_steps", "1", "--output_dir", str(out)],
               env={"GRPO_ZERO_WORKER_FAULT": "corrupt:2"})
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert "weight sync after step 2" in line and "'model.embed_tokens.weight' differs" in line, line
    last = latest_checkpoint(out)
    assert last is not None and int(last.name.split("-")[1]) <= 3  # stopped within a step of the bad sync


@pytest.mark.slow
@pytest.mark.parametrize("fault,expect", [("raise:3", "the rollout worker failed: RuntimeError: injected fault before "
                                                      "batch 3"),
                                          ("hang:3", "the rollout worker sent nothing for 4 s")])
def test_a_raising_or_hanging_worker_ends_the_run_with_one_line(tmp_path, fault, expect):
    out = tmp_path / "run"
    t0 = time.time()
    proc = run(["--max_steps", "6", "--save_steps", "1", "--rollout_timeout_s", "4", "--output_dir", str(out)],
               env={"GRPO_ZERO_WORKER_FAULT": fault})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert expect in one_error_line(proc.stderr)
    assert time.time() - t0 < 120
    assert latest_checkpoint(out) is not None  # steps 1-2 trained and saved before the fault
    proc = run(["--max_steps", "6", "--save_steps", "1", "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["step"] for r in metrics(out) if "reward" in r] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_worker_killed_mid_run_gives_one_line_keeps_the_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMALL, "--max_steps", "30", "--save_steps", "2",
                          "--output_dir", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    wait_for(lambda: steps_logged(out) >= 3, p)
    worker = worker_of(p.pid)
    t0 = time.time()
    os.kill(worker, signal.SIGKILL)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 1
    assert time.time() - t0 < 30
    assert "the rollout worker was killed by SIGKILL" in one_error_line(stderr)
    assert not children(p.pid) and not alive(worker)
    last = latest_checkpoint(out)
    assert last is not None
    proc = run(["--max_steps", str(int(last.name.split("-")[1]) + 2), "--save_steps", "2", "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_ctrl_c_stops_both_processes_and_saves_what_is_in_flight(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMALL, "--max_steps", "200", "--output_dir",
                          str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    wait_for(lambda: steps_logged(out) >= 2, p)
    worker = worker_of(p.pid)
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl+C: the whole process group
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-2000:]
    assert "stopped by signal after step" in stdout
    assert not alive(worker)
    ckpt = latest_checkpoint(out)
    step = int(ckpt.name.split("-")[1])
    assert list(load_rank_file(ckpt, "in_flight", 0)) == [str(step + 1)]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--use_peft", "true", "--learning_rate", "1e-3"],
                                   ["--num_iterations", "2", "--max_staleness", "2"],
                                   ["--dynamic_sampling", "true", "--eval_steps", "2"]])
def test_async_works_with_lora_iterations_and_dynamic_sampling(tmp_path, extra):
    out = tmp_path / "run"
    proc = run(["--max_steps", "4", "--output_dir", str(out), *extra])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [r for r in metrics(out) if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    staleness = int(extra[extra.index("--max_staleness") + 1]) if "--max_staleness" in extra else 1
    assert rows[-1]["async/staleness"] == staleness
    # the weights after step 1 sample batch 2 + staleness: sent (or step 1 changed nothing); the last steps' are
    # used by no batch of the run and are not sent
    assert rows[0]["weight_sync/bytes"] > 0 or rows[0]["skipped_update"]
    assert rows[-1]["weight_sync/bytes"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp.yaml"])
def test_one_worker_per_rank_under_ddp_and_fsdp2(tmp_path, config):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" / config),
           "--num_processes", "2", "--mixed_precision", "no", str(ROOT / "train.py"), *SMALL, "--max_steps", "3",
           "--output_dir", str(out), "--save_final_model", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in metrics(out) if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["completions/count"] == 32  # both ranks' workers sampled (16 completions each)
    # each rank's worker samples its own prompts with its own seed, and both ranks' samples are scored
    assert rows[-1]["async/staleness"] == 1
    for rank in (0, 1):
        assert load_rank_file(out / "checkpoint-3", "in_flight", rank) == {}


@pytest.mark.slow
def test_smoke_runs_a_recipe_with_async_rollouts(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" /
                           "qwen2.5-0.5b-gsm8k.yaml"), "--smoke", "--async_rollouts", "true", "--output_dir", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["async/staleness"] for r in metrics(out) if "reward" in r] == [0.0, 1.0]
