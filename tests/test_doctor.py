"""``python -m grpo.doctor`` / ``train.py --doctor``: each verdict on the bundled tiny base, and the exit codes."""

from __future__ import annotations

import pytest

import train
from grpo.cli import load_config
from grpo.doctor import NO_SIGNAL, Findings, flat_share, gold_completion, main, split_prompts, verdict

BOXED = "{accuracy: {weight: 1.0, kwargs: {answer_format: boxed}}}"


def _run(capsys, tmp_path, *argv: str) -> tuple[int, str]:
    code = main(["--prompts", "4", "--output_dir", str(tmp_path / "out"), *argv])
    return code, capsys.readouterr().out


def test_default_run_has_signal(capsys, tmp_path):
    code, out = _run(capsys, tmp_path)
    assert code == 0, out
    assert "verdict: signal:" in out and "gold answer scores 1.00" in out
    assert "format compliance (r1: contains an <answer> block)" in out and "tokens/s" in out
    assert not (tmp_path / "out").exists()  # trains nothing, writes nothing


def test_boxed_reward_on_an_r1_model_has_no_signal_and_names_the_fix(capsys, tmp_path):
    code, out = _run(capsys, tmp_path, "--rewards", BOXED)
    assert code == NO_SIGNAL, out
    assert "reward accuracy     mean 0.000  nonzero 0.00" in out
    verdict_line = out.strip().splitlines()[-1]
    assert verdict_line.startswith("verdict: NO SIGNAL: 0 of 32 completions contain \\boxed{}"), verdict_line
    assert "answer_format: last_number (it scores" in verdict_line


def test_train_py_doctor_flag(capsys, tmp_path):
    code = train.main(["--doctor", "--prompts", "2", "--rewards", BOXED, "--output_dir", str(tmp_path / "o")])
    assert code == NO_SIGNAL
    assert "verdict: NO SIGNAL" in capsys.readouterr().out


def test_bad_config_is_one_line_exit_2(capsys, tmp_path):
    assert main(["--prompts", "0"]) == 2
    assert main(["--learning_rat", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --prompts needs a whole number >= 1, got '0'",
                   "error: unknown config key 'learning_rat'; did you mean 'learning_rate'?"]


def _findings(**kw) -> Findings:
    base = {"n": 32, "groups": 4, "reward_mean": {"accuracy": 0.5}, "reward_nonzero": {"accuracy": 0.5},
            "total_mean": 0.5, "flat_groups": 0.0, "answer_format": "r1", "compliant": 1.0,
            "gold_scores": {"accuracy": 1.0}, "eval_reward": "accuracy", "last_number_acc": None, "mean_length": 20.0,
            "max_length": 40, "truncated": 0.0, "tokens_per_s": 100.0}
    return Findings(**{**base, **kw})


VERDICTS = [  # (name, findings, has signal, words in the verdict)
    ("signal", {}, True, "signal: 4 of 4 groups"),
    ("gold cannot score", {"gold_scores": {"accuracy": 0.0}}, False, "the verifier cannot give credit"),
    ("truncated", {"flat_groups": 1.0, "truncated": 0.9, "compliant": 0.1}, False, "raise max_completion_length"),
    ("no format and truncated", {"flat_groups": 1.0, "truncated": 0.8, "compliant": 0.0, "answer_format": "boxed",
                                 "last_number_acc": 0.28},
     False, ("contain \\boxed{}: the model does not follow this template; try a template that asks for \\boxed{}, or "
            "answer_format: last_number (it scores 0.28 on these same completions); 80% of completions hit "
            "max_completion_length 96, so also try a larger")),
    ("no format", {"flat_groups": 1.0, "compliant": 0.0, "reward_mean": {"accuracy": 0.0}, "last_number_acc": 0.6},
     False, "0 of 32 completions contain an <answer> block"),
    ("too easy", {"flat_groups": 1.0, "reward_mean": {"accuracy": 1.0}}, False, "too easy"),
    ("too hard", {"flat_groups": 1.0, "reward_mean": {"accuracy": 0.0}}, False, "too hard"),
    ("little signal", {"flat_groups": 0.95}, False, "raise temperature or num_generations"),
]


@pytest.mark.parametrize("name,kw,ok,words", VERDICTS, ids=[v[0] for v in VERDICTS])
def test_verdicts(name, kw, ok, words, tmp_path):
    cfg = load_config(["--output_dir", str(tmp_path)])
    has_signal, line = verdict(_findings(**kw), cfg)
    assert has_signal is ok and words in line, line


def test_chat_template_without_system_prompt_suggests_one(tmp_path):
    cfg = load_config(["--output_dir", str(tmp_path), "--task", "sums", "--task_kwargs", "{template: chat}"])
    _, line = verdict(_findings(flat_groups=1.0, compliant=0.0, answer_format="boxed", last_number_acc=0.59), cfg)
    assert "try template: chat with system_prompt: qwen_math" in line and "scores 0.59" in line


def test_helpers():
    import torch

    assert flat_share(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2) == pytest.approx(2 / 3)
    assert gold_completion("7", "last_number") == "The answer is 7."
    assert gold_completion("7", "r1", prefilled_think=True) == "7</think><answer>7</answer>"
    assert split_prompts(["--prompts=3", "--seed", "1"]) == (3, ["--seed", "1"])
