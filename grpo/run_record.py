"""The run record and the end-of-run summary: ``run_info.json``, ``config.yaml``, reading ``metrics.jsonl``.

Reading logs needs no plotting library: :func:`read_jsonl` is the one JSONL reader (torn-line tolerant),
used by resume, the summary and :mod:`grpo.plot`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml

SUMMARY_WINDOW = 5  # train signals in the final summary: mean of the first vs the last 5 steps (one step is noisy)


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                             cwd=Path(__file__).resolve().parents[1])
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(accelerator: Any, seed: int, trackers: list[str]) -> dict[str, Any]:
    """What reproduces a run besides its config: versions, git commit, world size, device, seed, command."""
    return {
        "grpo_zero": _version("grpo-zero"), "torch": torch.__version__, "transformers": _version("transformers"),
        "accelerate": _version("accelerate"), "trl": _version("trl"), "python": platform.python_version(),
        "git_commit": _git_commit(), "world_size": accelerator.num_processes, "device": str(accelerator.device),
        "distributed_type": str(accelerator.distributed_type), "seed": seed,
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv,
        "torch_threads": torch.get_num_threads(), "hostname": platform.node(), "pid": os.getpid(),
        "report_to": trackers,
    }


def write_run_record(out: Path, info: dict[str, Any], config: dict[str, Any]) -> None:
    """``out/run_info.json`` and ``out/config.yaml`` (the resolved config: rerun with ``--config``)."""
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file; a missing file is empty, a torn line (killed mid-write) or a non-object is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``metrics.jsonl`` (or of the one inside a run folder). A torn last line is skipped.

    Raises:
        FileNotFoundError: no metrics.jsonl there.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(path)
    return [row for row in read_jsonl(path) if "step" in row]


def logged_eval(metrics_path: Path, step: int) -> dict | None:
    """The eval row for ``step`` from a (restored) metrics.jsonl, for the summary after a resume."""
    for row in read_jsonl(metrics_path):
        if row.get("step") == step and "eval/accuracy" in row:
            return {k: v for k, v in row.items() if k.startswith("eval/")}
    return None


def last_logged_eval(metrics_path: Path) -> dict | None:
    """The latest eval row of a metrics.jsonl (the end of a finished run that is rerun), ``None`` if none."""
    rows = [row for row in read_jsonl(metrics_path) if "eval/accuracy" in row]
    return {k: v for k, v in rows[-1].items() if k.startswith("eval/")} if rows else None


def logged_step_seconds(metrics_path: Path, up_to_step: int) -> float:
    """Seconds the logged train steps up to ``up_to_step`` took (``time/step_s``), for a resumed run's summary."""
    return sum(float(row.get("time/step_s") or 0.0) for row in read_jsonl(metrics_path)
               if "reward" in row and int(row.get("step", 0)) <= up_to_step)


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``-`` when it is missing or not finite (keeps the columns)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width) if width else 1)
    return format(value, spec)


def format_duration(seconds: float) -> str:
    """Seconds as a short human duration: ``42s``, ``3m05s``, ``1h02m``; ``-`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _mean(values: list[float]) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def steps_text(n: int) -> str:
    """``1 step``, ``60 steps``: the run's length as the console says it."""
    return f"{n} step{'' if n == 1 else 's'}"


def summary_lines(summary: dict, train_rows: list[dict], out: Path, files: list[str]) -> list[str]:
    """The end-of-run summary: eval start vs end, train signals first vs last steps, wall time, file paths."""
    wall = summary["wall_s"]
    steps = summary["steps"]
    lines = [f"done: {steps_text(steps)} in {format_duration(wall)}"
             + (f" ({wall:.0f}s)" if wall >= 60 else "")]
    first, last = summary.get("first_eval"), summary.get("last_eval")
    if first and last:
        lines.append(f"  eval accuracy {fmt(first.get('eval/accuracy'), '.3f')} -> {fmt(last.get('eval/accuracy'), '.3f')}"
                     f"   mean length {fmt(first.get('eval/mean_length'), '.1f')} -> "
                     f"{fmt(last.get('eval/mean_length'), '.1f')} tokens")
    window = min(SUMMARY_WINDOW, len(train_rows) // 2)  # the two windows never overlap
    if window:
        head, tail = train_rows[:window], train_rows[-window:]
        parts = []
        for key, label, spec in (("reward", "reward", ".3f"), ("completions/mean_length", "length", ".1f"),
                                 ("reasoning/think_length", "think length", ".1f"),
                                 ("reasoning/reflection_ratio", "reflection ratio", ".3f")):
            a, b = _mean([r.get(key) for r in head]), _mean([r.get(key) for r in tail])
            if math.isfinite(a) or math.isfinite(b):
                parts.append(f"{label} {fmt(a, spec)} -> {fmt(b, spec)}")
        if parts:
            lines.append(f"  train (mean of first vs last {window} step{'s' if window > 1 else ''}): " + ", ".join(parts))
    lines.append(f"  files in {out}: " + ", ".join(files))
    return lines
