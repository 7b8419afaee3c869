"""Rewards written for TRL run unchanged here: each TRL calling convention through a real short training, and the
same functions under TRL's own ``GRPOTrainer`` to show both trainers pass them the same arguments.

The conventions (``tests/trl_style_rewards.py``): text completions, conversational completions (``template:
chat``), ``completion_ids``, ``trainer_state``, ``log_metric`` / ``log_extra``, ``async def``, returning ``None``.
Both trainers run offline on CPU on the bundled tiny base (a copy given a minimal chat template), 2 steps each.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # trl_style_rewards, named by dotted path in the configs below

import trl_style_rewards as R

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
COMMON = ["record", "ids_reward", "state_reward", "logging_reward", "async_reward", "none_reward"]
CONVENTION_KEYS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "answer")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/tiny-base with a minimal chat template, so ``template: chat`` (and TRL's conversational path) run."""
    path = tmp_path_factory.mktemp("tiny-chat") / "model"
    shutil.copytree(ROOT / "models" / "tiny-base", path)
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg))
    return path


def _rewards(chat: bool) -> list[str]:
    return ["conversational_reward" if chat else "text_reward", *COMMON]


def _run_ours(tmp: Path, model: Path, chat: bool, record: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two steps of grpo-zero's trainer with every convention's reward, named TRL-style as ``module.function``."""
    from grpo.preflight import prepare
    from grpo.trainer import Trainer

    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+{i}", "answer": str(2 * i)}) + "\n" for i in range(8)))
    out = tmp / ("ours-chat" if chat else "ours-text")
    config = {
        "model_name_or_path": str(model), "task": "dataset",
        "task_kwargs": {"path": str(data), "template": "chat" if chat else "plain", "num_eval": 2},
        "rewards": {f"trl_style_rewards.{name}": 1.0 for name in _rewards(chat)},
        "num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 8, "max_steps": 2,
        "eval_steps": 0, "save_steps": 0, "save_final_model": False, "cpu_threads": 1, "output_dir": str(out),
        "log_completions_steps": 1,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("TRL_COMPAT_RECORD", str(record))
    cfg, task = prepare(["--config", str(path)])
    Trainer(cfg, task).train()
    return out


def _run_trl(tmp: Path, model: Path, chat: bool, record: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Two steps of TRL's own GRPOTrainer with the same reward functions. Returns its log history."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": [{"role": "user", "content": f"{i}+{i}"}] if chat else f"{i}+{i}", "answer": str(2 * i)}
            for i in range(4)]
    args = GRPOConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, max_steps=2, use_cpu=True, report_to="none", logging_steps=1,
                      save_strategy="no", bf16=False, disable_tqdm=True)
    monkeypatch.setenv("TRL_COMPAT_RECORD", str(record))
    trainer = GRPOTrainer(model=str(model), reward_funcs=[getattr(R, name) for name in _rewards(chat)], args=args,
                          train_dataset=Dataset.from_list(rows))
    trainer.train()
    return trainer.state.log_history


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("chat", [False, True], ids=["text", "chat"])
def test_trl_rewards_get_the_same_arguments_from_both_trainers(tmp_path, chat_model, monkeypatch, chat):
    ours_rec, trl_rec = tmp_path / "ours.jsonl", tmp_path / "trl.jsonl"
    out = _run_ours(tmp_path, chat_model, chat, ours_rec, monkeypatch)
    history = _run_trl(tmp_path, chat_model, chat, trl_rec, monkeypatch)
    ours, theirs = _records(ours_rec), _records(trl_rec)

    # The same argument names and structures (dataset columns aside: ours also pass question, completion_lengths).
    form = "list[list[message]]" if chat else "list[str]"
    for call in ours + theirs:
        assert call["shapes"]["completions"] == form and call["shapes"]["prompts"] == form
    assert {k: ours[0]["shapes"][k] for k in CONVENTION_KEYS} == {k: theirs[0]["shapes"][k] for k in CONVENTION_KEYS}
    assert ours[0]["shapes"]["completion_ids"] == "list[list[int]]"
    assert ours[0]["shapes"]["trainer_state"] == "state"
    # trainer_state counts finished steps as TRL's does: 0 while the first batch is scored, then 1.
    assert [c["state"] for c in ours] == [c["state"] for c in theirs] == [{"global_step": s, "max_steps": 2}
                                                                            for s in (0, 1)]
    assert all(1 <= n <= 8 for c in ours for n in c["ids_lengths"])  # EOS included, no padding, as TRL

    # Every convention's reward trained here: the values TRL logs for the same functions where they are fixed.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step1, step2 = (next(r for r in rows if r.get("step") == s and "reward" in r) for s in (1, 2))
    trl1, trl2 = (h for h in history if "reward" in h)
    key = "rewards/trl_style_rewards.{}/mean"
    for name in ("async_reward", "none_reward"):  # 0.5 awaited; None left out of the mean, so 1.0
        assert step1[key.format(name)] == trl1[f"rewards/{name}/mean"] == {"async_reward": 0.5, "none_reward": 1.0}[name]
    assert step1[key.format("state_reward")] == trl1["rewards/state_reward/mean"] == 0.0
    assert step2[key.format("state_reward")] == trl2["rewards/state_reward/mean"] == 0.5
    assert 0.0 <= step1["rewards/trl_style_rewards.logging_reward/odd_share"] <= 1.0  # log_metric, under the reward
    assert "odd_share" in trl1
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    parity = {c["verdicts"]["trl_style_rewards.logging_reward"]["parity"] for c in completions}
    assert parity <= {"odd", "even"} and parity  # log_extra: one value per sample in completions.jsonl


# --- the convention piece by piece, without a model ---------------------------------------------------------------

def _score(names: list[str], prompts: list, deadline_s: float | None = None) -> tuple:
    from rewards.calling import TrainerState
    from rewards.combine import build_rewards, score

    spec = {name: ({"weight": 1.0, "deadline_s": deadline_s} if deadline_s else 1.0) for name in names}
    completions = ["<think>2+2=4</think> <answer>4</answer>", "no"]
    notes: list[dict] = [{}, {}]
    out = score(build_rewards(spec), completions, [{"answer": "4"}] * 2, prompts, completion_lengths=[5, 2],
                notes=notes, completion_ids=[[1, 2, 3, 4, 2], [7, 2]], trainer_state=TrainerState(3, 10, 0.5))
    return (*out, notes)


def test_dotted_and_colon_paths_resolve_to_the_same_function():
    import rewards

    assert rewards.get("trl_style_rewards.ids_reward") is rewards.get("trl_style_rewards:ids_reward") is R.ids_reward
    with pytest.raises(KeyError, match="did you mean 'ids_reward'"):
        rewards.get("trl_style_rewards.id_reward")
    with pytest.raises(KeyError, match="did you mean 'accuracy'"):
        rewards.get("acuracy")
    with pytest.raises(KeyError, match="no module 'not_here_mod' on the Python path; run from the folder"):
        rewards.get("not_here_mod.fn")


def test_builtin_rewards_take_both_completion_forms():
    chat = [[{"role": "user", "content": "2+2"}]] * 2
    total_text, per_text, _, _ = _score(["accuracy", "format"], ["2+2"] * 2)
    total_chat, per_chat, _, _ = _score(["accuracy", "format"], chat)
    assert per_text["accuracy"].tolist() == per_chat["accuracy"].tolist() == [1.0, 0.0]
    assert total_text.tolist() == total_chat.tolist()
    import rewards

    message = [[{"role": "assistant", "content": "<think>x</think> <answer>4</answer>"}]]
    assert rewards.get("accuracy")(completions=message, answer=["4"]) == [1.0]  # called directly, TRL-style


@pytest.mark.parametrize("deadline_s", [None, 30.0], ids=["in_process", "worker"])
def test_each_convention_in_process_and_in_the_worker_pool(deadline_s):
    names = [f"trl_style_rewards:{n}" for n in ("conversational_reward", "ids_reward", "state_reward",
                                                "logging_reward", "async_reward", "none_reward")]
    chat = [[{"role": "user", "content": "2+2"}]] * 2
    _, per, metrics, notes = _score(names, chat, deadline_s)
    got = {n.split(":")[1]: [None if math.isnan(v) else round(v, 4) for v in per[n].tolist()] for n in names}
    assert got == {"conversational_reward": [1.0, 0.0], "ids_reward": [round(1 / 6, 4), round(1 / 3, 4)],
                   "state_reward": [0.3, 0.3], "logging_reward": [got["logging_reward"][0], got["logging_reward"][1]],
                   "async_reward": [0.5, 0.5],
                   # none_reward returns None at odd batch indices; the worker pool calls it per chunk of 1 sample
                   "none_reward": [1.0, None] if deadline_s is None else [1.0, 1.0]}
    parity = [n["trl_style_rewards:logging_reward"]["parity"] for n in notes]
    assert parity == ["odd" if v else "even" for v in got["logging_reward"]]
    assert metrics["rewards/trl_style_rewards:logging_reward/odd_share"] == sum(got["logging_reward"]) / 2


def test_log_metric_values_are_averaged_over_ranks_not_summed():
    from grpo.metrics import combine

    _score(["trl_style_rewards:logging_reward"], ["a", "b"])
    key = "rewards/trl_style_rewards:logging_reward/odd_share"
    assert combine([{key: 1.0}, {key: 0.0}])[key] == 0.5
    assert combine([{"rewards/x/errors": 1.0}, {"rewards/x/errors": 2.0}])["rewards/x/errors"] == 3.0


def test_a_reward_asking_for_trl_arguments_is_not_refused_as_a_missing_column(tmp_path):
    from grpo.errors import ConfigError
    from grpo.preflight import prepare

    base = ["--output_dir", str(tmp_path / "out"), "--eval_steps", "0"]
    prepare([*base, "--rewards", "{trl_style_rewards.ids_reward: 1.0, trl_style_rewards.state_reward: 1.0}"])
    with pytest.raises(ConfigError, match="eval_reward 'trl_style_rewards.ids_reward' needs 'completion_ids', which "
                                          "the held-out eval does not pass"):
        prepare([*base, "--eval_reward", "trl_style_rewards.ids_reward"])


def test_a_text_reward_under_a_chat_template_is_told_the_fix():
    """TRL passes message lists under a chat template; a reward written for text fails there, as under TRL, but with
    one line that names the two fixes."""
    from rewards.combine import RewardError

    chat = [[{"role": "user", "content": "2+2"}]] * 2
    with pytest.raises(RewardError, match=r"message lists, as TRL passes them: read completion\[0\]\['content'\] or "
                                          r"decorate the reward with @rewards.accepts_messages") as e:
        _score(["trl_style_rewards.upper_share"], chat)
    assert "\n" not in str(e.value)
    _, per, _, _ = _score(["trl_style_rewards.upper_share"], ["2+2"] * 2)  # the same reward on text templates
    assert per["trl_style_rewards.upper_share"].tolist() == [0.0, 0.0]
