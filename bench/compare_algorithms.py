"""GRPO vs Dr. GRPO vs DAPO on the tiny default task, with equal budgets.

Each variant is ``python train.py --config configs/default.yaml`` in a subprocess with the same seed, steps and
batch; only the algorithm keys differ:

* ``grpo``: ``loss_type=grpo`` (per-sequence mean), ``scale_rewards=group`` (divide by the group std);
* ``dr_grpo``: ``loss_type=dr_grpo`` (constant normaliser), ``scale_rewards=none`` (no std division): real Dr. GRPO;
* ``dapo``: ``loss_type=dapo`` (token-level mean), ``scale_rewards=group``, ``epsilon_high=0.28`` (clip-higher).

Writes a markdown table (final eval accuracy, mean response lengths, steps, wall time) to
``<results_dir>/algorithms.md``, one PNG of the eval and training length curves to
``<results_dir>/algorithms_length.png``, and prints the table.

    python bench/compare_algorithms.py --max_steps 40
    python bench/compare_algorithms.py --max_steps 60 --per_device_train_batch_size 64 --output_dir runs/algos
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict] = {
    "grpo": {"loss_type": "grpo", "scale_rewards": "group"},
    "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none"},
    "dapo": {"loss_type": "dapo", "scale_rewards": "group", "epsilon_high": 0.28},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max_steps", type=int, default=60, help="GRPO steps per variant (the same for all).")
    p.add_argument("--output_dir", default="runs/compare_algorithms", help="Run folders go here, one per variant.")
    p.add_argument("--results_dir", default=str(ROOT / "bench" / "results"), help="Where the table and PNG go.")
    p.add_argument("--config", default="configs/default.yaml", help="Base recipe shared by all variants.")
    p.add_argument("--seed", type=int, default=42, help="The same seed for every variant.")
    p.add_argument("--per_device_train_batch_size", type=int, default=None, help="Override the recipe's batch.")
    p.add_argument("--eval_steps", type=int, default=None, help="Override the recipe's eval interval.")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated subset of {', '.join(VARIANTS)}.")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.max_steps < 1:
        p.error("--max_steps must be >= 1")
    return args


def run_variant(name: str, args: argparse.Namespace) -> tuple[Path, float]:
    """Train one variant in a subprocess. Returns its run folder and wall time (s, process start to exit)."""
    out = Path(args.output_dir).resolve() / name
    out.mkdir(parents=True, exist_ok=True)
    # The variant's keys go in a YAML recipe, not on the CLI: the CLI reads "none" as null (scale_rewards: none).
    recipe = yaml.safe_load((ROOT / args.config).read_text()) | VARIANTS[name]
    recipe_path = out.parent / f"{name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    cmd = [sys.executable, "train.py", "--config", str(recipe_path), "--output_dir", str(out),
           "--max_steps", str(args.max_steps), "--seed", str(args.seed),
           "--overwrite_output_dir", "true", "--save_final_model", "false"]
    for key in ("per_device_train_batch_size", "eval_steps"):
        if getattr(args, key) is not None:
            cmd += [f"--{key}", str(getattr(args, key))]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "bench_stdout.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"error: variant {name} failed (exit {proc.returncode}): " + " | ".join(tail))
    return out, wall


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``."""
    with (run_dir / "metrics.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]


def summarise(name: str, rows: list[dict], wall: float) -> dict:
    """One table row: eval accuracy and length (first -> last eval), training length over the last 10 steps,
    reflection ratio (mean of the first vs the last 5 steps), steps, wall."""
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    train = [r for r in rows if r.get("completions/mean_length") is not None]
    if not evals or not train:
        raise SystemExit(f"error: run {name} logged no eval or train rows; check its metrics.jsonl")
    last10 = train[-10:]
    reflection = [r.get("reasoning/reflection_ratio", 0.0) for r in train]
    return {
        "variant": name,
        "acc0": evals[0]["eval/accuracy"],
        "acc": evals[-1]["eval/accuracy"],
        "eval_len0": evals[0]["eval/mean_length"],
        "eval_len": evals[-1]["eval/mean_length"],
        "train_len": sum(r["completions/mean_length"] for r in last10) / len(last10),
        "refl0": sum(reflection[:5]) / len(reflection[:5]),
        "refl": sum(reflection[-5:]) / len(reflection[-5:]),
        "skipped": int(sum(r.get("skipped_update", 0.0) for r in train)),
        "steps": max(r["step"] for r in train),
        "wall": wall,
    }


def table(rows: list[dict]) -> str:
    """Markdown table of :func:`summarise` rows."""
    lines = [
        (
            "| variant | settings | eval accuracy (start → end) | eval mean length (start → end) "
            "| train mean length, last 10 steps | reflection ratio (first → last 5 steps) | steps (skipped updates) "
            "| wall time |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in VARIANTS[r["variant"]].items())
        lines.append(
            f"| {r['variant']} | `{settings}` | {r['acc0']:.3f} → **{r['acc']:.3f}** "
            f"| {r['eval_len0']:.1f} → {r['eval_len']:.1f} | {r['train_len']:.1f} | {r['refl0']:.3f} → {r['refl']:.3f} "
            f"| {r['steps']} ({r['skipped']}) | {r['wall']:.0f} s |"
        )
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    """One PNG: eval/mean_length (left) and completions/mean_length (right) against step, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in runs.items():
        ev = [(r["step"], r["eval/mean_length"]) for r in rows if r.get("eval/mean_length") is not None]
        tr = [(r["step"], r["completions/mean_length"]) for r in rows if r.get("completions/mean_length") is not None]
        axes[0].plot(*zip(*ev), marker="o", label=name)
        axes[1].plot(*zip(*tr), label=name, alpha=0.85)
    for ax, title in zip(axes, ["eval/mean_length (greedy, held-out)", "completions/mean_length (training samples)"]):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("tokens")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """Run every variant, then write and print the table and the PNG."""
    args = parse_args(argv)
    names = args.variants.split(",")
    runs, summaries = {}, []
    for name in names:
        run_dir, wall = run_variant(name, args)
        runs[name] = read_metrics(run_dir)
        summaries.append(summarise(name, runs[name], wall))
    results = Path(args.results_dir)
    png = results / "algorithms_length.png"
    plot(runs, png)
    md = table(summaries)
    results.mkdir(parents=True, exist_ok=True)
    (results / "algorithms.md").write_text(md + "\n")
    print(md)
    print(f"\nplot: {png}\ntable: {results / 'algorithms.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
