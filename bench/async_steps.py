"""Async rollouts measured: grpo-zero async vs grpo-zero sync vs TRL's GRPOTrainer (sync), same model, batch,
lengths and reward, on the same cores.

An async run cannot take turns with TRL inside one process (its worker would sample while TRL steps, an overlap TRL
does not get), so each trainer runs alone in its own process, one after another, in the order TRL, sync, async,
async, sync, TRL (load drift hits every side alike); the medians of both passes are reported.

    python bench/step_throughput.py --async --preset cpu-tiny      # 2 cores: sync on 2 threads (and 1), async 1 + 1
    python bench/step_throughput.py --async --preset cpu-smol --steps 6

Async step time in steady state is max(update, rollout) plus the weight copy; sync is their sum. With 2 cores the
two processes each get one: the async speed-up is bounded by (rollout + update at the sync side's best thread count)
/ max(update on 1 thread, rollout on 1 thread). The printout gives each phase so the bound can be read off.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ours(p: dict, model_path: str, mode: str, threads: int, steps: int, warmup: int, lengths: str) -> dict:
    """grpo-zero's median step (``mode`` sync or async; async: trainer and worker ``threads // 2`` each)."""
    import torch

    from grpo.cli import load_config
    from grpo.trainer import Trainer

    async_ = mode == "async"
    trainer_threads = max(1, threads // 2) if async_ else threads
    gen_kwargs = {"min_new_tokens": p["max_new"]} if lengths == "fixed" else {}
    work = Path(tempfile.mkdtemp(prefix="grpo-async-bench-"))
    cfg = load_config([
        "--model_name_or_path", model_path, "--output_dir", str(work), "--max_steps", str(steps + warmup),
        "--per_device_train_batch_size", str(p["prompts"] * p["generations"]), "--num_generations",
        str(p["generations"]), "--max_completion_length", str(p["max_new"]), "--eval_steps", "0", "--save_steps", "0",
        "--save_final_model", "false", "--dtype", p["dtype"], "--generation_kwargs", json.dumps(gen_kwargs),
        "--rewards", json.dumps({("bench.step_throughput:digit_share" if k == "digit_share" else k): v
                                 for k, v in p["rewards"].items()}),
        "--task_kwargs", "{num_eval: 8}", "--log_completions_steps", "0", "--learning_rate", "1e-5",
        "--loss_type", "dr_grpo", "--cpu_threads", str(trainer_threads), "--async_rollouts", str(async_).lower(),
        "--rollout_threads", str(max(1, threads - trainer_threads))])
    torch.set_num_threads(trainer_threads)
    trainer = Trainer(cfg)
    trainer.logger.start()
    times, phases = [], []
    with trainer.rollout_worker(0):
        for step in range(1, steps + warmup + 1):
            t0 = time.perf_counter()
            m = trainer.step(step)
            times.append(time.perf_counter() - t0)
            phases.append((m["time/rollout_s"] + m["time/reward_s"], m["time/update_s"],
                           m.get("async/trainer_wait_s", 0.0), m["skipped_update"]))
    kept = phases[warmup:]
    return {"median_step_s": statistics.median(times[warmup:]), "rollout_s": statistics.median(r for r, *_ in kept),
            "update_s": statistics.median(u for _, u, *_ in kept),
            "trainer_wait_s": statistics.median(w for *_, w, _ in kept),
            "skipped_updates": int(sum(s for *_, s in kept)), "threads": threads}


def trl(p: dict, model_path: str, threads: int, steps: int, warmup: int, lengths: str) -> dict:
    """TRL's GRPOTrainer alone: median step on ``threads`` threads."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bench.step_throughput import reward_funcs, rows

    torch.set_num_threads(threads)
    fns, weights = reward_funcs(p["rewards"])
    data = rows(p["prompts"] * (steps + warmup + 2), p["prompt_terms"])
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-async-bench-"), use_cpu=True, bf16=False,
                      per_device_train_batch_size=p["prompts"] * p["generations"], max_steps=steps + warmup,
                      reward_weights=weights, logging_steps=1, report_to=[], save_strategy="no", seed=0,
                      generation_kwargs={"min_new_tokens": p["max_new"]} if lengths == "fixed" else None,
                      gradient_checkpointing=False, max_completion_length=p["max_new"],
                      num_generations=p["generations"], temperature=1.0, learning_rate=1e-5, beta=0.0,
                      loss_type="dr_grpo", scale_rewards="group")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    GRPOTrainer(model=model, reward_funcs=fns, args=args, processing_class=AutoTokenizer.from_pretrained(model_path),
                train_dataset=Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in data]),
                callbacks=[Timer()]).train()
    return {"median_step_s": statistics.median(times[warmup:]), "threads": threads}


def one(argv: list[str]) -> None:
    """Child process: measure one side and print its JSON on the last line."""
    side, preset, model_path, threads, steps, warmup, lengths = argv
    from bench.step_throughput import PRESET_DEFAULTS, PRESETS

    # digit_share on every preset: with EOS suppressed the tiny model's answers all fail accuracy alike, and a step
    # without signal skips its update (grpo-zero) - the sides must do equal work.
    p = {**PRESET_DEFAULTS, **PRESETS[preset], "rewards": {"digit_share": 1.0}}
    if side == "trl":
        res = trl(p, model_path, int(threads), int(steps), int(warmup), lengths)
    else:
        res = ours(p, model_path, side, int(threads), int(steps), int(warmup), lengths)
    print(json.dumps(res))


def run_side(side: str, preset: str, model_path: str, threads: int, steps: int, warmup: int, lengths: str) -> dict:
    """One measurement in a fresh process. -> its result."""
    proc = subprocess.run([sys.executable, str(Path(__file__)), "--one", side, preset, model_path, str(threads),
                           str(steps), str(warmup), lengths], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"error: the {side} measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(args: object, p: dict, model_path: str) -> dict:
    """``args.passes`` passes (TRL, sync, sync-1-thread, async, then reversed, ...), the medians, the ratios;
    printed and returned."""
    threads, sides = args.threads or 2, ["trl", "sync", "sync1", "async"]
    got: dict[str, list[dict]] = {s: [] for s in sides}
    order = (sides + sides[::-1]) * (args.passes // 2) + (sides if args.passes % 2 else [])
    for side in order:
        t = 1 if side == "sync1" else threads
        got[side].append(run_side("sync" if side == "sync1" else side, args.preset, model_path, t, args.steps,
                                  args.warmup, args.lengths))
        print(f"  {side:<6} {got[side][-1]['median_step_s']:.3f} s/step", flush=True)
    res = {s: {**got[s][0], "median_step_s": statistics.median(g["median_step_s"] for g in got[s]),
               "passes": [g["median_step_s"] for g in got[s]]} for s in sides}
    best_sync = min(res["sync"]["median_step_s"], res["sync1"]["median_step_s"])
    res["async_vs_best_sync"] = best_sync / res["async"]["median_step_s"]
    res["async_vs_trl"] = res["trl"]["median_step_s"] / res["async"]["median_step_s"]
    res["sync_vs_trl"] = res["trl"]["median_step_s"] / best_sync
    a = res["async"]
    print(f"\npreset {args.preset} ({p['prompts']} x {p['generations']} x {p['max_new']} tokens, {threads} cores)")
    for s in sides:
        r = res[s]
        extra = (f"  rollout {r['rollout_s']:.3f} s, update {r['update_s']:.3f} s" if "rollout_s" in r else "")
        print(f"{s:<6} threads {r['threads']}  median step {r['median_step_s']:.3f} s{extra}")
    print(f"async is {res['async_vs_best_sync']:.2f}x the best sync step and {res['async_vs_trl']:.2f}x TRL's "
          f"(sync alone: {res['sync_vs_trl']:.2f}x TRL); async bound max(update, rollout) = "
          f"{max(a['rollout_s'], a['update_s']):.3f} s, the trainer waited {a['trainer_wait_s']:.3f} s per step")
    return res


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:2] == ["--one"]:
        one(sys.argv[2:])
