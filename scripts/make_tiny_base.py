"""Rebuild the bundled tiny base model ``models/tiny-base`` deterministically on CPU.

What it makes: a 643k-parameter ``LlamaForCausalLM`` (hidden 128, 3 layers, 4 heads, tied embeddings) with a
28-token tokenizer (characters, the four tags, and the words `` check`` and `` wait``), *pretrained* (next-token
loss) on synthetic arithmetic from ``grpo.tasks.arithmetic``, written by a writer who drops carries: every line of
partial sums that crosses a ten comes out without its carry (``18+5=13``, ``--drop-carry`` 1.0). A quarter of the
documents (``--drills``) are checking drills: a question and its chain of partial sums, each line checked (a right
one ends in `` check``, a wrong one gets `` wait`` and the right sum: ``18+5=13 wait 23 check``), with no ``A:``
and no tags. The rest are a prompt (``Q: 6+2+2+7=?\\nA:``) and a solution in one of three styles:

- direct (``--direct``, 35%): the answer with an empty think block (always right);
- step by step (55%): the chain of partial sums, unchecked, so the dropped carries run on to the answer;
- careful (``--careful``, 5%): the same chain checked line by line as in the drills, so the answer is right;

plus 5% malformed completions so the format reward has signal. So the base knows how to check a sum but rarely
does so when it answers. A model this small cannot add eight digits in one shot, plain steps are right only when
no line carries, and careful steps are right almost always: an accuracy reward alone has a reason to pick the
careful style (R1-Zero's longer responses and "aha moment" in miniature). At the end the script reports each
style's share and accuracy in greedy and sampled (T = 1) completions of the task's eval problems
(``pretrain_info.json``, key ``styles``).

``--tools`` builds the second bundled base, ``models/tiny-tools-base`` (the tools demo, ``configs/tools-demo.yaml``):
the same model with 32 tokens (also the backtick, and the fence, ``calculator`` and ``output`` as single tokens),
pretrained on the same writer without the careful style. Answers are direct (35%), steps (55%), malformed (5%) or,
rarely (``--calls``, 5%), the tool style: the sum handed to the calculator in a fenced block, the tool's true output
block as the rollout writes it, and the output copied into the answer (:func:`grpo.tasks.arithmetic.solution_tool`).
40% of the documents are calling drills (the tool solution after a question with no ``A:``). The report then
runs the calls with ``grpo.tools`` (as the rollout does) and adds ``tool`` (completions with a call) and ``no_tool``
to each mode: the base calls rarely and is right when it does, so an accuracy reward alone has a reason to call.

Usage: ``python scripts/make_tiny_base.py [--out models/tiny-base] [--steps 1000]`` (about 5-7 minutes on
one idle CPU core, plus half a minute for the report), ``python scripts/make_tiny_base.py --tools --out
models/tiny-tools-base`` (the same, plus a minute for the report). Same seed, same torch version -> same weights;
without ``--tools`` the build is byte for byte what it was before the option existed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    StoppingCriteria,
    StoppingCriteriaList,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grpo.tasks import get_task
from grpo.tasks.arithmetic import (
    CALCULATOR,
    CHECK,
    FENCE,
    OUTPUT,
    WAIT,
    careful_lines,
    make_arithmetic_row,
    solution_careful,
    solution_direct,
    solution_malformed,
    solution_steps,
    solution_tool,
)

if TYPE_CHECKING:
    from grpo.tools import Toolbox

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
CHARS = list("0123456789") + list("+=?QA:") + [" ", "\n"]
WORDS = [CHECK, WAIT]  # the careful style's two verdicts, whole-word tokens (with their leading space)
# --tools: the fenced calculator syntax; appended after the others, so every other token keeps its id
TOOL_CHARS, TOOL_WORDS = ["`"], [FENCE, CALCULATOR, OUTPUT]


def build_tokenizer(tools: bool = False) -> PreTrainedTokenizerFast:
    """Character-level tokenizer; specials, the four tags and the two verdict words are single tokens (28 in all).

    ``tools``: also the backtick, and the fence, ``calculator`` and ``output`` as single tokens (32 in all).
    """
    extra_chars, extra_words = (TOOL_CHARS, TOOL_WORDS) if tools else ([], [])
    vocab = {tok: i for i, tok in enumerate(SPECIAL + TAGS + CHARS + WORDS + extra_chars + extra_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char alone
    tok.decoder = decoders.Fuse()  # join tokens back without spaces
    tok.add_special_tokens(SPECIAL)
    tok.add_tokens(TAGS + WORDS + extra_words)  # matched before pre-tokenization: "<think>", " wait" one token each
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


def document(rng: random.Random, direct: float, careful: float, drop_carry: float, drills: float) -> str:
    """One pretraining document: a checking drill, or prompt + a malformed (5%), careful, direct or steps solution.

    Drills (share ``drills``) are a question and its checked chain (``Q: 6+2+2+7=?\\n6+2=8 check\\n8+2=0 wait
    10 check\\n10+7=17 check``) with no ``A:`` and no tags: they teach the skill of checking each line,
    while answers to prompts use the careful style only ``careful`` of the time.
    """
    row = make_arithmetic_row(rng)
    nums = row["nums"]
    if rng.random() < drills:
        return row["prompt"].removesuffix("A:") + careful_lines(nums, rng, drop_carry=drop_carry)[0]
    u = rng.random()
    if u < 0.05:
        sol = solution_malformed(nums, rng)
    elif u < 0.05 + careful:
        sol = solution_careful(nums, rng, drop_carry=drop_carry)
    elif u < 0.05 + careful + direct:
        sol = solution_direct(nums)
    else:
        sol = solution_steps(nums, rng, drop_carry=drop_carry)
    return row["prompt"] + sol


def tool_document(rng: random.Random, direct: float, calls: float, drop_carry: float, drills: float) -> str:
    """One document of the ``--tools`` corpus: a calling drill, or prompt + a malformed (5%), tool, direct or steps
    solution (no careful style: the calculator is the one way to be right that RL has to find).

    Drills (share ``drills``) are a question and the tool solution with no ``A:`` (``Q: 6+2+2+7=?\\n<think>\\n```
    calculator\\n6+2+2+7\\n```\\n```output\\n17\\n```\\n</think><answer>17</answer>``): they teach the call and the
    copy of its output into the answer, while answers to prompts use the calculator only ``calls`` of the time.
    Drills that stopped at the output block left the copy to the rare tool answers: the base then wrote its own sum
    after the output about half the time, and its sampled tool answers were right 20% of the time. With a quarter of
    the documents drills, the base copied long sums into its calls badly (10 of 16 exactly, greedy); with 40%, 16 of
    16.
    """
    row = make_arithmetic_row(rng)
    nums = row["nums"]
    if rng.random() < drills:
        return row["prompt"].removesuffix("A:") + solution_tool(nums)
    u = rng.random()
    if u < 0.05:
        sol = solution_malformed(nums, rng)
    elif u < 0.05 + calls:
        sol = solution_tool(nums)
    elif u < 0.05 + calls + direct:
        sol = solution_direct(nums)
    else:
        sol = solution_steps(nums, rng, drop_carry=drop_carry)
    return row["prompt"] + sol


def style(completion: str) -> str:
    """Which pretraining style a completion follows: ``tool``, ``direct``, ``steps``, ``careful`` or ``other``.

    ``tool``: the completion holds a calculator call (``--tools`` models only; their answer may follow in any form).
    """
    if f"{FENCE}{CALCULATOR}\n" in completion:
        return "tool"
    if completion.startswith("<think></think><answer>"):
        return "direct"
    if not completion.startswith("<think>") or "</think><answer>" not in completion:
        return "other"
    return "careful" if CHECK in completion or WAIT in completion else "steps"


def _generate(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: list[str], sample: bool,
              seed: int, max_new_tokens: int, stop: StopAtCall | None = None) -> list[str]:
    """Completions of ``prompts`` (greedy, or sampled at temperature 1 with a fixed seed).

    ``stop``: rows stop early at a complete tool call (its ``start`` is set to the padded prompt length here).
    """
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    extra = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
    if stop is not None:
        stop.start = enc["input_ids"].shape[1]
        extra["stopping_criteria"] = StoppingCriteriaList([stop])
    ids = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **extra)
    return tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


class StopAtCall(StoppingCriteria):
    """Per row: done when the text generated since ``start`` (the padded prompt length) ends with a complete tool
    call (``toolbox.call_end``, as the rollout decides it)."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, start: int, toolbox: Toolbox):
        self.tokenizer, self.start, self.toolbox = tokenizer, start, toolbox
        self.fence = tokenizer.convert_tokens_to_ids(FENCE)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        """``input_ids`` (N, prompt + new) -> (N,) bool; only rows whose newest token is the fence are decoded."""
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in (input_ids[:, -1] == self.fence).nonzero().flatten().tolist():
            done[i] = self.toolbox.call_end(self.tokenizer.decode(input_ids[i, self.start:], skip_special_tokens=True))
        return done


