"""Metric sinks: the console line, ``metrics.jsonl``, ``run_info.json`` and the resolved ``config.yaml``.

Only the main process writes; every number is gathered over ranks first, so files describe the whole run.
Metric names follow TRL (see DESIGN.md) so dashboards carry over.
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

import torch
import yaml
from accelerate import Accelerator
from torch import Tensor

from grpo.config import GRPOConfig, to_dict
from grpo.rollout import RolloutBatch


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1])
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class MetricsLogger:
    """Writes one JSON object per ``log`` call to ``output_dir/metrics.jsonl`` and a console line per step."""

    def __init__(self, cfg: GRPOConfig, accelerator: Accelerator):
        self.cfg = cfg
        self.acc = accelerator
        self.out = Path(cfg.output_dir)
        self.metrics_path = self.out / "metrics.jsonl"
        self.t0 = time.time()

    def start(self) -> None:
        """Create ``output_dir``; write ``run_info.json`` and ``config.yaml``; start a fresh ``metrics.jsonl``."""
        if not self.acc.is_main_process:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        info = {
            "grpo_zero": _version("grpo-zero"), "torch": torch.__version__, "transformers": _version("transformers"),
            "accelerate": _version("accelerate"), "trl": _version("trl"), "python": platform.python_version(),
            "git_commit": _git_commit(), "world_size": self.acc.num_processes, "device": str(self.acc.device),
            "distributed_type": str(self.acc.distributed_type), "seed": self.cfg.seed,
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv,
            "torch_threads": torch.get_num_threads(), "hostname": platform.node(), "pid": os.getpid(),
        }
        (self.out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
        (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        self.metrics_path.write_text("")
        self.acc.print(f"grpo-zero: {self.cfg.max_steps} steps, world size {self.acc.num_processes}, "
                       f"device {self.acc.device}, output {self.out}")

    def rollout_metrics(self, batch: RolloutBatch, rewards: Tensor, per_reward: dict[str, Tensor], group_size: int) -> dict[str, float]:
        """Reward and length statistics over all ranks. rewards (N,), per_reward name -> (N,) with NaN = None."""
        acc = self.acc
        gather = lambda t: acc.gather(t.to(acc.device).float()).cpu()  # noqa: E731
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
            "completions/clipped_ratio": truncated.mean().item(),
        }
        for name, values in per_reward.items():
            v = gather(values)
            valid = v[~torch.isnan(v)]
            m[f"rewards/{name}/mean"] = valid.mean().item() if valid.numel() else math.nan
        return m

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append ``{"step": step, **metrics}`` to metrics.jsonl and print a line (main process only)."""
        if not self.acc.is_main_process:
            return
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if "eval/accuracy" in metrics:
            print(f"[eval] step {step:>4}  accuracy {metrics['eval/accuracy']:.3f}  format {metrics['eval/format']:.3f}  "
                  f"mean length {metrics['eval/mean_length']:.1f}", flush=True)
        elif step % self.cfg.logging_steps == 0 or step == self.cfg.max_steps:
            print(self.format_line(step, metrics), flush=True)

    def format_line(self, step: int, m: dict[str, float]) -> str:
        """One console line: step, reward, accuracy, mean length, KL, step time."""
        acc_key = "rewards/accuracy/mean"
        parts = [f"step {step:>4}/{self.cfg.max_steps}", f"reward {m['reward']:.3f}"]
        if acc_key in m:
            parts.append(f"accuracy {m[acc_key]:.3f}")
        parts.append(f"length {m['completions/mean_length']:.1f}")
        parts.append(f"kl {m.get('kl', 0.0):.4f}")
        parts.append(f"entropy {m.get('entropy', math.nan):.3f}")
        parts.append(f"{m['time/step_s']:.2f}s")
        if m.get("skipped_update"):
            parts.append("(no signal: update skipped)")
        return "  ".join(parts)

    def finish(self, summary: dict) -> None:
        """Print the start vs end summary and where the files are."""
        if not self.acc.is_main_process:
            return
        first, last = summary.get("first_eval"), summary.get("last_eval")
        print(f"done: {summary['steps']} steps in {summary['wall_s']:.0f}s", flush=True)
        if first and last:
            print(f"  eval accuracy {first['eval/accuracy']:.3f} -> {last['eval/accuracy']:.3f}, "
                  f"mean length {first['eval/mean_length']:.1f} -> {last['eval/mean_length']:.1f}", flush=True)
        print(f"  files: {self.metrics_path}, {self.out / 'run_info.json'}, {self.out / 'config.yaml'}", flush=True)
