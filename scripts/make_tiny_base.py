"""Rebuild the bundled tiny base model ``models/tiny-base`` deterministically on CPU.

What it makes: a 643k-parameter ``LlamaForCausalLM`` (hidden 128, 3 layers, 4 heads, tied embeddings)
with a 26-token character-level tokenizer, *pretrained* (next-token loss) on synthetic arithmetic
problems from ``grpo.tasks.arithmetic``. Solutions come in two styles, half each: a direct answer with an empty think
block, and a step-by-step chain of partial sums; 5% are malformed so the format reward has signal.
A model this small cannot add eight digits in one shot but can add two at a time, so its step-by-step
answers are right far more often than its direct ones: GRPO has something real to discover (R1-Zero's
"longer reasoning pays" in miniature).

Usage: ``python scripts/make_tiny_base.py [--out models/tiny-base] [--steps 1000]`` (about 5-6 minutes on
one CPU core). Same seed, same torch version -> same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grpo.tasks.arithmetic import make_arithmetic_row, solution_direct, solution_malformed, solution_steps  # noqa: E402

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
CHARS = list("0123456789") + list("+=?QA:") + [" ", "\n"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer; the four tags and specials are single tokens (26 in all)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + TAGS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char alone
    tok.decoder = decoders.Fuse()  # join tokens back without spaces
    tok.add_special_tokens(SPECIAL)
    tok.add_tokens(TAGS)  # matched before pre-tokenization, so "<think>" is one token
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",  # decoder-only generation pads prompts on the left
        model_max_length=256,
    )


def document(rng: random.Random) -> str:
    """One pretraining document: prompt + a direct, step-by-step or malformed solution."""
    row = make_arithmetic_row(rng)
    nums = row["nums"]
    u = rng.random()
    if u < 0.05:
        sol = solution_malformed(nums, rng)
    elif u < 0.525:
        sol = solution_direct(nums)
    else:
        sol = solution_steps(nums)
    return row["prompt"] + sol


def batches(tokenizer: PreTrainedTokenizerFast, rng: random.Random, batch: int, seq: int):
    """Endless (batch, seq) LongTensors of packed documents, each ``<s> ... </s>``."""
    buf: list[int] = []
    while True:
        while len(buf) < batch * seq:
            buf += tokenizer(document(rng))["input_ids"] + [tokenizer.eos_token_id]
        x = torch.tensor(buf[: batch * seq]).view(batch, seq)
        buf = buf[batch * seq :]
        yield x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "models" / "tiny-base"))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)  # one thread: faster for a model this small, and deterministic
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(args.seed)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = 50

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return args.lr * (step + 1) / warmup
        p = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    model.train()
    t0 = time.time()
    for step, x in zip(range(args.steps), batches(tokenizer, rng, args.batch, args.seq)):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:6.1f}s", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = True
    model.generation_config.temperature = 1.0
    model.generation_config.top_k = 0
    model.generation_config.top_p = 1.0
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta = {"steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": args.lr, "seed": args.seed,
            "params": sum(p.numel() for p in model.parameters()), "final_loss": loss.item(),
            "torch": torch.__version__, "seconds": round(time.time() - t0, 1)}
    (out / "pretrain_info.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
