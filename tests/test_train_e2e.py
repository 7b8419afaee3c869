"""End to end on the bundled tiny base model: learning happens, and data parallelism really runs 2 ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.cli import load_config
from grpo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_short_run_learns_accuracy_length_and_reflection(tmp_path):
    """A short fixed-seed run (about 25 s): held-out accuracy and response length go up from the pre-update eval,
    and the share of sampled completions that check their work ("check" / "wait", rare in the base) rises."""
    cfg = load_config(["--max_steps", "32", "--eval_steps", "16", "--per_device_train_batch_size", "64",
                       "--learning_rate", "3e-4", "--task_kwargs", "{num_eval: 128}", "--eval_batch_size", "128",
                       "--seed", "0", "--output_dir", str(tmp_path), "--cpu_threads", "1"])
    summary = Trainer(cfg).train()
    first, last = summary["first_eval"], summary["last_eval"]
    assert last["eval/accuracy"] >= first["eval/accuracy"] + 0.3, (first, last)
    assert last["eval/mean_length"] >= 1.3 * first["eval/mean_length"], (first, last)

    rows = read_metrics(tmp_path)
    train = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train] == list(range(1, 33))
    early = sum(r["rewards/accuracy/mean"] for r in train[:2]) / 2
    late = sum(r["rewards/accuracy/mean"] for r in train[-2:]) / 2
    assert late > early + 0.3, (early, late)
    # The "aha moment": the base checks its work in a few percent of its samples, the trained policy in most.
    reflection = [r["reasoning/reflection_ratio"] for r in train]
    assert sum(reflection[:2]) / 2 < 0.10 and sum(reflection[-4:]) / 4 > 0.5, reflection
    for key in ("reward", "reward_std", "rewards/accuracy/mean", "rewards/format/mean", "frac_reward_zero_std",
                "completions/mean_length", "completions/min_length", "completions/max_length",
                "completions/clipped_ratio", "loss", "grad_norm", "learning_rate", "entropy", "clip_ratio",
                "time/rollout_s", "time/reward_s", "time/update_s", "time/step_s",
                "throughput/completion_tokens_per_s"):
        assert key in train[0], key
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 16, 32]

    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["world_size"] == 1 and info["seed"] == 0
    for key in ("torch", "transformers", "accelerate", "trl", "git_commit", "device", "start_time"):
        assert key in info
    assert (tmp_path / "config.yaml").is_file()
    # The final model is a normal HF checkpoint that loads back.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    AutoTokenizer.from_pretrained(tmp_path / "final")


@pytest.mark.slow
def test_two_process_data_parallel_on_cpu(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` runs 2 gloo ranks on a CPU machine; both contribute."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    out = tmp_path / "ddp"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", "29517", str(ROOT / "train.py"),
           "--max_steps", "2", "--per_device_train_batch_size", "16", "--eval_steps", "2",
           "--task_kwargs", "{num_eval: 32}", "--eval_batch_size", "32", "--output_dir", str(out),
           "--cpu_threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    train = [r for r in read_metrics(out) if "reward" in r]
    # Metrics are gathered over ranks: each step counts both ranks' 16 completions.
    assert [r["completions/count"] for r in train] == [32, 32]
    assert (out / "final" / "model.safetensors").is_file()
