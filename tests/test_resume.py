"""Runs that survive: exact resume after kill -9, atomic checkpoints, signals, non-finite steps."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grpo.checkpoint import latest_checkpoint, list_checkpoints
from grpo.cli import load_config
from grpo.errors import TrainingError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--per_device_train_batch_size", "16", "--eval_steps", "3", "--task_kwargs", "{num_eval: 32}",
         "--eval_batch_size", "32", "--seed", "3", "--cpu_threads", "1"]
# Wall-clock metrics differ between runs by nature; everything else must match exactly.
VOLATILE = ("time/", "throughput/")


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *SMALL, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, **kw)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process ended early"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = run(["--max_steps", "9", "--save_steps", "3", "--output_dir", str(full)])
    assert proc.returncode == 0, proc.stderr[-2000:]

    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMALL, "--max_steps", "9", "--save_steps", "3",
                          "--output_dir", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    wait_for(lambda: latest_checkpoint(killed) is not None, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not (killed / "final").exists(), "the run finished before the kill; the test proves nothing"
    ckpt_step = int(latest_checkpoint(killed).name.split("-")[1])
    assert ckpt_step <= 6  # so at least 3 steps run after the checkpoint

    proc = run(["--max_steps", "9", "--save_steps", "3", "--output_dir", str(killed)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resuming from {killed / f'checkpoint-{ckpt_step}'} at step {ckpt_step}" in proc.stdout
    a, b = metrics(full), metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # no duplicated or missing rows
    after = [(x, y) for x, y in zip(a, b) if x["step"] > ckpt_step and "reward" in x]
    assert len(after) >= 3
    for x, y in zip(a, b):
        assert comparable(x) == comparable(y), (x["step"], x, y)


KILL_DURING_SAVE = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
from accelerate import Accelerator
from grpo.cli import load_config
from grpo.trainer import Trainer
cfg = load_config({args!r})
trainer = Trainer(cfg)
trainer.logger.start()
trainer.logger.log(1, trainer.step(1))
trainer.save_checkpoint(1)
trainer.logger.log(2, trainer.step(2))
real_save = Accelerator.save_state
def dying_save(self, output_dir, **kw):
    real_save(self, output_dir, **kw)  # the weights are on disk, the state file is not yet
    os.kill(os.getpid(), signal.SIGKILL)
Accelerator.save_state = dying_save
trainer.save_checkpoint(2)
"""


@pytest.mark.slow
def test_kill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    out = tmp_path / "run"
    args = [*SMALL, "--max_steps", "4", "--output_dir", str(out)]
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE.format(root=str(ROOT), args=args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / ".tmp-checkpoint-2").is_dir()  # the interrupted save
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1"]

    proc = run(["--max_steps", "4", "--save_steps", "2", "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stdout and "checkpoint-1 at step 1" in proc.stdout
    assert not (out / ".tmp-checkpoint-2").exists()  # cleaned up by the next save
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]  # save_total_limit 2
    assert [r["step"] for r in metrics(out) if "reward" in r] == [1, 2, 3, 4]


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMALL, "--max_steps", "200", "--output_dir",
                          str(out), "--eval_steps", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    wait_for(lambda: (out / "metrics.jsonl").is_file() and len(metrics(out)) >= 1, p)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-2000:]
    assert "SIGTERM received" in stderr and "stopped by signal after step" in stdout
    ckpt = latest_checkpoint(out)
    assert ckpt is not None
    step = int(ckpt.name.split("-")[1])
    assert [r["step"] for r in metrics(out)] == list(range(1, step + 1))
    assert not (out / "final").exists()


@pytest.mark.slow
def test_second_signal_exits_at_once(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMALL, "--max_steps", "200", "--output_dir",
                          str(out), "--eval_steps", "0", "--per_device_train_batch_size", "128"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.jsonl").is_file() and len(metrics(out)) >= 1, p)
    p.send_signal(signal.SIGINT)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=300)
    assert p.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert "second SIGINT: exiting now" in stderr