def generate_with_tools(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: list[str],
                        sample: bool, seed: int, max_new_tokens: int, max_calls: int = 2) -> list[str]:
    """Completions with their calculator calls run, as the rollout runs them (grpo.tools' calculator and fenced
    syntax): generation stops at a call, the tool's output block is appended, and the row resumes (at most
    ``max_calls`` calls, ``max_new_tokens`` in all)."""
    from grpo.tools import build_toolbox  # only --tools builds need the tools package

    toolbox = build_toolbox([CALCULATOR], syntax="fenced", max_tool_calls=max_calls)
    texts = [""] * len(prompts)
    active = list(range(len(prompts)))
    for turn in range(max_calls + 1):
        budget = max_new_tokens - max(len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]) for i in active)
        if budget <= 0:
            break
        stop = StopAtCall(tokenizer, 0, toolbox) if turn < max_calls else None
        outs = _generate(model, tokenizer, [prompts[i] + texts[i] for i in active], sample, seed + turn, budget, stop)
        calls = [(i, toolbox.parse(out)) for i, out in zip(active, outs)]
        for i, out in zip(active, outs):
            texts[i] += out
        called = [(i, call) for i, call in calls if call is not None and stop is not None]
        for (i, _), result in zip(called, toolbox.run_many([call for _, call in called])):
            texts[i] += toolbox.render(result)
        active = [i for i, _ in called]
        if not active:
            break
    toolbox.close()
    return texts


