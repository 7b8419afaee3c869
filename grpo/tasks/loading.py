"""Loading datasets for tasks: a hub name or a local JSONL/JSON/Parquet/CSV file or folder, rows normalised into
``question`` / ``answer`` / task columns, bad rows named by index (or skipped and counted), golds checked once."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo.errors import DataError
from grpo.tasks.base import Task
from grpo.tasks.golds import validate_golds
from grpo.tasks.templates import TEMPLATES, render_prompt

log = logging.getLogger("grpo.tasks")

_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(path: str, name: str | None = None, split: str = "train") -> list[dict]:
    """Rows of a dataset: a hub name (``openai/gsm8k``), a local JSONL/JSON/Parquet/CSV file, or a local folder.

    A single local file has one split, ``train``; ``split`` may still slice it (``train[:1000]``).

    Raises:
        DataError: one line saying what was tried and how to run offline.
    """
    return _load_rows(Path(path).expanduser(), path, name, split)


def _load_rows(local: Path, path: str, name: str | None, split: str) -> list[dict]:
    import datasets  # heavy: import only when a dataset task is used

    # Progress bars only for downloads: a local file loads in a blink and the bars would bury the logs.
    bars = datasets.utils.is_progress_bar_enabled()
    if local.exists():
        datasets.utils.disable_progress_bar()
    try:
        if local.is_file():
            builder = _LOCAL_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise DataError(f"dataset file {path} has an unknown type; use .jsonl, .json, .parquet or .csv")
            file_split = "train" + split[split.index("[") :] if "[" in split else "train"
            ds = datasets.load_dataset(builder, data_files=str(local), split=file_split)
        elif local.is_dir() and (local / "dataset_info.json").is_file() and (local / "state.json").is_file():
            ds = datasets.load_from_disk(str(local))  # a Dataset.save_to_disk folder
        else:
            ds = datasets.load_dataset(str(local) if local.is_dir() else path, name, split=split)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "could not load"
        where = "local folder" if local.is_dir() else "the Hugging Face hub (no such local file)"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise DataError(
            f"cannot load dataset {path!r} (config {name}, split {split}) from {where}{offline}: {reason}; to run "
            "offline give a local .jsonl/.parquet/.csv file or folder as task_kwargs.path, or download it once and "
            "set HF_HUB_OFFLINE=1"
        ) from None
    finally:
        if bars:
            datasets.utils.enable_progress_bar()
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"dataset {path!r} has no split {split!r}; its splits: {', '.join(ds)}")
        ds = ds[split]
    return ds.to_list()


def normalize_rows(raw: list[dict], normalize: Callable[[dict], dict | None], source: str,
                   on_bad_row: str = "error", golds: bool = True) -> tuple[list[dict], int]:
    """Apply ``normalize`` to every row, then (``golds``) parse every gold answer in one batch.

    ``normalize`` returns the clean row, or ``None`` for a row filtered out on purpose (not bad); a row it
    rejects (``ValueError``/``KeyError``/``TypeError``) or whose gold does not parse is bad.

    Returns:
        (clean rows, number of bad rows skipped).

    Raises:
        DataError: on the first bad row when ``on_bad_row == "error"``, naming its index.
    """
    out, indices, bad = [], [], []
    for i, row in enumerate(raw):
        try:
            clean = normalize(row)
        except (ValueError, KeyError, TypeError) as e:
            if isinstance(e, KeyError):
                _check_column(raw, e.args[0], source)  # absent from every row: no point skipping rows
            reason = f"missing column {e.args[0]!r}" if isinstance(e, KeyError) else str(e).splitlines()[0][:200]
            if on_bad_row == "error":
                raise DataError(f"{source}: bad row {i}: {reason}; fix the data or set "
                                "task_kwargs.on_bad_row: skip") from None
            bad.append(f"row {i}: {reason}")
            continue
        if clean is not None:
            out.append(clean)
            indices.append(i)
    if golds:
        out, dropped = validate_golds(out, indices, source, on_bad_row)
        bad += dropped
    if bad:
        log.warning("%s: skipped %d bad rows of %d (first: %s)", source, len(bad), len(raw), bad[0])
    return out, len(bad)


def _check_column(raw: list[dict], column: Any, source: str) -> None:
    """A column that no row has (or that is empty in every row) is a config mistake, not a bad row: one line
    listing the columns the data does have.

    Raises:
        DataError: when no row has a value in ``column``.
    """
    if any(row.get(column) is not None for row in raw):
        return
    columns = list(dict.fromkeys(k for row in raw[:100] for k in row))
    raise DataError(f"{source}: no column {column!r} in the data; its columns are {', '.join(map(str, columns))}; "
                    "point task_kwargs.question_field / answer_field (task: dataset) at the right ones")


@dataclass
class DatasetSpec:
    """Where a dataset task's rows come from and how they become (question, answer, columns) rows."""

    path: str
    name: str | None = None
    split: str = "train"
    eval_path: str | None = None  # default: the same path
    eval_name: str | None = None
    eval_split: str | None = "test"  # None: hold out the last num_eval rows of the train split
    num_eval: int | None = None  # cap on eval rows (the first ones); None = all
    max_train: int | None = None  # cap on train rows (the first ones); None = all
    template: str = "r1"
    prefill_think: bool = False
    system_prompt: str | None = None
    on_bad_row: str = "error"
    eval_only: bool = False  # load only the eval rows (standalone evaluation); the train stream is then empty