def test_nonfinite_loss_is_skipped_and_counted_then_stops(tmp_path, monkeypatch):
    from grpo import trainer as trainer_mod

    cfg = load_config([*SMALL, "--max_steps", "6", "--eval_steps", "0", "--output_dir", str(tmp_path),
                       "--max_bad_steps", "3", "--save_final_model", "false"])
    t = trainer_mod.Trainer(cfg)
    real_loss = trainer_mod.core.policy_loss
    poison = {"on": False}

    def maybe_nan(*args, **kwargs):
        loss, m = real_loss(*args, **kwargs)
        return (loss * math.nan, m) if poison["on"] else (loss, m)

    monkeypatch.setattr(trainer_mod.core, "policy_loss", maybe_nan)
    t.logger.start()
    t.step(1)
    poison["on"] = True
    before = [p.detach().clone() for p in t.model.parameters()]
    m = t.step(2)
    assert m["skipped_nonfinite"] == 1.0 and not math.isfinite(m["grad_norm"])
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))  # no update applied
    for name, state in t.optimizer.state_dict()["state"].items():
        assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v)), name

    poison["on"] = False
    t2 = trainer_mod.Trainer(cfg)
    monkeypatch.setattr(trainer_mod.core, "policy_loss", lambda *a, **k: (real_loss(*a, **k)[0] * math.nan, {}))
    with pytest.raises(TrainingError, match=r"stopping at step 3: 3 steps in a row"):
        t2.train()


def test_overwrite_output_dir_starts_fresh_and_finished_run_says_so(tmp_path):
    proc = run(["--max_steps", "2", "--save_steps", "1", "--eval_steps", "0", "--output_dir", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(["--max_steps", "2", "--save_steps", "1", "--eval_steps", "0", "--output_dir", str(tmp_path)])
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    proc = run(["--max_steps", "1", "--save_steps", "1", "--eval_steps", "0", "--output_dir", str(tmp_path),
                "--overwrite_output_dir", "true"])
    assert proc.returncode == 0 and "resuming" not in proc.stdout
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert [r["step"] for r in metrics(tmp_path)] == [1]


def test_resume_from_named_checkpoint(tmp_path):
    proc = run(["--max_steps", "3", "--save_steps", "1", "--save_total_limit", "null", "--eval_steps", "0",
                "--output_dir", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(["--max_steps", "3", "--eval_steps", "0", "--output_dir", str(tmp_path), "--resume_from_checkpoint",
                str(tmp_path / "checkpoint-1")])
    assert proc.returncode == 0 and "checkpoint-1 at step 1" in proc.stdout
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3]


def test_optimizer_is_fused_adamw_with_the_same_step_as_torchs_default():
    """AdamW runs as one fused kernel (as transformers' Trainer, hence TRL, does), with the update torch's
    per-tensor default computes to float rounding; a model with integer (quantised, frozen) weights keeps the
    default, which torch would otherwise refuse."""
    from grpo.accelerator import build_optimizer

    cfg = load_config(["--learning_rate", "1e-3", "--weight_decay", "0.1", "--max_steps", "4"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    start = [p.detach().clone() for p in model.parameters()]
    optimizer, _ = build_optimizer(cfg, model)
    assert optimizer.defaults["fused"] is True
    plain = torch.optim.AdamW(reference, lr=1e-3, weight_decay=0.1, betas=(cfg.adam_beta1, cfg.adam_beta2))
    for _ in range(3):
        grads = [torch.randn_like(p) for p in reference]
        for p, q, g in zip(model.parameters(), reference, grads):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer.step()
        plain.step()
    for p, q, p0 in zip(model.parameters(), reference, start):
        assert (p.detach() - p0).abs().max() > 1e-3  # three steps of lr 1e-3 moved every tensor
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)

    model.codes = torch.nn.Parameter(torch.zeros(4, dtype=torch.int8), requires_grad=False)
    optimizer, _ = build_optimizer(cfg, model)
    assert not optimizer.defaults["fused"]


def test_save_steps_0_saves_at_the_end_and_a_rerun_summarises_the_run_from_its_logs(tmp_path):
    args = ["--max_steps", "2", "--save_steps", "0", "--eval_steps", "2", "--output_dir", str(tmp_path)]
    proc = run(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]  # "0 = only at the end"
    first_done = next(line for line in proc.stdout.splitlines() if line.startswith("done:"))
    rows = metrics(tmp_path)
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    logged_s = sum(r["time/step_s"] for r in rows if "reward" in r)
    proc = run(args)  # the finished run, rerun: nothing to train, the summary still describes the run
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    assert f"eval accuracy {evals[0]:.3f} -> {evals[-1]:.3f}" in proc.stdout
    done = next(line for line in proc.stdout.splitlines() if line.startswith("done:"))
    assert done.startswith("done: 2 steps in ") and first_done.startswith("done: 2 steps in ")
    seconds = int(done.removeprefix("done: 2 steps in ").removesuffix("s"))  # under a minute: "<n>s"
    assert seconds >= int(logged_s)  # the logged step times, not this session's 0 s
