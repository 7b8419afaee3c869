"""Cross-rank helpers: the few values every rank must agree on, computed with one collective each.

Each process samples its own prompts and keeps a prompt's G rows together, so most of a step needs no
communication. What crosses ranks: metrics (:func:`grpo.metrics.reduce_over_ranks`), completion records, the
DAPO token normaliser, the "any signal?" and "stop?" decisions, dynamic sampling's "another round?", and the
batch std for ``scale_rewards: batch``. All ranks must call these functions together.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def any_rank(accelerator: Any, flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any rank (one all-reduce; all ranks must call it)."""
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


def sum_over_ranks(accelerator: Any, value: Tensor) -> float:
    """The sum of a scalar tensor over ranks (one all-reduce), as a float on every rank."""
    return accelerator.reduce(value.to(accelerator.device), reduction="sum").item()


def weights_sharded(accelerator: Any) -> bool:
    """True when the model's weights are sharded over ranks (DeepSpeed ZeRO, FSDP): a layer's weight is then not
    whole on any rank, so it cannot be used directly (fused lm_head, a decode copy, a plain state dict)."""
    return accelerator.distributed_type.name in ("DEEPSPEED", "FSDP")


def gather_records(accelerator: Any, records: list[dict], groups_per_rank: int) -> list[dict]:
    """Every rank's completion records in rank order, ``group`` renumbered to index the global batch (all ranks
    call it; only the main process needs the result)."""
    if accelerator.num_processes == 1:
        return records
    from accelerate.utils import gather_object

    per_rank = gather_object([records])  # one list of records per rank, in rank order
    return [dict(rec, group=rec["group"] + rank * groups_per_rank) for rank, recs in enumerate(per_rank) for rec in recs]
