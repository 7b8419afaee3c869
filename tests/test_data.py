"""Tasks and datasets: templates, gold normalisation, bad rows, local file formats, the seeded stream, errors.

Every dataset here is built inside the test (tmp_path); nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import logging
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from grpo.config import ConfigError
from grpo.errors import DataError
from grpo.preflight import prepare
from grpo.smoke import build_tokenizer
from grpo.tasks import DatasetStream, get_task, render_prompt
from grpo.tasks.golds import first_bad_gold, gsm8k_gold, last_boxed

R1_TABLE_1 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> "
    "reasoning process here </think> <answer> answer here </answer>. User: How many legs do 3 cats have. Assistant:"
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def gsm8k_rows(n, start=0):
    return [{"question": f"Ann has {i} pens and buys 1,000 more. How many pens?",
             "answer": f"{i} + 1000 = {i + 1000}\n#### {i + 1000:,}"} for i in range(start, start + n)]


# --- templates -----------------------------------------------------------------------------------------


def test_r1_template_is_table_1_verbatim():
    assert render_prompt("How many legs do 3 cats have", "r1") == R1_TABLE_1


def test_prefill_think_ends_prompt_inside_the_think_block():
    assert render_prompt("Q", "r1", prefill_think=True).endswith("User: Q. Assistant: <think>")
    assert render_prompt("Q", "qwen_math", prefill_think=True).endswith("<|im_start|>assistant\n<think>")


def test_qwen_math_template_asks_for_boxed():
    text = render_prompt("What is 1+1?", "qwen_math")
    assert text == ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
                    "<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_uses_the_tokenizer_and_custom_templates_fill_question():
    tok = build_tokenizer()
    text = render_prompt("2+2?", "chat", tokenizer=tok, system_prompt="Be brief.")
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt("2+2?", "Question: {question}\nAnswer:") == "Question: 2+2?\nAnswer:"
    with pytest.raises(DataError, match="needs a tokenizer"):
        render_prompt("2+2?", "chat")
    with pytest.raises(DataError, match="unknown template"):
        render_prompt("2+2?", "alpaca")


# --- gold extraction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, gold", [
    (r"so \boxed{5}.", "5"),
    (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),            # the last box
    (r"$\boxed{\left( 3, \frac{\pi}{2} \right)}$", r"\left( 3, \frac{\pi}{2} \right)"),  # nested braces
    (r"\fbox{7}", "7"),
    ("no box here", None),
    (r"\boxed{\frac{1}{2}", None),                                        # unbalanced
])
def test_last_boxed(text, gold):
    assert last_boxed(text) == gold


def test_gsm8k_gold_strips_thousands_separators_and_needs_hashes():
    assert gsm8k_gold("3 + 4 = 7\n#### 1,007") == "1007"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("the answer is 7")


def test_first_bad_gold_is_an_index_and_a_reason():
    assert first_bad_gold(["1", "2.5", "-3"]) is None
    k, reason = first_bad_gold(["1", "2", None, None])
    assert k == 2 and reason == "gold answer None is not a string"


# --- tasks over local files ----------------------------------------------------------------------------


def test_gsm8k_from_local_jsonl_normalises_gold_and_renders_prompts(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", gsm8k_rows(10))
    test = write_jsonl(tmp_path / "test.jsonl", gsm8k_rows(3, start=100))
    task = get_task("gsm8k", path=train, eval_path=test)
    assert task.stats == {"train_rows": 10, "eval_rows": 3, "bad_rows_skipped": 0}
    row = task.eval_rows()[0]
    assert row["answer"] == "1100"  # "1,100" after #### -> "1100"
    assert row["prompt"] == render_prompt(row["question"], "r1")
    assert "#### 1,100" in row["solution"]  # the full solution passes through for custom rewards
    rows = task.train_stream(0).take(4)
    assert all(r["prompt"].endswith(". Assistant:") for r in rows)


def test_bad_row_names_its_index_or_is_skipped_and_counted(tmp_path, caplog):
    rows = gsm8k_rows(6)
    rows[4]["answer"] = "no final answer marker"
    del rows[2]["question"]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", gsm8k_rows(2))
    with pytest.raises(DataError, match=r"bad row 2: missing column 'question'.*on_bad_row: skip"):
        get_task("gsm8k", path=train, eval_path=test)
    with caplog.at_level(logging.WARNING, logger="grpo.data"):
        task = get_task("gsm8k", path=train, eval_path=test, on_bad_row="skip")
    assert task.stats["train_rows"] == 4 and task.stats["bad_rows_skipped"] == 2
    assert "skipped 2 bad rows of 6 (first: row 2" in caplog.text


def test_unparseable_math_gold_is_a_load_error_naming_the_row(tmp_path):
    train = [{"problem": f"p{i}", "solution": f"\\boxed{{{i}}}", "level": "Level 3"} for i in range(4)]
    train[3]["solution"] = "the answer is \\boxed{\\frac{1}{"  # unbalanced: no gold
    test = [{"problem": "q", "solution": "x", "answer": "\\frac{1}{", "level": 3}]  # math-verify cannot parse it
    tp, ep = write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "test.jsonl", test)
    with pytest.raises(DataError, match=r"bad row 3: no 'answer' column and no \\boxed"):
        get_task("math", path=tp, eval_path=ep)
    with pytest.raises(DataError, match=r"test.jsonl \[test\]: bad row 0: .*cannot be parsed"):
        get_task("math", path=tp, eval_path=ep, on_bad_row="error", max_train=3)


def test_math_filters_levels_and_reads_gold_from_answer_or_last_box(tmp_path):
    train = [{"problem": f"p{i}", "solution": f"\\boxed{{1}} then \\boxed{{{i}}}", "level": f"Level {1 + i % 5}"}
             for i in range(10)]
    test = [{"problem": "q", "solution": "\\boxed{9}", "answer": "\\frac{3}{4}", "level": 1}]
    task = get_task("math", path=write_jsonl(tmp_path / "tr.jsonl", train),
                    eval_path=write_jsonl(tmp_path / "te.jsonl", test))
    rows = task.train_stream(0).take(6)
    assert {r["level"] for r in rows} <= {3, 4, 5}
    assert task.stats["train_rows"] == 6  # levels 3, 4, 5 of 1..5, twice each
    assert all(r["answer"] == r["question"][1:] for r in rows)  # gold from the last box
    assert task.eval_rows()[0]["answer"] == "\\frac{3}{4}"  # the answer column wins; eval is never level-filtered
    assert task.eval_rows()[0]["prompt"].startswith("<|im_start|>system\nPlease reason step by step")


def test_countdown_holds_out_eval_rows_and_keeps_target_and_nums(tmp_path):
    rows = [{"target": 10 + i, "nums": [i + 1, 9, 1]} for i in range(12)]
    task = get_task("countdown", path=write_jsonl(tmp_path / "cd.jsonl", rows), num_eval=4)
    assert task.stats["train_rows"] == 8 and [r["target"] for r in task.eval_rows()] == [18, 19, 20, 21]
    row = task.eval_rows()[0]
    assert row["answer"] == "18" and row["nums"] == [9, 9, 1]
    assert "Using the numbers [9, 9, 1], create an equation that equals 18." in row["prompt"]
    assert row["prompt"].endswith("Assistant: <think>")  # TinyZero prefills <think>
    bad = write_jsonl(tmp_path / "bad.jsonl", rows[:5] + [{"target": "ten", "nums": [1, 2]}] + rows[5:])
    with pytest.raises(DataError, match="bad row 5: target must be an integer"):
        get_task("countdown", path=bad, num_eval=4)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_generic_dataset_maps_columns_from_any_local_format(tmp_path, fmt):
    import datasets

    rows = [{"problem_text": f"What is {i} squared?", "solution_value": str(i * i), "source": "gen"} for i in range(12)]
    path = tmp_path / f"data.{fmt}"
    ds = datasets.Dataset.from_list(rows)
    {"jsonl": lambda: ds.to_json(str(path)), "parquet": lambda: ds.to_parquet(str(path)),
     "csv": lambda: ds.to_csv(str(path), index=False)}[fmt]()
    task = get_task("dataset", path=str(path), question_field="problem_text", answer_field="solution_value",
                    template="plain", num_eval=2)
    assert task.stats["train_rows"] == 10 and task.stats["eval_rows"] == 2
    row = task.eval_rows()[-1]
    # the mapped source columns stay too, as read (a reward copied from open-r1 reads its own column names)
    raw = 121 if fmt == "csv" else "121"  # csv reads the number back as an int
    assert row == {"question": "What is 11 squared?", "answer": "121", "source": "gen", "prompt": "What is 11 squared?",
                   "problem_text": "What is 11 squared?", "solution_value": raw}


def test_generic_dataset_gold_formats_and_missing_answer_column(tmp_path):
    rows = [{"q": f"q{i}", "a": f"work\n#### {i}"} for i in range(6)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    task = get_task("dataset", path=path, question_field="q", answer_field="a", gold="gsm8k", num_eval=1)
    assert task.eval_rows()[0]["answer"] == "5"
    # A column no row has is a config mistake, not a bad row: the message lists the real columns and does not
    # advise on_bad_row: skip (which would skip every row).
    with pytest.raises(DataError, match="no column 'answer' in the data; its columns are q, a; point task_kwargs"):
        get_task("dataset", path=path, question_field="q", num_eval=1)
    with pytest.raises(TypeError, match="needs task_kwargs.path"):
        get_task("dataset")
    with pytest.raises(TypeError, match="unknown task_kwargs \\['splitt'\\]"):
        get_task("gsm8k", path=path, splitt="train")


def test_unreachable_dataset_is_one_line_with_the_offline_fix():
    with pytest.raises(DataError) as e:
        get_task("gsm8k", path="nobody/no-such-dataset-xyz")
    msg = str(e.value)
    assert "\n" not in msg and "nobody/no-such-dataset-xyz" in msg
    assert "HF_HUB_OFFLINE" in msg and "local .jsonl/.parquet/.csv" in msg


def test_stream_shuffles_with_the_seed_covers_each_epoch_and_cycles():
    rows = [{"question": str(i), "answer": str(i)} for i in range(7)]
    s = DatasetStream(rows, seed=3)
    first, second = s.take(7), s.take(7)
    assert sorted(r["question"] for r in first) == sorted(r["question"] for r in rows)  # every row once per epoch
    assert sorted(r["question"] for r in second) == sorted(r["question"] for r in rows)
    assert [r["question"] for r in first] != [r["question"] for r in second]  # a new shuffle each epoch
    assert [r["question"] for r in DatasetStream(rows, seed=3).take(7)] == [r["question"] for r in first]
    assert [r["question"] for r in DatasetStream(rows, seed=4).take(7)] != [r["question"] for r in first]
    assert s.epoch == 1 and s.rows_served == 14


def test_stream_resumes_exactly_through_json():
    rows = [{"question": str(i), "answer": str(i)} for i in range(5)]
    s = DatasetStream(rows, seed=0)
    s.take(3)
    state = json.loads(json.dumps(s.state_dict()))
    expected = s.take(9)  # crosses an epoch boundary
    resumed = DatasetStream(rows, seed=123)
    resumed.load_state_dict(state)
    assert resumed.take(9) == expected


def test_stream_rows_are_copies():
    rows = [{"question": "q", "answer": "1"}]
    DatasetStream(rows, seed=0).take(1)[0]["answer"] = "changed"
    assert rows[0]["answer"] == "1"


# --- config-level checks -------------------------------------------------------------------------------


def _cfg_argv(tmp_path, recipe: str, *extra: str) -> list[str]:
    return ["--config", recipe, "--output_dir", str(tmp_path / "out"), *extra]


def test_reward_kwargs_must_match_the_template(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", gsm8k_rows(6))
    kwargs = json.dumps({"path": train, "eval_path": train, "template": "qwen_math"})
    base = ["--model_name_or_path", "models/tiny-base", "--task", "gsm8k", "--task_kwargs", kwargs,
            "--output_dir", str(tmp_path / "o")]
    with pytest.raises(ConfigError, match=r"reward 'format' has template: r1 .* rewards.format.kwargs.template: boxed"):
        prepare([*base, "--rewards", "{accuracy: {weight: 1, kwargs: {answer_format: boxed}}, format: 0.1}"])
    with pytest.raises(ConfigError, match=r"reward 'accuracy' has answer_format: r1"):
        prepare([*base, "--rewards", "{accuracy: 1.0}"])
    both = "{accuracy: {weight: 1, kwargs: {answer_format: boxed}}, format: {weight: 0.1, kwargs: {template: boxed}}}"
    cfg, _ = prepare([*base, "--rewards", both])
    assert cfg.task_kwargs["template"] == "qwen_math"
    prefill = json.dumps({"path": train, "eval_path": train, "prefill_think": True})
    with pytest.raises(ConfigError, match=r"reward 'format' has prefilled_think: False .*prefill_think: true"):
        prepare([*base[:-2], "--task_kwargs", prefill, "--output_dir", str(tmp_path / "o"),
                     "--rewards", "{format: 1.0}"])


def test_config_validation_reports_a_bad_dataset_before_any_model_loads(tmp_path):
    rows = gsm8k_rows(4)
    rows[1]["answer"] = "forgot the marker"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ConfigError, match=r"task 'gsm8k': .*bad row 1: no '####'"):
        prepare(["--task", "gsm8k", "--task_kwargs", json.dumps({"path": train, "eval_path": train}),
                     "--output_dir", str(tmp_path / "o")])


def test_unknown_dataset_kwarg_lists_every_accepted_key(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "a": "1"}] * 4)
    with pytest.raises(TypeError) as e:
        get_task("dataset", path=path, question_feild="q")
    for key in ("question_field", "answer_field", "gold", "keep_columns", "template", "on_bad_row"):
        assert key in str(e.value)
