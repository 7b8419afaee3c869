"""Config loading, CLI overrides and the one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from grpo.cli import load_config, parse_cli
from grpo.config import ConfigError, GRPOConfig
from grpo.preflight import prepare

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_is_the_tiny_task():
    cfg = load_config([])
    assert cfg.model_name_or_path == "models/tiny-base"
    assert cfg.task == "arithmetic"
    assert cfg.rewards == {"accuracy": 1.0, "format": 0.1}


def test_cli_overrides_yaml_and_coerces_types(tmp_path):
    cfg = load_config(["--config", str(ROOT / "configs/default.yaml"), "--max_steps", "7", "--learning_rate=3e-5",
                       "--beta", "0.04", "--epsilon_high", "0.28", "--save_final_model", "false",
                       "--task_kwargs", "{max_terms: 4}", "--output_dir", str(tmp_path / "o"),
                       "--scale_rewards", "none", "--save_total_limit", "none"])
    assert cfg.scale_rewards == "none" and cfg.save_total_limit is None
    assert cfg.max_steps == 7 and isinstance(cfg.max_steps, int)
    assert cfg.learning_rate == pytest.approx(3e-5)
    assert cfg.beta == pytest.approx(0.04) and cfg.epsilon_high == pytest.approx(0.28)
    assert cfg.save_final_model is False
    assert cfg.task_kwargs == {"max_terms": 4}


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads "1e-4" as a string; users write it anyway.
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-4\n")
    assert load_config(["--config", str(path)]).learning_rate == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--not_a_key", "1"], "unknown config key 'not_a_key'"),
        (["--learning_rat", "1e-4"], "did you mean 'learning_rate'"),
        (["--max_steps", "ten"], "'max_steps' must be an int"),
        (["--max_steps", "1.5"], "'max_steps' must be an int"),
        (["--per_device_train_batch_size", "12"], "not divisible by num_generations = 8"),
        (["--num_generations", "1"], "config key 'num_generations' must be >= 2 (group advantages compare samples of "
                                     "the same prompt), got 1"),
        (["--num_generations", "0"], "config key 'num_generations' must be >= 2 (group advantages compare samples of "
                                     "the same prompt), got 0"),
        (["--loss_type", "ppo"], "must be one of grpo, bnpo, dr_grpo, dapo"),
        (["--config", "nope/missing.yaml"], "config file not found: nope/missing.yaml;"),
        (["--config", "configs/qwen2.5-05b-gsm8k.yaml"], f"(did you mean {ROOT}/configs/qwen2.5-0.5b-gsm8k.yaml?)"),
        (["--config", f"{ROOT}/examples/unit.yaml"], f"(did you mean {ROOT}/examples/units.yaml?)"),
        (["--rewards", "{accuracy: 1.0, acuracy: 1.0}"], "unknown reward 'acuracy'"),
        (["--task", "arithmetik"], "unknown task 'arithmetik'"),
        (["--max_steps"], "--max_steps needs a value"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_input_names_the_problem(argv, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/default from an earlier `accelerate launch train.py` in the way
    with pytest.raises(ConfigError) as e:
        prepare(argv)
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg


def test_unknown_yaml_key_with_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_generation: 8\n")
    with pytest.raises(ConfigError, match="did you mean 'num_generations'"):
        load_config(["--config", str(path)])


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot be written"):
        prepare(["--output_dir", str(blocker / "sub")])


def test_parse_cli_splits_config_and_overrides():
    path, overrides = parse_cli(["--config", "a.yaml", "--seed=3", "--beta", "0.1"])
    assert path == "a.yaml" and overrides == {"seed": "3", "beta": "0.1"}


def test_dataclass_defaults_validate():
    from grpo.config import validate

    validate(GRPOConfig(output_dir="/tmp/grpo-zero-test-default"))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--not_a_key", "1"], "not_a_key"),
        (["--config", "missing.yaml"], "config file not found"),
        (["--per_device_train_batch_size", "10"], "not divisible by num_generations"),
    ],
)
def test_cli_error_is_one_line_without_traceback_and_before_model_load(args, fragment):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err_lines) == 1, proc.stderr
    assert err_lines[0].startswith("error: ") and fragment in err_lines[0]
    assert "Traceback" not in proc.stderr
    assert "Loading weights" not in proc.stdout + proc.stderr


def test_help_lists_every_key():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 0
    for key in ("--num_generations", "--loss_type", "--max_completion_length", "--beta"):
        assert key in proc.stdout


def test_load_config_has_no_side_effects(tmp_path, monkeypatch):
    """Parsing a recipe with --smoke writes nothing: the stand-ins are built by preflight, not by load_config."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["--config", str(ROOT / "configs" / "qwen2.5-0.5b-gsm8k.yaml"), "--smoke"])
    assert cfg.smoke and cfg.model_name_or_path == "Qwen/Qwen2.5-0.5B"  # not swapped yet
    assert list(tmp_path.iterdir()) == []


def test_allowed_names_come_from_the_registries(monkeypatch):
    """A loss registered in grpo/core.py is a valid loss_type with no second edit."""
    from grpo import core

    with pytest.raises(ConfigError, match="loss_type"):
        load_config(["--loss_type", "my_loss"])
    monkeypatch.setitem(core.LOSS_AGGREGATIONS, "my_loss", core.LOSS_AGGREGATIONS["dapo"])
    assert load_config(["--loss_type", "my_loss"]).loss_type == "my_loss"