@torch.no_grad()
def report(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, n: int = 256, samples: int = 2,
           max_new_tokens: int = 128, seed: int = 0, tools: bool = False) -> dict:
    """What the base model does on the arithmetic task's first ``n`` eval problems (the ones RL is scored on).

    Returns ``{"greedy": ..., "sampled": ...}``, each ``{style: {"share", "accuracy"}}`` plus ``"all"``;
    sampled = ``samples`` completions per problem at temperature 1 (as in RL rollouts). ``tools``: calculator
    calls are run (:func:`generate_with_tools`), and each mode also gets ``"no_tool"`` (the completions without a
    call: their share and accuracy).
    """
    rows = get_task("arithmetic", num_eval=n).eval_rows()
    generate = generate_with_tools if tools else _generate
    out: dict = {}
    for mode, k in (("greedy", 1), ("sampled", samples)):
        stats: dict[str, list[int]] = {}
        prompts = [r["prompt"] for r in rows for _ in range(k)]
        answers = [r["answer"] for r in rows for _ in range(k)]
        for text, answer in zip(generate(model, tokenizer, prompts, mode == "sampled", seed, max_new_tokens),
                                answers):
            stats.setdefault(style(text), []).append(int(f"<answer>{answer}</answer>" in text))
        total = len(prompts)
        out[mode] = {s: {"share": round(len(v) / total, 3), "accuracy": round(sum(v) / len(v), 3)}
                     for s, v in sorted(stats.items())}
        out[mode]["all"] = {"share": 1.0, "accuracy": round(sum(sum(v) for v in stats.values()) / total, 3)}
        if tools:
            rest = [x for s, v in stats.items() if s != "tool" for x in v]
            out[mode]["no_tool"] = {"share": round(len(rest) / total, 3),
                                    "accuracy": round(sum(rest) / max(1, len(rest)), 3)}
    return out


