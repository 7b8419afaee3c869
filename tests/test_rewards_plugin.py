"""A verifier in the user's own module, named only in the YAML config, is picked up by ``train.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import rewards
from rewards.combine import build_rewards, score

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = '''
import rewards


def myreward(completions, answer, **columns):
    """1.0 if the completion mentions the gold answer anywhere (a deliberately loose check)."""
    rewards.report("calls", 1)
    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]


def broken(completions, **columns):
    raise RuntimeError("my verifier is broken")


@rewards.register("always_one")
def always_one(completions, **columns):
    return [1.0] * len(completions)


def stuck(completions, **columns):
    import time

    time.sleep(3600)
'''


def _train(tmp_path: Path, reward_spec: dict, steps: int = 1) -> subprocess.CompletedProcess:
    (tmp_path / "mymod.py").write_text(USER_MODULE)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": "models/tiny-base", "task": "arithmetic", "rewards": reward_spec,
        "num_generations": 8, "max_completion_length": 40, "learning_rate": 1.0e-4, "cpu_threads": 1,
    }))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--output_dir", str(tmp_path / "out"),
           "--max_steps", str(steps), "--eval_steps", "0", "--per_device_train_batch_size", "16",
           "--save_final_model", "false"]
    return subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_train_picks_up_user_verifier_by_config_alone(tmp_path):
    proc = _train(tmp_path, {"mymod:myreward": 1.0, "format": 0.1})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if r.get("step") == 1 and "reward" in r)
    assert 0.0 <= step["rewards/mymod:myreward/mean"] <= 1.0
    assert step["rewards/mymod:myreward/calls"] == 1
    assert step["rewards/mymod:myreward/errors"] == 0
    assert "rewards/format/mean" in step


def test_train_stops_with_one_clear_error_from_a_raising_verifier(tmp_path):
    proc = _train(tmp_path, {"mymod:broken": 1.0})
    assert proc.returncode != 0
    assert "reward 'mymod:broken' failed on sample 0" in proc.stderr
    assert "RuntimeError: my verifier is broken" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_hanging_verifier_with_deadline_costs_steps_seconds_not_the_run(tmp_path):
    t0 = time.perf_counter()
    proc = _train(tmp_path, {"accuracy": 1.0, "mymod:stuck": {"weight": 0.1, "deadline_s": 2}, "mymod:always_one": 0.1},
                  steps=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["rewards/mymod:stuck/timeouts"] == 16 and r["rewards/mymod:stuck/mean"] == 0.0
        assert r["rewards/mymod:always_one/mean"] == 1.0  # a registered name, found through its module
        assert r["time/reward_s"] < 30
    assert time.perf_counter() - t0 < 280


UNIT_CASES = {
    "same unit": ("3000 m", "3000 m", 1.0),
    "converted": ("3000 m", "3 km", 1.0),
    "plural word": ("3000 meters", "3 km", 1.0),
    "latex text unit": ("$3\\text{ km}$", "3000 m", 1.0),
    "thousands": ("3,000 m", "3 km", 1.0),
    "wrong value": ("300 m", "3 km", 0.0),
    "wrong dimension": ("3 kg", "3 km", 0.0),
    "no unit in answer": ("3", "3 km", 0.0),
    "gold without unit": ("3 km", "3", None),
}


@pytest.mark.parametrize("pred,gold,expected", UNIT_CASES.values(), ids=UNIT_CASES.keys())
def test_example_unit_verifier(pred, gold, expected):
    fn = rewards.get("examples.unit_verifier:unit_reward")  # resolved by dotted path, as the YAML does
    assert fn(completions=[f"<think>convert</think><answer>{pred}</answer>"], answer=[gold]) == [expected]


def test_example_unit_verifier_through_score():
    specs = build_rewards({"examples.unit_verifier:unit_reward": {"kwargs": {"rel_tol": 1e-6}, "on_error": "zero"}})
    completions = ["<answer>3000 m</answer>", "<answer>3 kg</answer>", "<answer>1</answer>"]
    rows = [{"answer": "3 km"}, {"answer": "3 km"}, {"answer": "1"}]
    total, per, metrics = score(specs, completions, rows, ["p"] * 3)
    assert total.tolist() == [1.0, 0.0, 0.0]
    assert per["examples.unit_verifier:unit_reward"][:2].tolist() == [1.0, 0.0]
    assert metrics["rewards/examples.unit_verifier:unit_reward/wrong_dimension"] == 1.0
