"""Held-out evaluation: greedy pass@1, format rate and mean completion length."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel

import rewards as reward_registry
from grpo.rollout import HFGenerateBackend


@torch.no_grad()
def evaluate(model: PreTrainedModel, backend: HFGenerateBackend, rows: list[dict], accelerator: Accelerator,
             batch_size: int, max_new_tokens: int) -> dict[str, float]:
    """Greedy pass@1 on ``rows``, sharded over ranks and summed back.

    Returns:
        ``eval/accuracy`` (share right by the ``accuracy`` reward), ``eval/format`` (share in strict R1
        format) and ``eval/mean_length`` (completion tokens, EOS included).
    """
    acc = accelerator
    shard = rows[acc.process_index :: acc.num_processes]
    accuracy, fmt = reward_registry.get("accuracy"), reward_registry.get("format")
    correct = formatted = length = 0.0
    for i in range(0, len(shard), batch_size):
        chunk = shard[i : i + batch_size]
        batch = backend.generate(model, [r["prompt"] for r in chunk], 1, greedy=True, max_new_tokens=max_new_tokens)
        correct += sum(v or 0.0 for v in accuracy(completions=batch.completions, answer=[r["answer"] for r in chunk]))
        formatted += sum(v or 0.0 for v in fmt(completions=batch.completions))
        length += batch.lengths.sum().item()
    totals = acc.reduce(torch.tensor([correct, formatted, length, float(len(shard))], device=acc.device), reduction="sum")
    c, f, n_tokens, n = totals.tolist()
    n = max(n, 1.0)
    return {"eval/accuracy": c / n, "eval/format": f / n, "eval/mean_length": n_tokens / n}