def batches(tokenizer: PreTrainedTokenizerFast, rng: random.Random, batch: int, seq: int, mix: dict,
            write: Callable[..., str] = document):
    """Endless (batch, seq) LongTensors of packed documents, each ``<s> ... </s>`` (``write(rng, **mix)`` each)."""
    buf: list[int] = []
    while True:
        while len(buf) < batch * seq:
            buf += tokenizer(write(rng, **mix))["input_ids"] + [tokenizer.eos_token_id]
        x = torch.tensor(buf[: batch * seq]).view(batch, seq)
        buf = buf[batch * seq :]
        yield x


# --tools changes these defaults: no careful style, and the drills are calling drills
TOOL_DEFAULTS = {"careful": 0.0, "drills": 0.4, "calls": 0.05}


def parse_args() -> tuple[argparse.Namespace, dict]:
    """The command line, and the corpus mix (keyword arguments of :func:`document` or :func:`tool_document`)."""
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="default: models/tiny-base (models/tiny-tools-base with --tools)")
    ap.add_argument("--tools", action="store_true", help="the calculator-tool corpus and tokenizer (tiny-tools-base)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--direct", type=float, default=0.35, help="share of direct answers (empty think block)")
    ap.add_argument("--careful", type=float, default=None,
                    help="share of careful (checked) step-by-step answers (default 0.05; 0 with --tools)")
    ap.add_argument("--calls", type=float, default=None, help="--tools: share of answers that call the calculator "
                    f"(default {TOOL_DEFAULTS['calls']})")
    ap.add_argument("--drop-carry", type=float, default=1.0, help="chance that a line crossing a ten drops its carry")
    ap.add_argument("--drills", type=float, default=None, help="share of documents that are checking drills "
                    f"(default 0.25), or calling drills with --tools (default {TOOL_DEFAULTS['drills']})")
    ap.add_argument("--report", type=int, default=256, help="eval problems for the style report (0: skip it)")
    args = ap.parse_args()
    if args.out is None:
        args.out = str(root / "models" / ("tiny-tools-base" if args.tools else "tiny-base"))
    if args.tools:
        for key, value in TOOL_DEFAULTS.items():
            setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
        if not (0 <= args.calls and 0 <= args.direct and 0.05 + args.calls + args.direct <= 1):
            ap.error("--direct and --calls must be >= 0 and leave room for 5% malformed: direct + calls <= 0.95")
        return args, {"direct": args.direct, "calls": args.calls, "drop_carry": args.drop_carry, "drills": args.drills}
    if args.calls is not None:
        ap.error("--calls needs --tools")
    args.careful = 0.05 if args.careful is None else args.careful
    args.drills = 0.25 if args.drills is None else args.drills
    if not (0 <= args.careful and 0 <= args.direct and 0.05 + args.careful + args.direct <= 1):
        ap.error("--direct and --careful must be >= 0 and leave room for 5% malformed: direct + careful <= 0.95")
    return args, {"direct": args.direct, "careful": args.careful, "drop_carry": args.drop_carry, "drills": args.drills}


def main() -> None:
    args, mix = parse_args()
    torch.set_num_threads(args.threads)  # one thread: faster for a model this small, and deterministic
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(args.seed)
    tokenizer = build_tokenizer(args.tools)
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
    for step, x in zip(range(args.steps), batches(tokenizer, rng, args.batch, args.seq, mix,
                                                       tool_document if args.tools else document)):
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
    seconds = round(time.time() - t0, 1)
    model.eval()
    styles = report(model, tokenizer, args.report, tools=args.tools) if args.report else None
    meta = {"steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": args.lr, "seed": args.seed,
            **({"tools": ["calculator"]} if args.tools else {}), **mix,
            "params": sum(p.numel() for p in model.parameters()), "final_loss": loss.item(),
            "torch": torch.__version__, "seconds": seconds, "styles": styles}
    (out / "pretrain_info.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