def dataset_task(name: str, spec: DatasetSpec, normalize: Callable[[dict], dict | None],
                 eval_normalize: Callable[[dict], dict | None] | None = None, golds: bool = True) -> Task:
    """A task over a finite dataset: rows normalised (gold in ``answer``) and validated now, prompts rendered lazily."""
    if spec.on_bad_row not in ("error", "skip"):
        raise DataError(f"on_bad_row must be 'error' or 'skip', got {spec.on_bad_row!r}")
    if spec.template not in TEMPLATES and "{question}" not in spec.template:
        raise DataError(f"unknown template {spec.template!r}; use one of {', '.join(TEMPLATES)} or a string "
                        "with {question}")
    held_out = spec.eval_split is None and spec.eval_path is None
    train, bad = [], 0
    if held_out or not spec.eval_only:
        raw = load_rows(spec.path, spec.name, spec.split)
        if spec.max_train is not None:
            raw = raw[: spec.max_train]
        train, bad = normalize_rows(raw, normalize, f"{name} {spec.path} [{spec.split}]", spec.on_bad_row, golds)
    if held_out:
        n_eval = spec.num_eval if spec.num_eval is not None else min(256, len(train) // 10)
        if n_eval >= len(train):
            raise DataError(f"{name}: {len(train)} train rows cannot spare {n_eval} for evaluation; lower num_eval")
        train, evals, eval_bad = train[: len(train) - n_eval], train[len(train) - n_eval :], 0
    else:
        eval_path = spec.eval_path or spec.path
        eval_name = spec.eval_name if spec.eval_path else (spec.eval_name or spec.name)
        eval_split = spec.eval_split or "train"
        raw_eval = load_rows(eval_path, eval_name, eval_split)
        evals, eval_bad = normalize_rows(raw_eval, eval_normalize or normalize, f"{name} {eval_path} [{eval_split}]",
                                         spec.on_bad_row, golds)
        if spec.num_eval is not None:
            evals = evals[: spec.num_eval]
    if not train and not spec.eval_only:
        raise DataError(f"{name}: no usable train rows in {spec.path} [{spec.split}]; check the path, split and "
                        "filters")
    if not evals:
        raise DataError(f"{name}: no usable eval rows; check eval_path / eval_split, or set eval_split: null to hold "
                        "out train rows")
    def render(row: dict, tokenizer: Any) -> dict:
        out = dict(row)
        out["prompt"] = render_prompt(row["question"], spec.template, tokenizer, spec.system_prompt, spec.prefill_think)
        return out

    columns = tuple(dict.fromkeys(k for row in (train[:1] + evals[:1]) for k in row))
    return Task(name, evals, train=train, render=render, template=spec.template, prefill_think=spec.prefill_think,
                system_prompt=spec.system_prompt,
                stats={"train_rows": len(train), "eval_rows": len(evals), "bad_rows_skipped": bad + eval_bad},
                columns=columns)


def spec_from_kwargs(kwargs: dict, own: tuple[str, ...] = (), **defaults: Any) -> DatasetSpec:
    """``DatasetSpec`` from task defaults overridden by the user's ``task_kwargs``; unknown keys are an error that
    lists every accepted key, the task's ``own`` keys (e.g. ``question_field``) included."""
    known = {f.name for f in dataclasses.fields(DatasetSpec)}
    bad = sorted(set(kwargs) - known - set(own))
    if bad:
        raise TypeError(f"unknown task_kwargs {bad}; accepted: {', '.join(sorted(known | set(own)))}")
    return DatasetSpec(**{**defaults, **{k: v for k, v in kwargs.items() if k not in own}})


def text_column(row: dict, key: str) -> str:
    """``row[key]`` as non-empty text; a missing value raises ``KeyError`` (a missing column), bad text ``ValueError``."""
    value = row[key]
    if value is None:  # a column absent from some rows of a JSONL file loads as None
        raise KeyError(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column {key!r} is empty or not text")
    return value
