"""Tool turns through a whole run: the config keys, the run's toolbox (built once, closed at the end), LoRA and
2-rank DDP training with calls happening, rewards receiving the transcript and the ``tool_calls`` column, the
``tools/*`` metrics and completions.jsonl. The bundled tiny base cannot write a fenced block, so the runs that need
calls swap the toolbox for the test double (tests/tool_doubles.py: calls end after some digits); the real
calculator toolbox is checked on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tool_doubles import FakeToolbox

import grpo.tools
from grpo.cli import load_config
from grpo.errors import ConfigError
from grpo.rollout import backend_for_run
from grpo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TOOL_ARGS = ["--tools", "[calculator]", "--max_tool_calls", "2", "--tool_timeout_s", "3", "--tool_workers", "1"]
SMALL = ["--per_device_train_batch_size", "16", "--num_generations", "4", "--eval_steps", "0", "--cpu_threads", "1",
         "--max_completion_length", "40", "--save_final_model", "false", "--log_completions_steps", "1"]
SEEN: list[dict] = []  # what tool_reward received, per call


def tool_reward(completions: list[str], tool_calls: list[list[dict]], **kwargs) -> list[float]:
    """A reward that reads the tool_calls column: 1 per completion that called a tool without error."""
    SEEN.append({"completions": list(completions), "tool_calls": tool_calls})
    return [float(any(c["error"] is None for c in calls)) for calls in tool_calls]


@pytest.mark.parametrize("args, message", [
    (["--tool_syntax", "xml"], "tool_syntax must be one of fenced, chat; got 'xml'"),
    (["--max_tool_calls", "0"], "'max_tool_calls' must be >= 1, got 0"),
    (["--tool_timeout_s", "0"], "tool_timeout_s must be > 0 seconds"),
    (["--tool_memory_mb", "16"], "'tool_memory_mb' must be >= 64, got 16"),
    (["--tools", "[1]"], "tools must be a list of tool names"),
])
def test_bad_tool_options_are_one_line_errors(args, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(args)
    assert "\n" not in str(err.value)


def test_the_runs_toolbox_is_built_from_the_config_and_closed(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "tiny-base")
    backend = backend_for_run(load_config([*TOOL_ARGS, "--output_dir", str(tmp_path)]), tok, "models/tiny-base")
    box = backend.toolbox
    assert isinstance(box, grpo.tools.Toolbox) and box.names == ["calculator"] and box.max_tool_calls == 2
    text = "Let me compute.\n```calculator\n3*7+2\n```"
    assert box.could_end("```") and box.call_end(text)
    assert [c.output for c in box.run_many([box.parse(text)])] == ["23"]
    backend.close()
    backend.close()  # idempotent
    assert backend_for_run(load_config([]), tok, "models/tiny-base").toolbox is None  # tools off: none built
    with pytest.raises(ConfigError, match="nosuch") as err:
        backend_for_run(load_config(["--tools", "[nosuch]"]), tok, "models/tiny-base")
    assert "\n" not in str(err.value)


@pytest.fixture
def double(monkeypatch):
    """The run's toolbox becomes the test double; the arguments build_toolbox got are kept."""
    built: list[tuple[list, dict, FakeToolbox]] = []

    def build(specs, **kwargs):
        box = FakeToolbox(every=3, max_tool_calls=kwargs["max_tool_calls"], seed=1)
        built.append((specs, kwargs, box))
        return box

    monkeypatch.setattr(grpo.tools, "build_toolbox", build)
    return built


def test_lora_run_with_tool_calls(tmp_path, double):
    """Two LoRA steps with calls happening: the config reaches the toolbox, rewards get the transcript and the
    tool_calls column, the loss is finite, the tools/* metrics and completions.jsonl show the turns, and the toolbox
    is closed when the run ends."""
    SEEN.clear()
    cfg = load_config([*TOOL_ARGS, *SMALL, "--max_steps", "2", "--use_peft", "true", "--lora_r", "4",
                       "--learning_rate", "1e-3", "--output_dir", str(tmp_path), "--rewards",
                       "{accuracy: 1.0, test_tool_training:tool_reward: 0.5}"])
    sys.modules.setdefault("test_tool_training", sys.modules[__name__])
    Trainer(cfg).train()
    (specs, kwargs, box), = double
    assert specs == ["calculator"] and kwargs["max_tool_calls"] == 2 and kwargs["timeout_s"] == 3.0
    assert kwargs["workers"] == 1 and kwargs["syntax"] == "fenced" and box.closed >= 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward" in r]
    assert len(train) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    for key in ("tools/calls_per_completion", "tools/error_rate", "tools/timeouts", "tools/seconds",
                "tools/output_tokens"):
        assert key in train[0], key
    assert train[0]["tools/calls_per_completion"] > 0 and train[0]["tools/output_tokens"] > 0
    records = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    called = [r for r in records if r["tool_calls"]]
    assert called and all(set(c) >= {"name", "arguments", "output", "error", "seconds"} for c in called[0]["tool_calls"])
    first = called[0]
    call = first["tool_calls"][0]
    assert call["arguments"] in first["completion"]  # the transcript holds the model's call text ...
    assert (call["error"] or call["output"]).replace("</s>", "") in first["completion"]  # ... and the tool's output
    # the reward saw the same transcript and calls as completions.jsonl records
    seen = SEEN[0]
    assert len(seen["tool_calls"]) == 16 and sum(map(len, seen["tool_calls"])) > 0
    assert first["completion"] in seen["completions"]
    assert sum(r["rewards"]["test_tool_training:tool_reward"] for r in records[:16]) == sum(
        any(c["error"] is None for c in calls) for calls in seen["tool_calls"])


