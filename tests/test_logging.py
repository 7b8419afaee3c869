"""Logging: the files a run writes, trackers, curves, the plot command, reasoning signals and console lines."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from grpo import plot, reasoning
from grpo.batch import StepBatch
from grpo.cli import load_config
from grpo.config import ConfigError
from grpo.logs import completion_records, format_eval_line, format_step_line
from grpo.metrics import rollout_metrics_over_ranks
from grpo.run_record import format_duration, summary_lines
from grpo.trackers import report_to_list
from rewards.accuracy import Reason

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The documented metric names (README, Metrics; TRL's names): train rows, with rewards/<name>/mean for this config's
# accuracy and format rewards.
DOCUMENTED_TRAIN_KEYS = {
    "reward", "reward_std", "rewards/accuracy/mean", "rewards/format/mean", "frac_reward_zero_std",
    "completions/mean_length", "completions/min_length", "completions/max_length", "completions/clipped_ratio",
    "loss", "grad_norm", "learning_rate", "entropy", "clip_ratio", "time/rollout_s", "time/reward_s",
    "time/update_s", "time/step_s", "throughput/completion_tokens_per_s",
}
NEW_TRAIN_KEYS = {"completions/p10_length", "completions/p90_length", "reasoning/reflection_ratio",
                  "reasoning/think_length"}
DOCUMENTED_EVAL_KEYS = {"eval/accuracy", "eval/mean_length", "eval/format"}
COMPLETION_KEYS = {"step", "group", "prompt", "completion", "answer", "reward", "rewards", "advantage", "length",
                   "truncated", "verdicts"}


def read_png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG read back with PIL (a torn or foreign file raises)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decodes every pixel, so a truncated file fails here
        assert im.format == "PNG"
        return im.size


# --- a real short run ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The issue's short run: 3 steps, eval at 3, TensorBoard on; stdout is a pipe (not a terminal)."""
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("run") / "tmp"
    cmd = [sys.executable, str(ROOT / "train.py"), "--max_steps", "3", "--eval_steps", "3",
           "--per_device_train_batch_size", "16", "--eval_batch_size", "64", "--task_kwargs", "{num_eval: 32}",
           "--output_dir", str(out), "--report_to", "tensorboard", "--save_final_model", "false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TERM="xterm-256color")  # a colour terminal type, but a pipe
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_short_run_writes_metrics_with_design_names(short_run):
    out, _ = short_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert [r["step"] for r in evals] == [0, 3]
    for r in train:
        assert DOCUMENTED_TRAIN_KEYS | NEW_TRAIN_KEYS <= set(r), sorted(DOCUMENTED_TRAIN_KEYS | NEW_TRAIN_KEYS - set(r))
        assert r["completions/min_length"] <= r["completions/p10_length"] <= r["completions/mean_length"] + 1e-6
        assert r["completions/p10_length"] <= r["completions/p90_length"] <= r["completions/max_length"]
        assert 0.0 <= r["reasoning/reflection_ratio"] <= 1.0
        assert 0 < r["reasoning/think_length"] < r["completions/mean_length"]  # the block is part of the completion
        # every accuracy reason code is logged each step, and the counts add up to the step's 16 completions
        reasons = {k: v for k, v in r.items() if k.startswith("rewards/accuracy/reason/")}
        assert set(reasons) == {f"rewards/accuracy/reason/{c.value}" for c in Reason}
        assert sum(reasons.values()) == 16
        assert reasons["rewards/accuracy/reason/right"] == pytest.approx(16 * r["rewards/accuracy/mean"])
    for r in evals:
        assert DOCUMENTED_EVAL_KEYS <= set(r)


def test_short_run_writes_completions(short_run):
    out, _ = short_run
    recs = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    # log_completions_steps defaults to 10: step 1 (first) and step 3 (last), 16 completions each.
    assert [r["step"] for r in recs] == [1] * 16 + [3] * 16
    for r in recs:
        assert set(r) == COMPLETION_KEYS
        assert set(r["rewards"]) == {"accuracy", "format"}
        # the total is the configured weighted sum of the per-reward values (accuracy 1.0, format 0.1)
        assert r["reward"] == pytest.approx(r["rewards"]["accuracy"] + 0.1 * r["rewards"]["format"], abs=1e-5)
        assert r["prompt"].startswith("Q: ") and 1 <= r["length"] <= 96  # max_completion_length
        # accuracy says why: its verdict's score is the logged value and its reason is one of the codes
        verdict = r["verdicts"]["accuracy"]
        assert verdict["score"] == r["rewards"]["accuracy"]
        assert verdict["reason"] in {c.value for c in Reason} and (verdict["reason"] == "right") == (verdict["score"] == 1)
        assert verdict["path"] in {"extract", "guard", "exact", "cas", "cache"}
    # group advantages: within each prompt's 8 completions the advantages sum to ~0
    for step in (1, 3):
        for g in range(2):
            adv = [r["advantage"] for r in recs if r["step"] == step and r["group"] == g]
            assert len(adv) == 8 and abs(sum(adv)) < 1e-3


def test_short_run_writes_config_run_info_and_valid_png(short_run):
    out, _ = short_run
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["report_to"] == ["tensorboard"] and cfg["max_steps"] == 3
    info = json.loads((out / "run_info.json").read_text())
    assert info["report_to"] == ["tensorboard"] and info["world_size"] == 1
    png = out / "curves.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    width, height = read_png_size(png)
    assert 1000 <= width <= 4000 and 400 <= height <= 3000
    assert not list(out.glob(".curves.png.*"))  # the atomic write left no temporary file


def test_short_run_writes_tensorboard_events_with_same_names(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = short_run
    event_files = list(out.rglob("events.out.tfevents.*"))
    assert event_files
    scalar_dir = next(f.parent for f in event_files if f.parent == out / "grpo-zero")
    acc = EventAccumulator(str(scalar_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert DOCUMENTED_TRAIN_KEYS | NEW_TRAIN_KEYS | DOCUMENTED_EVAL_KEYS <= tags, sorted(
        DOCUMENTED_TRAIN_KEYS | NEW_TRAIN_KEYS | DOCUMENTED_EVAL_KEYS - tags)
    metrics = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "reward" in r}
    assert [e.step for e in acc.Scalars("reward")] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("reward")] == pytest.approx([metrics[s]["reward"] for s in (1, 2, 3)])


def test_short_run_console_is_plain_when_piped(short_run):
    out, proc = short_run
    assert "\x1b" not in proc.stdout and "\r" not in proc.stdout  # no ANSI codes, no bar redraws
    lines = proc.stdout.splitlines()
    step_lines = [line for line in lines if line.startswith("step ")]
    assert len(step_lines) == 3 and all(" eta " in line for line in step_lines)
    assert sum(line.startswith("eval step") for line in lines) == 2
    assert any(line.startswith("done: 3 steps") for line in lines)
    assert any("eval accuracy" in line and "->" in line for line in lines)
    assert any(str(out) in line and "curves.png" in line for line in lines)


# --- the plot command ------------------------------------------------------------------------------------


def fake_run(folder: Path, slope: float, steps: int = 6) -> Path:
    """A metrics.jsonl shaped like a real run's: eval rows at 0 and the end, a torn last line."""
    folder.mkdir(parents=True)
    rows = [{"step": 0, "eval/accuracy": 0.1, "eval/format": 1.0, "eval/mean_length": 10.0}]
    for s in range(1, steps + 1):
        rows.append({"step": s, "reward": slope * s, "rewards/accuracy/mean": slope * s, "kl": None,
                     "completions/mean_length": 10 + s, "completions/p10_length": 8 + s,
                     "completions/p90_length": 12 + s, "completions/clipped_ratio": 0.0, "entropy": 1.0 / s,
                     "reasoning/reflection_ratio": 0.01 * s, "reasoning/think_length": 5.0 + s})
    rows.append({"step": steps, "eval/accuracy": 0.5, "eval/format": 1.0, "eval/mean_length": 20.0})
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "rew'  # a kill mid-write
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_read_metrics_skips_torn_line(tmp_path):
    rows = plot.read_metrics(fake_run(tmp_path / "a", 0.1))
    assert len(rows) == 8 and rows[-1]["step"] == 6
    assert plot.series(rows, "kl") == ([], [])  # nulls are skipped, not plotted as zeros
    assert plot.series(rows, "eval/accuracy") == ([0, 6], [0.1, 0.5])


def test_plot_overlays_two_runs(tmp_path):
    a, b = fake_run(tmp_path / "run_a", 0.1), fake_run(tmp_path / "run_b", 0.05)
    fig = plot.draw_curves({"run_a": plot.read_metrics(a), "run_b": plot.read_metrics(b)})
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {p.title for p in plot.PANELS}
    for title in ("reward", "accuracy", "response length", "think length", "entropy", "reflection ratio",
                  "clipped ratio"):
        labels = [line.get_label() for line in panels[title].get_lines()]
        assert "run_a" in labels and "run_b" in labels, (title, labels)
    # eval points are their own dashed series, one per run
    assert {"run_a (eval)", "run_b (eval)"} <= {line.get_label() for line in panels["accuracy"].get_lines()}
    # the p10-p90 band: one filled area per run on the length panel
    assert len(panels["response length"].collections) == 2
    run_b_reward = next(line for line in panels["reward"].get_lines() if line.get_label() == "run_b")
    assert list(run_b_reward.get_ydata()) == pytest.approx([0.05 * s for s in range(1, 7)])
    # KL was never logged (beta = 0): the panel says so instead of drawing a flat zero line
    assert panels["KL to reference"].get_lines() == [] and panels["KL to reference"].texts


def test_plot_cli_writes_png(tmp_path, capsys):
    a, b = fake_run(tmp_path / "run_a", 0.1), fake_run(tmp_path / "run_b", 0.05)
    out = tmp_path / "cmp" / "compare.png"
    assert plot.main([str(a), str(b), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE and read_png_size(out) == (1800, 800)
    assert plot.main([str(a)]) == 0 and (a / "curves.png").is_file()  # one run: redraws RUN_DIR/curves.png
    assert plot.main([str(tmp_path / "nowhere")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_save_figure_atomic_keeps_old_png_when_drawing_fails(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    fig = plot.draw_curves({"a": plot.read_metrics(fake_run(tmp_path / "a", 0.1))})
    plot.save_figure_atomic(fig, path)
    before = path.read_bytes()

    def broken_savefig(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(RuntimeError):
        plot.save_figure_atomic(fig, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["curves.png"]


# --- reasoning signals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Wait, 8+7 is 15.", True),                  # case-insensitive
    ("let me verify: 6+2=8", True),
    ("Let\n  me see", True),                     # a phrase spans any whitespace
    ("I should double-check that", True),        # hyphenated forms
    ("we recheck it", True),
    ("<think>hmm</think>", True),                # tags are not word characters
    ("await the result", False),                 # word boundaries: no match inside a word
    ("checkmate", False),
    ("waiting", False),
    ("letme", False),
    ("6+2=8\n8+7=15", False),
    ("", False),
])
def test_has_reflection(text, expected):
    assert reasoning.has_reflection(text) is expected


def test_reflection_words_are_configurable_and_escaped():
    assert reasoning.has_reflection("Aha! an aha moment", ["aha moment"])
    assert not reasoning.has_reflection("wait", ["aha"])
    assert reasoning.has_reflection("x (sic) y", ["(sic)"])  # regex characters are literal
    assert not reasoning.has_reflection("x sic y", ["(sic)"])
    assert reasoning.reflection_pattern(["", "  "]) is None and not reasoning.has_reflection("wait", [])
    assert reasoning.reflection_ratio(["wait", "ok", "Verify", "fine"]) == 0.5
    assert math.isnan(reasoning.reflection_ratio([]))


@pytest.mark.parametrize("text, block", [
    ("<think>6+2=8\n8+7=15</think><answer>15</answer>", "6+2=8\n8+7=15"),
    ("6+2=8</think><answer>8</answer>", "6+2=8"),             # <think> prefilled in the prompt
    ("<think>6+2=8\n8+", "6+2=8\n8+"),                         # cut off by the length limit
    ("<think></think><answer>3</answer>", ""),
    ("<answer>15</answer>", None),
    ("<think>a</think><think>bb</think>", "a"),                # the first block counts
    ("x</think>y<think>z</think>", "x"),
])
def test_think_block(text, block):
    assert reasoning.think_block(text) == block


def test_think_lengths_chars_and_custom_count():
    texts = ["<think>abcd</think>", "<think>ab</think>x", "no tags", "<think>a b c</think>"]
    lengths = reasoning.think_lengths(texts)
    assert lengths[:2] == [4.0, 2.0] and math.isnan(lengths[2]) and lengths[3] == 5.0
    assert reasoning.mean_think_length(texts) == pytest.approx(11 / 3)  # the untagged text is left out
    assert reasoning.mean_think_length(texts, count=lambda s: len(s.split())) == pytest.approx(5 / 3)
    assert math.isnan(reasoning.mean_think_length(["none", "at all"]))


# --- metrics from a batch, without a model ---------------------------------------------------------------


def make_logger(tmp_path: Path, **overrides):
    from accelerate import Accelerator

    from grpo.logs import MetricsLogger

    cfg = load_config(["--output_dir", str(tmp_path / "out"), "--num_generations", "4",
                       "--per_device_train_batch_size", "8", *[a for k, v in overrides.items() for a in (f"--{k}", str(v))]])
    acc = Accelerator(cpu=True)
    return MetricsLogger(cfg, acc)


def make_batch(completions: list[str], lengths: list[int], truncated: list[bool]):
    from grpo.batch import RolloutBatch

    N, T = len(completions), max(lengths)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return RolloutBatch(torch.zeros(N, 2, dtype=torch.long), torch.ones(N, 2, dtype=torch.long),
                        torch.zeros(N, T, dtype=torch.long), mask, torch.tensor(truncated),
                        [f"Q{i // 4}" for i in range(N)], completions)


def test_rollout_metrics_lengths_percentiles_and_reasoning(tmp_path):
    logger = make_logger(tmp_path)
    texts = ["<think>wait ab</think>x", "<think>abcd</think>", "plain", "Let me see",
             "<think>a</think>", "<think>abc</think>", "no", "check"]
    batch = make_batch(texts, lengths=[1, 2, 3, 4, 5, 6, 7, 8], truncated=[False] * 7 + [True])
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    m = rollout_metrics_over_ranks(logger.acc, rewards, batch.lengths, batch.truncated, {"accuracy": rewards},
                                   batch.completions, 4, logger.cfg.reflection_words)
    assert m["completions/mean_length"] == 4.5
    assert (m["completions/min_length"], m["completions/max_length"]) == (1, 8)
    assert m["completions/p10_length"] == pytest.approx(1.7)  # linear interpolation, as numpy's default
    assert m["completions/p90_length"] == pytest.approx(7.3)
    assert m["completions/clipped_ratio"] == 0.125
    assert m["frac_reward_zero_std"] == 0.5 and m["reward"] == 0.75
    assert m["reasoning/reflection_ratio"] == 0.375  # "wait", "Let me", "check"
    assert m["reasoning/think_chars"] == pytest.approx((7 + 4 + 1 + 3) / 4)  # no tokenizer given: characters


def test_think_length_counts_tokens_with_the_tokenizer(tmp_path):
    class WordTokenizer:  # a stand-in whose "tokens" are words, so tokens and characters differ
        calls = 0

        def __call__(self, texts, add_special_tokens=True):
            WordTokenizer.calls += 1
            assert isinstance(texts, list) and not add_special_tokens
            return {"input_ids": [t.split() for t in texts]}

    logger = make_logger(tmp_path)
    tok = WordTokenizer()
    texts = ["<think>six plus two</think>x", "none", "<think>a b c d e</think>", "z</think>", "", "q", "r", "s"]
    batch = make_batch(texts, lengths=[3] * 8, truncated=[False] * 8)
    m = rollout_metrics_over_ranks(logger.acc, torch.zeros(8), batch.lengths, batch.truncated, {}, batch.completions,
                                   4, logger.cfg.reflection_words,
                                   count_tokens=lambda xs: [len(x) for x in tok(xs, add_special_tokens=False)["input_ids"]])
    assert m["reasoning/think_length"] == pytest.approx((3 + 5 + 1) / 3) and "reasoning/think_chars" not in m
    assert WordTokenizer.calls == 1  # one batched call per step


def test_log_completions_cadence_and_fields(tmp_path):
    logger = make_logger(tmp_path, max_steps=25, log_completions_steps=10)
    logger.start()
    texts = ["a", "b", "c", "d", "e", "f", "g", "h"]
    batch = make_batch(texts, lengths=[1] * 8, truncated=[False] * 8)
    rows = [{"prompt": p, "answer": "7"} for p in batch.prompts]
    rewards = torch.arange(8.0)
    per = {"accuracy": torch.tensor([1.0, math.nan] * 4)}
    step_batch = StepBatch(batch, rows, 4, rewards, per, rewards - 3.5)
    for step in range(1, 26):
        if logger.should_log_completions(step):
            logger.log_completions(completion_records(step, step_batch))
    recs = [json.loads(line) for line in logger.completions_path.read_text().splitlines()]
    assert sorted({r["step"] for r in recs}) == [1, 10, 20, 25]
    assert len(recs) == 4 * 8
    first = recs[:8]
    assert [r["group"] for r in first] == [0] * 4 + [1] * 4
    assert first[1]["rewards"] == {"accuracy": None} and first[0]["rewards"] == {"accuracy": 1.0}
    assert first[3]["advantage"] == -0.5 and first[3]["answer"] == "7" and first[3]["completion"] == "d"
    off = make_logger(tmp_path / "off", log_completions_steps=0)
    assert not any(off.should_log_completions(s) for s in range(1, 101))


def test_curves_written_at_eval_and_plotting_failure_only_warns(tmp_path, monkeypatch):
    logger = make_logger(tmp_path)
    logger.start()
    logger.log(0, {"eval/accuracy": 0.2, "eval/format": 1.0, "eval/mean_length": 11.0})
    assert logger.curves_path.read_bytes()[:8] == PNG_SIGNATURE
    monkeypatch.setattr(plot, "draw_curves", lambda *a, **k: 1 / 0)
    with pytest.warns(RuntimeWarning, match="could not draw"):
        assert logger.write_curves() is None


# --- config: trackers and lists --------------------------------------------------------------------------


def test_report_to_parsing(tmp_path):
    base = ["--output_dir", str(tmp_path)]
    assert load_config(base).report_to is None and report_to_list(None) == []
    assert report_to_list(load_config([*base, "--report_to", "none"]).report_to) == []
    assert load_config([*base, "--report_to", "tensorboard"]).report_to == ["tensorboard"]
    assert report_to_list("TensorBoard") == ["tensorboard"]
    assert report_to_list(["tensorboard", "none", "tensorboard"]) == ["tensorboard"]
    cfg = load_config([*base, "--reflection_words", "[wait, let me]"])
    assert cfg.reflection_words == ["wait", "let me"]
    assert load_config([*base, "--reflection_words", "wait, aha"]).reflection_words == ["wait", "aha"]


def test_report_to_errors_are_one_clear_line(tmp_path, monkeypatch):
    base = ["--output_dir", str(tmp_path)]
    with pytest.raises(ConfigError, match="unknown tracker 'mlfow'; choose from tensorboard, wandb, trackio"):
        load_config([*base, "--report_to", "mlfow"])
    import grpo.trackers
    from grpo.preflight import prepare

    monkeypatch.setattr(grpo.trackers, "installed", lambda modules: False)
    monkeypatch.setattr("grpo.preflight.installed", lambda modules: False)
    with pytest.raises(ConfigError) as e:
        prepare([*base, "--report_to", "tensorboard,wandb"])
    assert str(e.value) == "report_to 'tensorboard' needs the tensorboard package: pip install 'grpo-zero[tensorboard]'"
    with pytest.raises(ConfigError, match=r"report_to 'wandb' needs the wandb package: pip install 'grpo-zero\[wandb\]'"):
        prepare([*base, "--report_to", "wandb"])
    assert report_to_list("all") == []  # "all" means the installed ones: none here, and no error
    with pytest.raises(ConfigError, match="log_completions_steps"):
        load_config([*base, "--log_completions_steps", "-1"])


def test_missing_tracker_fails_before_model_loads(tmp_path):
    # A real subprocess: the message is one line on stderr, exit code 2, no traceback.
    import importlib.util

    missing = next((t for t in ("wandb", "trackio") if importlib.util.find_spec(t) is None), None)
    if missing is None:
        pytest.skip("wandb and trackio are both installed")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--report_to", missing, "--output_dir",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: report_to '{missing}' needs the {missing} package: "
                                   f"pip install 'grpo-zero[{missing}]'")


# --- console lines ---------------------------------------------------------------------------------------

STEP = {"reward": 0.6125, "rewards/accuracy/mean": 0.5, "completions/mean_length": 21.04,
        "completions/max_length": 45.0, "completions/clipped_ratio": 0.0625, "kl": 0.00123, "entropy": 0.8123,
        "time/step_s": 1.234}


def test_format_step_line_fields():
    line = format_step_line(7, 100, STEP, eta_s=125)
    assert line == ("step    7/100  reward 0.613  acc 0.500  len  21.0 max   45  clip 0.06  kl 0.0012  "
                    "ent 0.812  1.23s  eta 2m05s")
    assert format_step_line(7, 100, {**STEP, "skipped_update": 1.0}).endswith("(no signal: update skipped)")


def test_format_step_line_columns_align_and_tolerate_missing():
    a = format_step_line(7, 100, STEP)
    b = format_step_line(100, 100, {**STEP, "kl": math.nan, "rewards/accuracy/mean": None})
    assert len(a) == len(b)  # fixed width: a plain log reads as a table
    assert [a.index(k) for k in ("reward", "acc", "len", "clip", "kl", "ent")] == \
           [b.index(k) for k in ("reward", "acc", "len", "clip", "kl", "ent")]
    assert "kl      -" in b and "acc     -" in b
    assert all(ch.isprintable() for ch in a + b)


def test_format_duration_and_eval_line():
    assert [format_duration(s) for s in (0, 42.4, 185, 3725, math.nan, -1)] == ["0s", "42s", "3m05s", "1h02m", "-", "-"]
    assert format_eval_line(10, {"eval/accuracy": 0.5, "eval/format": 0.9, "eval/mean_length": 30.25}) == \
        "eval step   10  accuracy 0.500  format 0.900  mean length 30.2"


def test_summary_lines(tmp_path):
    rows = [{"reward": 0.1 * i, "completions/mean_length": 10.0 + i, "reasoning/think_length": 5.0 + i,
             "reasoning/reflection_ratio": 0.0} for i in range(20)]
    summary = {"steps": 20, "wall_s": 185.0, "first_eval": {"eval/accuracy": 0.25, "eval/mean_length": 12.0},
               "last_eval": {"eval/accuracy": 0.75, "eval/mean_length": 30.0}}
    lines = summary_lines(summary, rows, tmp_path, ["metrics.jsonl", "curves.png"])
    assert lines[0] == "done: 20 steps in 3m05s (185s)"
    assert lines[1] == "  eval accuracy 0.250 -> 0.750   mean length 12.0 -> 30.0 tokens"
    assert lines[2] == ("  train (mean of first vs last 5 steps): reward 0.200 -> 1.700, length 12.0 -> 27.0, "
                        "think length 7.0 -> 22.0, reflection ratio 0.000 -> 0.000")
    assert lines[3] == f"  files in {tmp_path}: metrics.jsonl, curves.png"
    one = summary_lines({"steps": 1, "wall_s": 3.0}, rows[:1], tmp_path, ["metrics.jsonl"])
    assert one[0] == "done: 1 step in 3s"


def test_finish_lists_final_model_and_checkpoints(tmp_path, capsys):
    logger = make_logger(tmp_path)
    logger.start()
    (logger.out / "final").mkdir()
    (logger.out / "checkpoint-2").mkdir()
    logger.finish({"steps": 2, "wall_s": 1.0})
    out = capsys.readouterr().out
    files_line = next(line for line in out.splitlines() if "files in" in line)
    assert "final/" in files_line and "checkpoint-2" in files_line


def test_step_line_shows_the_eval_rewards_accuracy():
    """On Countdown the accuracy column is the countdown reward (what eval/accuracy reports), not '-'."""
    line = format_step_line(1, 10, {"rewards/countdown/mean": 0.25}, accuracy_reward="countdown")
    assert "acc 0.250" in line


def test_the_run_length_reads_as_english(tmp_path, capsys):
    """'grpo-zero: 1 step' at the start and 'done: 1 step' at the end, not '1 steps'."""
    from grpo.run_record import steps_text

    assert (steps_text(1), steps_text(60), steps_text(0)) == ("1 step", "60 steps", "0 steps")
    make_logger(tmp_path, max_steps=1).start()
    assert "grpo-zero: 1 step, world size 1" in capsys.readouterr().out
