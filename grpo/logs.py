"""Metric sinks: the console, ``metrics.jsonl``, ``completions.jsonl``, ``curves.png``, trackers and the run record.

Only the main process writes; every number is gathered over ranks first, so files describe the whole run.
Metric names follow TRL so dashboards carry over; the same names go to ``metrics.jsonl``
and to every tracker in ``report_to`` (through accelerate's tracking API).

Console: on a terminal, a rich progress bar with ETA sits under the per-step lines; when stdout is not a
terminal (CI logs, pipes, ``| tee``) there is no bar and no control characters, only plain lines that carry
the ETA themselves.
"""

from __future__ import annotations

import atexit
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from grpo.batch import StepBatch
from grpo.config import GRPOConfig, to_dict
from grpo.run_record import fmt as _fmt
from grpo.run_record import format_duration, read_jsonl, run_info, steps_text, summary_lines, write_run_record
from grpo.trackers import report_to_list

PROJECT_NAME = "grpo-zero"  # the W&B / trackio project; TensorBoard events go to output_dir/grpo-zero/


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


def format_step_line(step: int, max_steps: int, m: dict[str, Any], eta_s: float | None = None,
                     accuracy_reward: str = "accuracy") -> str:
    """One fixed-width console line per step (columns line up, so a log reads like a table).

    Shows step, reward, training accuracy (the mean of ``accuracy_reward``, the run's ``eval_reward``), mean/max
    response length in
    tokens, clipped ratio (share cut at max length), KL, entropy, step time and, when given, the ETA.

    Example:
        >>> format_step_line(3, 100, {"reward": 0.5, "completions/mean_length": 21.0, "time/step_s": 1.2})
        'step    3/100  reward 0.500  acc     -  len  21.0 max    -  clip    -  kl      -  ent     -  1.20s'
    """
    width = len(str(max_steps))
    line = (
        f"step {step:>{max(width, 4)}}/{max_steps}  reward {_fmt(m.get('reward'), '.3f')}  "
        f"acc {_fmt(m.get(f'rewards/{accuracy_reward}/mean'), '5.3f')}  "
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


def completion_records(step: int, batch: StepBatch) -> list[dict]:
    """One JSON-ready record per completion of ``batch`` (this rank's N rows, advantages computed).

    Fields: ``step``, ``group`` (index of its prompt in this rank's batch), ``prompt``, ``completion``, ``answer``
    (gold, if the task has one), ``reward`` (weighted sum), ``rewards`` (name -> value, null = does not apply),
    ``advantage``, ``length`` (tokens the model wrote, EOS included), ``truncated`` and ``verdicts`` (reward name ->
    why it scored what it did, for rewards that explain themselves, e.g. accuracy's ``reason``). With tools the
    completion is the whole transcript and the record adds ``tool_calls`` (each call's name, arguments, output,
    error, seconds, timed_out) and ``tool_tokens`` (tool-output tokens, not in ``length``).
    """
    rollout = batch.rollout
    lengths, truncated = rollout.model_lengths.tolist(), rollout.truncated.tolist()
    tool_calls = rollout.tool_records()
    tool_tokens = rollout.tool_mask.sum(-1).tolist() if rollout.tool_mask is not None else None
    named = {name: v.tolist() for name, v in batch.per_reward.items()}
    records = []
    for i in range(len(batch)):
        rec = {"step": step, "group": i // batch.group_size, "prompt": rollout.prompts[i], "completion": rollout.completions[i]}
        if "answer" in batch.rows[i]:
            rec["answer"] = batch.rows[i]["answer"]
        # 6 decimals: float32 values otherwise print as 1.100000023841858
        rec["reward"] = round(float(batch.rewards[i]), 6)
        rec["rewards"] = {k: (None if math.isnan(v[i]) else round(v[i], 6)) for k, v in named.items()}
        rec.update(advantage=round(float(batch.advantages[i]), 6), length=int(lengths[i]), truncated=bool(truncated[i]))
        if batch.rows[i].get("verdicts"):  # reward name -> verdict (accuracy: score, reason, answer, path, seconds)
            rec["verdicts"] = batch.rows[i]["verdicts"]
        if tool_calls is not None:
            rec.update(tool_calls=tool_calls[i], tool_tokens=int(tool_tokens[i]))
        records.append(rec)
    return records


class MetricsLogger:
    """Every sink of a run; it only writes (metrics are computed and reduced over ranks in :mod:`grpo.metrics`).
    The trainer calls ``start``, then ``log`` for train and eval rows, ``log_completions`` when
    ``should_log_completions``, and ``finish``. Everything is written by the main process only.

    Args:
        cfg: the run config (output_dir, report_to, log_completions_steps, max_steps...).
        accelerator: built with ``log_with=tracker_names(cfg), project_dir=cfg.output_dir`` for trackers.
    """

    def __init__(self, cfg: GRPOConfig, accelerator: Accelerator):
        self.cfg = cfg
        self.acc = accelerator
        self.out = Path(cfg.output_dir)
        self.metrics_path = self.out / "metrics.jsonl"
        self.completions_path = self.out / "completions.jsonl"
        self.curves_path = self.out / "curves.png"
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
            write_run_record(self.out, run_info(self.acc, self.cfg.seed, tracker_names(self.cfg)), to_dict(self.cfg))
            self.metrics_path.write_text("")
            self.completions_path.write_text("")
            self.console.print(f"grpo-zero: {steps_text(self.cfg.max_steps)}, world size {self.acc.num_processes}, "
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

    def should_log_completions(self, step: int) -> bool:
        """Completions are written at step 1, every ``log_completions_steps`` steps and at the last step."""
        n = self.cfg.log_completions_steps
        return n > 0 and (step == 1 or step % n == 0 or step == self.cfg.max_steps)

    def log_completions(self, records: list[dict]) -> None:
        """Append completion records (see :func:`completion_records`, gathered over ranks) to completions.jsonl."""
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
            self.console.print(format_step_line(step, self.cfg.max_steps, metrics, eta, self.cfg.eval_reward),
                               markup=False)

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
        if (self.out / "final").is_dir():
            files.append("final/ (the trained model)")
        checkpoints = sorted(p.name for p in self.out.glob("checkpoint-*") if p.is_dir())
        if checkpoints:
            files.append(f"{', '.join(checkpoints)} (resume: rerun the same command)")
        if "tensorboard" in tracker_names(self.cfg):
            files.append(f"{PROJECT_NAME}/ (tensorboard --logdir {self.out})")
        train_rows = [r for r in read_jsonl(self.metrics_path) if "reward" in r]  # includes rows restored on resume
        for i, line in enumerate(summary_lines(summary, train_rows, self.out, files)):
            self.console.print(line, style="bold" if i == 0 else None, markup=False)

    # --- helpers ---------------------------------------------------------------------------------------

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