def with_double_everywhere(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python processes (launched ranks, the spawned rollout worker) build the test double
    as the run's toolbox: a sitecustomize on PYTHONPATH swaps ``grpo.tools.build_toolbox`` at start-up."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import grpo.tools\nfrom tool_doubles import FakeToolbox\n"
        "grpo.tools.build_toolbox = lambda specs, **kw: FakeToolbox(every=3, max_tool_calls=kw['max_tool_calls'])\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "tests"), str(ROOT)]),
            "CUDA_VISIBLE_DEVICES": ""}


def tool_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward" in r]


@pytest.mark.slow
def test_two_rank_ddp_run_with_tool_calls(tmp_path):
    """2 gloo ranks (accelerate launch, DDP), each with its own toolbox: both ranks' completions count and the
    tools/* metrics are reduced over ranks."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           str(ROOT / "train.py"), *TOOL_ARGS, *SMALL, "--max_steps", "2", "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
                          env=with_double_everywhere(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = tool_rows(out)
    assert [r["completions/count"] for r in train] == [32, 32]
    assert all(r["tools/calls_per_completion"] > 0 for r in train)


@pytest.mark.slow
def test_async_rollout_worker_runs_tool_turns(tmp_path):
    """With async_rollouts the worker process builds its own toolbox (backend_for_run) and its batches, tool mask
    and calls, cross the pipe to the trainer."""
    out = tmp_path / "async"
    cmd = [sys.executable, str(ROOT / "train.py"), *TOOL_ARGS, *SMALL, "--max_steps", "3", "--async_rollouts", "true",
           "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
                          env=with_double_everywhere(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = tool_rows(out)
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["tools/calls_per_completion"] > 0 for r in train)
    records = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert any(r["tool_calls"] and r["tool_tokens"] > 0 for r in records)


def test_a_batch_with_tool_turns_survives_the_wire():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.batch import StepBatch
    from grpo.rollout import make_backend
    from grpo.worker.wire import batch_from_payload, batch_payload, from_bytes, to_bytes

    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "tiny-base")
    torch.manual_seed(0)
    rollout = make_backend("compact", tok, max_completion_length=40, toolbox=FakeToolbox(every=3)).generate(
        AutoModelForCausalLM.from_pretrained(ROOT / "models" / "tiny-base"), ["Q: 1+2=?\nA:"], 4)
    assert sum(map(len, rollout.tool_calls)) > 0
    batch = StepBatch(rollout, [{"prompt": "p"}] * 4, 4, torch.zeros(4))
    back = batch_from_payload(from_bytes(to_bytes(batch_payload(batch, {}, 1, 0, {}, 0.0)))).rollout
    assert torch.equal(back.tool_mask, rollout.tool_mask) and back.tool_records() == rollout.tool_records()
    row = next(i for i, calls in enumerate(back.tool_calls) if calls)
    assert isinstance(back.tool_calls[row][0], grpo.tools.ToolCall)


def test_curves_gain_a_tool_panel_when_tools_are_logged():
    from grpo import plot

    plain = [{"step": s, "reward": 0.1 * s} for s in range(1, 4)]
    tooled = [dict(r, **{"tools/calls_per_completion": 0.2 * r["step"], "tools/error_rate": 0.1}) for r in plain]
    titles = {ax.get_title() for ax in plot.draw_curves({"a": plain}).axes if ax.get_visible()}
    assert "tool use" not in titles and len(titles) == len(plot.PANELS)
    fig = plot.draw_curves({"a": tooled})
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {p.title for p in plot.PANELS + plot.TOOL_PANELS}
    line, = panels["tool use"].get_lines()
    assert list(line.get_ydata()) == pytest.approx([0.2, 0.4, 0.6])


def test_every_tool_metric_is_documented_and_has_a_reduction():
    from grpo import metrics
    from grpo.batch import RolloutBatch

    batch = RolloutBatch(torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long),
                         torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long),
                         torch.zeros(1, dtype=torch.bool), ["p"], ["c"], tool_mask=torch.zeros(1, 1, dtype=torch.long),
                         tool_calls=[[]])
    keys = metrics.tool_metrics(batch)
    assert len(keys) == 5 and metrics.tool_metrics(RolloutBatch(*list(vars(batch).values())[:7])) == {}
    doc = (ROOT / "docs" / "reading-logs.md").read_text()
    for key in keys:
        assert f"`{key}`" in doc, key
        assert metrics.reduction(key) == ("sum" if key == "tools/timeouts" else "mean"), key


def test_evaluate_cli_runs_a_recipe_with_its_tools(tmp_path, capsys, double):
    from grpo.evaluate import main

    recipe = tmp_path / "tools.yaml"
    recipe.write_text("task: arithmetic\ntask_kwargs: {num_eval: 8}\nmax_completion_length: 30\n"
                      "tools: [calculator]\nmax_tool_calls: 2\n")
    out = tmp_path / "eval.json"
    assert main([str(ROOT / "models" / "tiny-base"), "--config", str(recipe), "--output", str(out)]) == 0
    (specs, kwargs, box), = double
    assert specs == ["calculator"] and kwargs["max_tool_calls"] == 2 and box.closed >= 1
    assert "accuracy" in capsys.readouterr().out
    samples = json.loads(out.read_text())["samples"]
    assert len(samples) == 8 and sum(box.batches) > 0  # the greedy eval rollouts called the tool