def _fake_run(out, argv):
    """An output folder that looks like a finished run of ``argv``: config.yaml, run_info.json, checkpoint-2."""
    import json

    import yaml

    from grpo.config import to_dict

    cfg = load_config([*argv, "--output_dir", str(out)])
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    (out / "run_info.json").write_text(json.dumps({"world_size": 1}))


def test_resume_mismatch_names_every_key_and_which_side_is_the_checkpoint(tmp_path):
    from grpo.preflight import prepare

    out = tmp_path / "run"
    _fake_run(out, [])
    changed = ["--num_generations", "4", "--seed", "7", "--beta", "0.01", "--temperature", "0.9", "--top_k", "5"]
    with pytest.raises(ConfigError) as e:
        prepare(["--output_dir", str(out), *changed])
    msg = str(e.value)
    assert "(checkpoint's value -> this run's)" in msg and "num_generations (8 -> 4)" in msg
    for key in ("num_generations", "seed", "beta", "temperature", "top_k"):
        assert key in msg
    assert "more" not in msg and "\n" not in msg


def test_a_refused_smoke_run_leaves_no_stand_ins_in_the_other_runs_folder(tmp_path):
    from grpo.errors import ConfigError
    from grpo.preflight import prepare

    out = tmp_path / "run"
    _fake_run(out, [])
    with pytest.raises(ConfigError, match="different experiment"):
        prepare(["--output_dir", str(out), "--smoke"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "config.yaml", "run_info.json"]


def test_resume_into_a_different_experiment_is_one_line(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, ["--task_kwargs", "{num_eval: 16}", "--num_generations", "8"])
    base = ["--output_dir", str(out)]
    with pytest.raises(ConfigError) as e:
        prepare([*base, "--task_kwargs", "{num_eval: 32}", "--num_generations", "8"])
    msg = str(e.value)
    assert "different experiment" in msg and "task_kwargs" in msg and "--overwrite_output_dir true" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="num_generations"):
        prepare([*base, "--task_kwargs", "{num_eval: 16}", "--num_generations", "4"])
    # run length and logging may change; overwrite_output_dir starts again
    prepare([*base, "--task_kwargs", "{num_eval: 16}", "--max_steps", "500", "--eval_steps", "3"])
    prepare([*base, "--task_kwargs", "{num_eval: 32}", "--overwrite_output_dir", "true"])


def test_resume_with_another_world_size_is_one_line(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fake_run(out, [])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="saved by 1 processes and this run has 2; launch with --num_processes 1"):
        prepare(["--output_dir", str(out)])


def test_eval_reward_needing_a_missing_column_fails_before_the_model_loads():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--eval_reward", "countdown"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs the column 'target'" in lines[0] and "arithmetic" in lines[0]
    assert "Loading weights" not in proc.stdout + proc.stderr


def test_sampling_correction_keys(tmp_path):
    """TRL's names; auto (None) by default; bounds and modes checked in one line."""
    from grpo.cli import help_text
    from grpo.correction import correction_enabled

    assert "--vllm_importance_sampling_correction" in help_text()
    out = ["--output_dir", str(tmp_path / "o")]
    cfg = load_config(out)
    assert cfg.vllm_importance_sampling_correction is None and cfg.vllm_importance_sampling_mode == "sequence_mask"
    assert not correction_enabled(cfg.vllm_importance_sampling_correction, cfg.rollout_backend)
    assert correction_enabled(cfg.vllm_importance_sampling_correction, cfg.rollout_backend, decode_copy=True)
    assert correction_enabled(None, "vllm") and not correction_enabled(False, "vllm")
    on = load_config([*out, "--vllm_importance_sampling_correction", "true"])
    assert correction_enabled(on.vllm_importance_sampling_correction, on.rollout_backend)
    for argv, fragment in [
        (["--vllm_importance_sampling_mode", "token"], "must be one of token_truncate, token_mask"),
        (["--vllm_importance_sampling_clip_min", "2", "--vllm_importance_sampling_clip_max", "1"], "must be below"),
        (["--vllm_importance_sampling_mode", "token_truncate", "--vllm_importance_sampling_clip_max", "none"],
         "needs vllm_importance_sampling_clip_max"),
    ]:
        with pytest.raises(ConfigError, match=fragment) as err:
            load_config([*out, *argv])
        assert "\n" not in str(err.value)


def test_help_shows_the_values_a_bare_run_uses_and_says_config_replaces_the_recipe():
    """One source of defaults: --help reads configs/default.yaml, the file a bare run loads."""
    import yaml

    from grpo.cli import help_text
    from grpo.paths import DEFAULT_CONFIG

    text = help_text()
    bare = load_config([])
    for key in yaml.safe_load(DEFAULT_CONFIG.read_text()):
        line = next(line for line in text.splitlines() if line.startswith(f"  --{key} ("))
        assert line.startswith(f"  --{key} ({getattr(bare, key)!r}"), line  # the bare run's value comes first
    assert "  --max_steps (60 [100])" in text and "  --loss_type ('dr_grpo' ['dapo'])" in text
    assert "--config FILE replaces that recipe" in text and "not on default.yaml" in text
