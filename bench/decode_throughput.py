"""Rollout decoding speed of each backend: completion tokens per second on one batch shape.

    python bench/decode_throughput.py --preset cpu-tiny
    python bench/decode_throughput.py --preset gpu-0.5b --backends compact hf hf-compile

gpu-0.5b: random-initialised Qwen2.5-0.5B shape in bf16, 128 sequences (16 prompts x 8), ~128-token prompts,
512 new tokens with EOS suppressed, the setting of the peer numbers in ANCHORS.md (plain generate: 1,925
tokens/s; static cache + compile: 15,800 tokens/s on one H200). Each backend gets ``--warmup`` untimed calls
(compilation happens there) and reports the median of ``--repeats`` timed calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.step_throughput import PRESETS, qwen05b_random, rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    ap.add_argument("--backends", nargs="+", default=["compact", "hf"], choices=["compact", "hf", "hf-compile"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results (device, tokens/s per backend) to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = PRESETS[args.preset]
    cuda = torch.cuda.is_available()
    if args.preset.startswith("gpu") and not cuda:
        sys.exit("error: --preset gpu-0.5b needs a CUDA GPU; use --preset cpu-tiny here")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout import make_backend

    path = ROOT / p["model"]
    if p["model"] == "qwen2.5-0.5b-random":
        path = Path(tempfile.mkdtemp()) / "qwen"
        qwen05b_random(path, ROOT / "models" / "tiny-base")
    dtype = torch.bfloat16 if p["dtype"] == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to("cuda" if cuda else "cpu").eval()
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [r["prompt"] for r in rows(p["prompts"], p["prompt_terms"])]
    print(f"preset {args.preset}: {p['prompts']} prompts x {p['generations']} x {p['max_new']} new tokens (EOS suppressed)")
    results = {"preset": args.preset, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
               "sequences": p["prompts"] * p["generations"], "max_new_tokens": p["max_new"], "tokens_per_s": {}}
    for name in args.backends:
        backend = make_backend("hf" if name.startswith("hf") else name, tok, max_completion_length=p["max_new"],
                               generation_kwargs={"min_new_tokens": p["max_new"]}, compile_generation=name == "hf-compile",
                               prompt_bucket=64 if name == "hf-compile" else 0)
        speeds = []
        for i in range(args.warmup + args.repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            batch = backend.generate(model, prompts, p["generations"])
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                speeds.append(batch.lengths.sum().item() / dt)
        results["tokens_per_s"][name] = statistics.median(speeds)
        print(f"  {name:<11} {statistics.median(speeds):>10.0f} completion tokens/s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
