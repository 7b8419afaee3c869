"""Metric sinks: the console, ``metrics.jsonl``, ``completions.jsonl``, ``curves.png``, trackers and the run record.

Only the main process writes; every number is gathered over ranks first, so files describe the whole run.
Metric names follow TRL (see DESIGN.md) so dashboards carry over; the same names go to ``metrics.jsonl``
and to every tracker in ``report_to`` (through accelerate's tracking API).

Console: on a terminal, a rich progress bar with ETA sits under the per-step lines; when stdout is not a
terminal (CI logs, pipes, ``| tee``) there is no bar and no control characters, only plain lines that carry
the ETA themselves.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from grpo import signals
from grpo.config import GRPOConfig, report_to_list, to_dict
from grpo.rollout import RolloutBatch

PROJECT_NAME = "grpo-zero"  # the W&B / trackio project; TensorBoard events go to output_dir/grpo-zero/
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


def tracker_names(cfg: GRPOConfig) -> list[str]:
    """The accelerate trackers ``report_to`` asks for (``[]`` for none); pass as ``Accelerator(log_with=...)``."""
    return report_to_list(cfg.report_to)


def flat_config(cfg: GRPOConfig) -> dict[str, Any]:
    """The config as flat ``{key: bool | int | float | str}``: nested values become ``a.b`` keys, lists and
    None become strings, because TensorBoard's hparams accept scalars only."""
    out: dict[str, Any] = {}

    def put(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{prefix}.{k}", v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = str(value)

    for key, value in to_dict(cfg).items():
        put(key, value)
    return out


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers only, NaN/inf and None left out: what trackers can plot."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _fmt(value: Any, spec: str) -> str:
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


def format_step_line(step: int, max_steps: int, m: dict[str, Any], eta_s: float | None = None) -> str:
    """One fixed-width console line per step (columns line up, so a log reads like a table).

    Shows step, reward, training accuracy (the ``accuracy`` reward's mean), mean/max response length in
    tokens, clipped ratio (share cut at max length), KL, entropy, step time and, when given, the ETA.

    Example:
        >>> format_step_line(3, 100, {"reward": 0.5, "completions/mean_length": 21.0, "time/step_s": 1.2})
        'step    3/100  reward 0.500  acc     -  len  21.0 max    -  clip    -  kl      -  ent     -  1.20s'
    """
    width = len(str(max_steps))
    line = (
        f"step {step:>{max(width, 4)}}/{max_steps}  reward {_fmt(m.get('reward'), '.3f')}  "
        f"acc {_fmt(m.get('rewards/accuracy/mean'), '5.3f')}  "
        f"len {_fmt(m.get('completions/mean_length'), '5.1f')} max {_fmt(m.get('completions/max_length'), '4.0f')}  "
        f"clip {_fmt(m.get('completions/clipped_ratio'), '4.2f')}  kl {_fmt(m.get('kl'), '6.4f')}  "
        f"ent {_fmt(m.get('entropy'), '5.3f')}  {_fmt(m.get('time/step_s'), '.2f')}s"
    )
    if eta_s is not None:
        line += f"  eta {format_duration(eta_s)}"
    if m.get("skipped_update"):
        line += "  (no signal: update skipped)"
    return line


def format_eval_line(step: int, m: dict[str, Any]) -> str:
    """The eval line: accuracy, format rate and mean length on the held-out set."""
    return (f"eval step {step:>4}  accuracy {_fmt(m.get('eval/accuracy'), '.3f')}  format {_fmt(m.get('eval/format'), '.3f')}  "
            f"mean length {_fmt(m.get('eval/mean_length'), '.1f')}")


def _mean(values: list[float]) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def summary_lines(summary: dict, train_rows: list[dict], out: Path, files: list[str]) -> list[str]:
    """The end-of-run summary: eval start vs end, train signals first vs last steps, wall time, file paths."""
    wall = summary["wall_s"]
    lines = [f"done: {summary['steps']} steps in {format_duration(wall)}" + (f" ({wall:.0f}s)" if wall >= 60 else "")]
    first, last = summary.get("first_eval"), summary.get("last_eval")
    if first and last:
        lines.append(f"  eval accuracy {_fmt(first.get('eval/accuracy'), '.3f')} -> {_fmt(last.get('eval/accuracy'), '.3f')}   "
                     f"mean length {_fmt(first.get('eval/mean_length'), '.1f')} -> {_fmt(last.get('eval/mean_length'), '.1f')} tokens")
    window = min(SUMMARY_WINDOW, len(train_rows) // 2)  # the two windows never overlap
    if window:
        head, tail = train_rows[:window], train_rows[-window:]
        parts = []
        for key, label, spec in (("reward", "reward", ".3f"), ("completions/mean_length", "length", ".1f"),
                                 ("reasoning/think_length", "think length", ".1f"),
                                 ("reasoning/reflection_ratio", "reflection ratio", ".3f")):
            a, b = _mean([r.get(key) for r in head]), _mean([r.get(key) for r in tail])
            if math.isfinite(a) or math.isfinite(b):
                parts.append(f"{label} {_fmt(a, spec)} -> {_fmt(b, spec)}")
        if parts:
            lines.append(f"  train (mean of first vs last {window} step{'s' if window > 1 else ''}): " + ", ".join(parts))
    lines.append(f"  files in {out}: " + ", ".join(files))
    return lines


class MetricsLogger:
    """Every sink of a run. The trainer calls ``start``, ``rollout_metrics`` and ``log_completions`` each step,
    ``log`` for train and eval rows, and ``finish``.

    Args:
        cfg: the run config (output_dir, report_to, log_completions_steps, reflection_words...).
        accelerator: built with ``log_with=tracker_names(cfg), project_dir=cfg.output_dir`` for trackers.
        tokenizer: used to count think-block tokens; without it ``reasoning/think_chars`` (characters) is logged.
    """

    def __init__(self, cfg: GRPOConfig, accelerator: Accelerator, tokenizer: Any = None):
        self.cfg = cfg
        self.acc = accelerator
        self.tokenizer = tokenizer
        self.out = Path(cfg.output_dir)
        self.metrics_path = self.out / "metrics.jsonl"
        self.completions_path = self.out / "completions.jsonl"
        self.curves_path = self.out / "curves.png"
        self.t0 = time.time()
        self.console = Console(highlight=False, soft_wrap=True)
        self.progress: Progress | None = None
        self._task = None
        self._rate_start: tuple[float, int] | None = None  # (time, step) from which the ETA is measured
        self._warned: set[str] = set()
        self._trackers = False

    # --- setup -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create ``output_dir``; write ``run_info.json`` and ``config.yaml``; start fresh ``metrics.jsonl`` and
        ``completions.jsonl`` (a resume puts the checkpoint's copies back afterwards); start trackers and the bar."""
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            info = {
                "grpo_zero": _version("grpo-zero"), "torch": torch.__version__, "transformers": _version("transformers"),
                "accelerate": _version("accelerate"), "trl": _version("trl"), "python": platform.python_version(),
                "git_commit": _git_commit(), "world_size": self.acc.num_processes, "device": str(self.acc.device),
                "distributed_type": str(self.acc.distributed_type), "seed": self.cfg.seed,
                "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv,
                "torch_threads": torch.get_num_threads(), "hostname": platform.node(), "pid": os.getpid(),
                "report_to": tracker_names(self.cfg),
            }
            (self.out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
            (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            self.metrics_path.write_text("")
            self.completions_path.write_text("")
            self.console.print(f"grpo-zero: {self.cfg.max_steps} steps, world size {self.acc.num_processes}, "
                               f"device {self.acc.device}, output {self.out}", markup=False)
        if self.acc.log_with:
            # init_trackers runs on the main process only (accelerate's decorator); the others have none.
            self.acc.init_trackers(PROJECT_NAME, config=flat_config(self.cfg),
                                   init_kwargs={"wandb": {"name": self.out.name}})
            self._trackers = True
        if self.acc.is_main_process and self.console.is_terminal:
            self.progress = Progress(TextColumn("[bold]grpo[/bold]"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("steps"), TimeElapsedColumn(), TextColumn("eta"),
                                     TimeRemainingColumn(), console=self.console, transient=False)
            self.progress.start()
            self._task = self.progress.add_task("train", total=self.cfg.max_steps)
            atexit.register(self._stop_progress)  # a crash must not leave the terminal without a cursor

    # --- per step --------------------------------------------------------------------------------------

    def rollout_metrics(self, batch: RolloutBatch, rewards: Tensor, per_reward: dict[str, Tensor],
                        group_size: int) -> dict[str, float]:
        """Reward, length and reasoning statistics over all ranks.

        Args:
            batch: this rank's N completions.
            rewards: (N,) weighted reward sums.
            per_reward: name -> (N,) values, NaN where the reward returned None.
            group_size: G, completions per prompt (contiguous in the batch).

        Returns:
            ``reward``, ``reward_std`` (mean within-group std), ``frac_reward_zero_std``, ``rewards/<name>/mean``,
            ``completions/{mean,min,max,p10,p90}_length`` (tokens, EOS included), ``completions/clipped_ratio``,
            ``reasoning/reflection_ratio`` and ``reasoning/think_length`` (see :mod:`grpo.signals`).
        """
        acc = self.acc
        gather = lambda t: acc.gather(t.to(acc.device).float()).cpu()
        r = gather(rewards)
        lengths = gather(batch.lengths)
        truncated = gather(batch.truncated)
        group_std = r.view(-1, group_size).std(dim=1)
        m = {
            "reward": r.mean().item(),
            "reward_std": group_std.mean().item(),
            "frac_reward_zero_std": (group_std < 1e-8).float().mean().item(),
            "completions/mean_length": lengths.mean().item(),
            "completions/min_length": lengths.min().item(),
            "completions/max_length": lengths.max().item(),
            "completions/p10_length": torch.quantile(lengths, 0.1).item(),
            "completions/p90_length": torch.quantile(lengths, 0.9).item(),
            "completions/clipped_ratio": truncated.mean().item(),
            "completions/count": lengths.numel(),  # over all ranks: shows every rank contributed
        }
        for name, values in per_reward.items():
            v = gather(values)
            valid = v[~torch.isnan(v)]
            m[f"rewards/{name}/mean"] = valid.mean().item() if valid.numel() else math.nan
        m.update(self._reasoning_metrics(batch.completions, gather))
        return m

    def _reasoning_metrics(self, completions: list[str], gather) -> dict[str, float]:
        """``reasoning/reflection_ratio`` and the mean think length, each computed per sample and gathered."""
        m: dict[str, float] = {}
        if self.cfg.reflection_words:
            flags = torch.tensor(signals.reflection_flags(completions, self.cfg.reflection_words), dtype=torch.float)
            m["reasoning/reflection_ratio"] = gather(flags).mean().item()
        blocks = [signals.think_block(c) for c in completions]
        present = [b for b in blocks if b is not None]
        if self.tokenizer is not None:
            # One batched call: per-string calls cost ~50 us each, which adds up at 1k completions per step.
            ids = self.tokenizer(present, add_special_tokens=False)["input_ids"] if present else []
            counts, key = iter([len(x) for x in ids]), "reasoning/think_length"
        else:
            counts, key = iter([len(b) for b in present]), "reasoning/think_chars"
        values = [math.nan if b is None else float(next(counts)) for b in blocks]
        lengths = gather(torch.tensor(values, dtype=torch.float))
        valid = lengths[~torch.isnan(lengths)]
        m[key] = valid.mean().item() if valid.numel() else math.nan
        return m

    def should_log_completions(self, step: int) -> bool:
        """Completions are written at step 1, every ``log_completions_steps`` steps and at the last step."""
        n = self.cfg.log_completions_steps
        return n > 0 and (step == 1 or step % n == 0 or step == self.cfg.max_steps)

    def log_completions(self, step: int, batch: RolloutBatch, rows: list[dict], rewards: Tensor,
                        per_reward: dict[str, Tensor], advantages: Tensor) -> None:
        """Append every completion of this step (all ranks) to ``completions.jsonl`` when it is due.

        Call on every process (the rows are gathered). One JSON object per completion: ``step``, ``group``
        (index of its prompt in the global batch), ``prompt``, ``completion``, ``answer`` (gold, if the task
        has one), ``reward`` (weighted sum), ``rewards`` (name -> value, null = does not apply), ``advantage``,
        ``length`` (tokens, EOS included) and ``truncated``.

        Args:
            batch: this rank's N completions; rows: the N matching dataset rows; rewards, advantages: (N,);
            per_reward: name -> (N,) with NaN for None.
        """
        if not self.should_log_completions(step):
            return
        n = len(batch.completions)
        if not (len(rows) == rewards.numel() == advantages.numel() == n):
            self._warn_once("completions", f"completions.jsonl: skipped step {step}, the batch has {n} completions "
                            f"but {rewards.numel()} rewards and {advantages.numel()} advantages")
            return
        lengths, truncated = batch.lengths.tolist(), batch.truncated.tolist()
        named = {name: v.tolist() for name, v in per_reward.items()}
        records = []
        for i in range(n):
            rec = {"step": step, "group": i // self.cfg.num_generations, "prompt": batch.prompts[i],
                   "completion": batch.completions[i]}
            if "answer" in rows[i]:
                rec["answer"] = rows[i]["answer"]
            # 6 decimals: float32 values otherwise print as 1.100000023841858
            rec["reward"] = round(float(rewards[i]), 6)
            rec["rewards"] = {k: (None if math.isnan(v[i]) else round(v[i], 6)) for k, v in named.items()}
            rec.update(advantage=round(float(advantages[i]), 6), length=int(lengths[i]), truncated=bool(truncated[i]))
            records.append(rec)
        if self.acc.num_processes > 1:
            per_rank = gather_object([records])  # list with one list of records per rank, in rank order
            groups_per_rank = n // self.cfg.num_generations
            records = [dict(rec, group=rec["group"] + rank * groups_per_rank)
                       for rank, recs in enumerate(per_rank) for rec in recs]
        if self.acc.is_main_process:
            with self.completions_path.open("a") as f:
                f.writelines(json.dumps(rec) + "\n" for rec in records)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append ``{"step": step, **metrics}`` to metrics.jsonl, send it to the trackers and the console.

        Eval rows (with ``eval/accuracy``) print a highlighted line and redraw ``curves.png``. Main process only.
        """
        if not self.acc.is_main_process:
            return
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self._trackers:
            self.acc.log(_finite(metrics), step=step)
        if "eval/accuracy" in metrics:
            self.console.print(format_eval_line(step, metrics), style="bold green", markup=False)
            self.write_curves()
            return
        if self._rate_start is None:
            # The first train step of this process (step > 1 after a resume): measure pace and ETA from
            # its start, so neither the initial eval nor the resumed steps distort them.
            self._rate_start = (time.perf_counter() - float(metrics.get("time/step_s") or 0.0), step - 1)
            if self.progress is not None:
                self.progress.reset(self._task, completed=step - 1)
        if self.progress is not None:
            self.progress.update(self._task, completed=step)
        if step % self.cfg.logging_steps == 0 or step == self.cfg.max_steps:
            # With a live bar the bar shows the ETA; in a plain log each line carries it.
            eta = None if self.progress is not None else self._eta(step)
            self.console.print(format_step_line(step, self.cfg.max_steps, metrics, eta), markup=False)

    def _eta(self, step: int) -> float | None:
        """Seconds left at the average pace since the first step (evals included)."""
        t, s = self._rate_start
        done = step - s
        return (time.perf_counter() - t) / done * (self.cfg.max_steps - step) if done > 0 else None

    def write_curves(self) -> Path | None:
        """Redraw ``curves.png`` from metrics.jsonl (atomically). A plotting failure warns, never stops training."""
        if not self.acc.is_main_process:
            return None
        try:
            from grpo import plot  # matplotlib costs ~0.5 s to import: only when a figure is drawn

            fig = plot.draw_curves({self.out.name: plot.read_metrics(self.metrics_path)})
            return plot.save_figure_atomic(fig, self.curves_path)
        except Exception as e:  # noqa: BLE001 - a figure is never worth losing a run over
            self._warn_once("curves", f"could not draw {self.curves_path}: {type(e).__name__}: {e}")
            return None

    def finish(self, summary: dict) -> None:
        """Draw the final curves, close the trackers and print the summary (start vs end, wall time, files)."""
        if self._trackers:
            # Each tracker's finish() rather than accelerator.end_training(): that also destroys the process
            # group, which belongs to the trainer (it may still save or synchronise after logging ends).
            for tracker in self.acc.trackers:
                tracker.finish()
        if not self.acc.is_main_process:
            return
        self.write_curves()
        self._stop_progress()
        files = [p.name for p in (self.metrics_path, self.completions_path, self.curves_path,
                                  self.out / "config.yaml", self.out / "run_info.json") if p.exists()]
        if "tensorboard" in tracker_names(self.cfg):
            files.append(f"{PROJECT_NAME}/ (tensorboard --logdir {self.out})")
        train_rows = [r for r in _read_jsonl(self.metrics_path) if "reward" in r]  # includes rows restored on resume
        for i, line in enumerate(summary_lines(summary, train_rows, self.out, files)):
            self.console.print(line, style="bold" if i == 0 else None, markup=False)

    # --- helpers ---------------------------------------------------------------------------------------

    def format_line(self, step: int, m: dict[str, float]) -> str:
        """One console line for a train step (see :func:`format_step_line`)."""
        return format_step_line(step, self.cfg.max_steps, m)

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a missing file is empty, a torn line (killed mid-write) is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows

