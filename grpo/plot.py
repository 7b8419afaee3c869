"""Training curves from ``metrics.jsonl``: one figure, one panel per signal, several runs overlaid.

    python -m grpo.plot runs/default                      # redraws runs/default/curves.png
    python -m grpo.plot runs/a runs/b --out compare.png   # two runs on one figure

The trainer calls :func:`write_curves` at every eval and at the end of a run. Drawing uses matplotlib's Agg
canvas directly (no pyplot, no global backend switch), and the PNG is written to a temporary file that
``os.replace`` moves into place, so a run killed mid-write never leaves a broken ``curves.png``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from grpo.run_record import read_metrics


@dataclass(frozen=True)
class Panel:
    """One subplot: a train metric drawn as a line, optionally an eval metric as markers and a band."""

    title: str
    key: str
    eval_key: str | None = None
    band: tuple[str, str] | None = None  # (low key, high key) shaded around the line
    ylabel: str = ""
    empty_note: str = "not logged"


# Top row: what R1-Zero is known for (reward, accuracy, response length, reflection: the "aha moment"); the
# reflection panel sits next to length so both effects read side by side. Bottom row: diagnostics.
PANELS: tuple[Panel, ...] = (
    Panel("reward", "reward", ylabel="mean reward"),
    Panel("accuracy", "rewards/accuracy/mean", eval_key="eval/accuracy", ylabel="share correct"),
    Panel("response length", "completions/mean_length", eval_key="eval/mean_length",
          band=("completions/p10_length", "completions/p90_length"), ylabel="tokens (band: p10-p90)"),
    Panel("reflection ratio", "reasoning/reflection_ratio", ylabel="share with reflection words"),
    Panel("think length", "reasoning/think_length", ylabel="tokens in <think>"),
    Panel("entropy", "entropy", ylabel="nats per token"),
    Panel("KL to reference", "kl", ylabel="k3 KL", empty_note="not logged (beta = 0: no reference model)"),
    Panel("clipped ratio", "completions/clipped_ratio", ylabel="share cut at max length"),
)
# A third row when the run calls tools (grpo/rollout/turns.py): does tool use rise, and do the calls work?
TOOL_PANELS: tuple[Panel, ...] = (
    Panel("tool use", "tools/calls_per_completion", ylabel="tool calls per completion"),
    Panel("tool errors", "tools/error_rate", ylabel="share of calls that failed"),
)


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over ``rows``, skipping rows without it and null/NaN values."""
    steps, values = [], []
    for row in rows:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(row["step"])
            values.append(float(v))
    return steps, values


def _draw_panel(ax, panel: Panel, runs: dict[str, list[dict]], colors: list[str]) -> None:
    drawn = False
    for (label, rows), color in zip(runs.items(), colors):
        steps, values = series(rows, panel.key)
        if steps:
            ax.plot(steps, values, color=color, linewidth=1.4, label=label)
            drawn = True
        if panel.band and steps:
            lo, hi = dict(zip(*series(rows, panel.band[0]))), dict(zip(*series(rows, panel.band[1])))
            band_steps = [s for s in steps if s in lo and s in hi]
            if band_steps:
                ax.fill_between(band_steps, [lo[s] for s in band_steps], [hi[s] for s in band_steps],
                                color=color, alpha=0.18, linewidth=0)
        if panel.eval_key:
            e_steps, e_values = series(rows, panel.eval_key)
            if e_steps:
                ax.plot(e_steps, e_values, color=color, linestyle="--", marker="o", markersize=4, linewidth=1.0,
                        label=f"{label} (eval)")
                drawn = True
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel("step", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(panel.ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if drawn:
        if panel.eval_key or len(runs) > 1:
            ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, panel.empty_note, ha="center", va="center", transform=ax.transAxes, fontsize=9,
                color="gray")


def draw_curves(runs: dict[str, list[dict]], title: str | None = None) -> Figure:
    """A 2 x 4 figure of :data:`PANELS` (3 x 4 with :data:`TOOL_PANELS` when a run logged
    ``tools/calls_per_completion``); each run is one colour, eval points are dashed with markers.

    Args:
        runs: run label -> its metrics rows (train rows and eval rows mixed, as in metrics.jsonl).
        title: figure title; default lists the run labels.
    """
    tools = any(series(rows, "tools/calls_per_completion")[0] for rows in runs.values())
    panels = PANELS + (TOOL_PANELS if tools else ())
    n_rows = -(-len(panels) // 4)
    fig = Figure(figsize=(18, 4 * n_rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    palette = [f"C{i}" for i in range(10)]
    colors = [palette[i % len(palette)] for i in range(len(runs))]
    axes = fig.subplots(n_rows, 4)
    for ax, panel in zip(axes.flat, panels):
        _draw_panel(ax, panel, runs, colors)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or "grpo-zero: " + ", ".join(runs), fontsize=12)
    return fig


def save_figure_atomic(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a PNG should be readable like any output file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_labels(run_dirs: list[str | os.PathLike]) -> list[str]:
    """Short labels for run folders: the folder name, or the whole path where names collide."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs)]


def write_curves(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Read each run's ``metrics.jsonl``, draw them on one figure and save it atomically to ``out``."""
    runs = {label: read_metrics(d) for label, d in zip(run_labels(run_dirs), run_dirs)}
    return save_figure_atomic(draw_curves(runs), out)


def main(argv: list[str] | None = None) -> int:
    """``python -m grpo.plot RUN_DIR [RUN_DIR ...] [--out PATH]``; returns the exit code."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m grpo.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run folders (each holding metrics.jsonl)")
    parser.add_argument("--out", help="PNG path; default RUN_DIR/curves.png for one run, curves.png here for several")
    args = parser.parse_args(argv)
    for d in args.run_dirs:
        if not (Path(d) / "metrics.jsonl").is_file():
            print(f"error: {d} has no metrics.jsonl; pass the output_dir of a run", file=sys.stderr)
            return 2
    out = args.out or (Path(args.run_dirs[0]) / "curves.png" if len(args.run_dirs) == 1 else Path("curves.png"))
    print(f"wrote {write_curves(args.run_dirs, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
