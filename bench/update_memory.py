"""Peak memory of one update micro-batch on SmolLM2-135M (CPU): grpo-zero with and without the fused lm_head, TRL.

Each measurement runs in its own process; the number is the peak resident memory above the level just before the
call, sampled every 0.5 ms from /proc/self/statm by a thread (tracemalloc does not see torch's allocations). Run
with MALLOC_MMAP_THRESHOLD_=65536 so large buffers are returned to the system when freed and RSS follows live memory.
The first call is measured, so every "update" number includes the fp32 parameter gradients (513 MiB).

    python bench/update_memory.py FOLDER ours CHUNK BUCKETS   # grpo.scoring.completion_logprobs, as the trainer calls it
    python bench/update_memory.py FOLDER trl                  # TRL's _get_per_token_logps_and_entropies
    python bench/update_memory.py FOLDER head full|fused N T  # the lm_head + log-softmax alone

FOLDER is a plain HF folder of the model (e.g. the one ``bench/step_throughput.py --preset cpu-smol`` writes, or
``train.py ... --gguf_file`` 's final/). Update shape: 16 rows (4 prompts x 4), 64 completion tokens, fp32.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_extra_mib(fn) -> float:
    """Run ``fn`` and return its peak RSS above the RSS before it, in MiB."""
    state = {"peak": rss(), "run": True}
    base = state["peak"]

    def poll() -> None:
        while state["run"]:
            state["peak"] = max(state["peak"], rss())
            time.sleep(0.0005)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        fn()
    finally:
        state["run"] = False
        thread.join()
    return (max(state["peak"], rss()) - base) / 2**20


def main() -> None:
    torch.set_num_threads(2)
    folder, who = sys.argv[1], sys.argv[2]
    if who == "head":
        from safetensors.torch import load_file

        from grpo import logprobs as core

        mode, n, t = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        w = load_file(os.path.join(folder, "model.safetensors"))["model.embed_tokens.weight"].requires_grad_(True)
        torch.manual_seed(0)
        h, tgt = torch.randn(n, t, w.size(1), requires_grad=True), torch.randint(w.size(0), (n, t))

        def run() -> None:
            if mode == "full":
                lp = core.selective_log_softmax(torch.nn.functional.linear(h, w), tgt)
            else:
                lp = core.fused_linear_logprobs(h, w, tgt, 1.0, 512)[0]
            lp.sum().backward()

        print(f"head {mode} {n} x {t}: peak extra RSS {peak_extra_mib(run):.0f} MiB")
        return

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.step_throughput import rows

    tok = AutoTokenizer.from_pretrained(folder)
    prompts = [r["prompt"] for r in rows(4, None)]
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    G, T = 4, 64
    pids, pmask = enc.input_ids.repeat_interleave(G, 0), enc.attention_mask.repeat_interleave(G, 0)
    torch.manual_seed(0)
    cids = torch.randint(100, 40000, (16, T))
    cmask = torch.ones_like(cids)
    if who == "ours":
        from grpo import scoring
        from grpo.batch import RolloutBatch

        chunk, buckets = int(sys.argv[3]), int(sys.argv[4])
        model = AutoModelForCausalLM.from_pretrained(folder).train()
        batch = RolloutBatch(pids, pmask, cids, cmask, torch.zeros(len(cids), dtype=torch.bool), [""] * len(cids),
                             [""] * len(cids))
        micro = [batch.select(idx) for idx in scoring.micro_batches(pmask, cmask, G, buckets)]
        options = scoring.ScoringOptions(lm_head_chunk_size=chunk)

        def run() -> None:
            for rows in micro:
                lp, _ = scoring.completion_logprobs(model, rows, options, G, with_entropy=True)
                lp.sum().backward()

        label = f"grpo-zero lm_head_chunk_size {chunk}, update_buckets {buckets}"
    else:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        model = AutoModelForCausalLM.from_pretrained(folder)
        args = GRPOConfig(output_dir=str(Path("/tmp") / "update-memory-trl"), use_cpu=True, bf16=False,
                          per_device_train_batch_size=16, num_generations=4, max_completion_length=T, report_to=[],
                          gradient_checkpointing=False)
        trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                              args=args, train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                              processing_class=tok)
        ids, att = torch.cat([pids, cids], 1), torch.cat([pmask, cmask], 1)

        def run() -> None:
            lp = trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, T, compute_entropy=True)[0]
            lp.sum().backward()

        label = "TRL " + __import__("trl").__version__
    print(f"{label}: peak extra RSS {peak_extra_mib(run):.0f} MiB")


if __name__ == "__main__":
    main()
