"""Compute precision on CUDA: what a run computes in, decided once, and said in one line when it is not obvious.

On a GPU, float32 weights with no mixed precision would run every matmul in full float32 with TF32 off: several
times slower than bf16 and nothing in the log says so. :func:`precision_plan` decides instead:

| device | weights | ``--mixed_precision`` (``ACCELERATE_MIXED_PRECISION``) | compute | decoding | says |
|---|---|---|---|---|---|
| CPU | any | any | as asked (CPU runs are unchanged) | training weights | nothing |
| CUDA | float32 | not set (plain ``python train.py``) | bf16 autocast, float32 master weights | bf16 copy | one line |
| CUDA | float32 | ``no`` | float32, TF32 matmuls on | training weights | one line (how to get bf16) |
| CUDA | float32 | ``bf16`` | bf16 autocast | bf16 copy | nothing |
| CUDA | bf16 / fp16 / LoRA on a bf16 base | any | as asked | training weights | nothing |
| CUDA without bf16 | float32 | not set | float32, TF32 on | training weights | one line |

The **bf16 decode copy**: under autocast every decode step would re-cast all float32 weights to bf16 (about 3 GB
of memory traffic per token step for 0.5B parameters). The rollout backend keeps a bf16 copy of the weights
instead, refreshed after each optimizer step (``grpo.rollout.Backend``); a LoRA model is not copied (its base is
already bf16). The copy's probabilities differ from the trainer's by bf16 rounding, so the sampler/trainer
correction (``vllm_importance_sampling_correction``, auto) turns on with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from grpo.dist import weights_sharded


@dataclass(frozen=True)
class PrecisionPlan:
    """What a run computes in.

    Attributes:
        mixed_precision: passed to ``Accelerator(mixed_precision=...)``: ``"bf16"``, ``"fp16"``, ``"no"``, or
            ``None`` (accelerate reads its environment, as before).
        decode_dtype: dtype of the rollout backend's decode copy of the weights; ``None`` = decode with the
            training weights.
        tf32: allow TF32 matmuls (float32 compute on CUDA).
        message: one line for the log, or ``None``.
    """

    mixed_precision: str | None
    decode_dtype: torch.dtype | None
    tf32: bool
    message: str | None


def precision_plan(device_type: str, weight_dtype: torch.dtype, mixed_precision: str | None, bf16_supported: bool,
                   use_peft: bool = False) -> PrecisionPlan:
    """Decide compute precision and decoding weights (see the module docstring's table). Pure: no CUDA needed.

    Args:
        device_type: ``"cuda"`` or ``"cpu"`` (anything but cuda keeps accelerate's own behaviour).
        weight_dtype: the dtype the weights load in (``grpo.model.resolve_dtype``).
        mixed_precision: ``ACCELERATE_MIXED_PRECISION`` as set by ``accelerate launch`` (``None`` when unset).
        bf16_supported: ``torch.cuda.is_bf16_supported()``.
        use_peft: LoRA: the trained adapter is small; no decode copy is made.
    """
    if device_type != "cuda":
        return PrecisionPlan(None, None, False, None)
    mp = (mixed_precision or "").strip().lower() or None
    fp32_weights = weight_dtype == torch.float32
    if not fp32_weights:
        return PrecisionPlan(mp, None, False, None)
    copy = None if use_peft else torch.bfloat16
    if mp is None and bf16_supported:
        return PrecisionPlan("bf16", copy, False, (
            "CUDA with float32 weights and no --mixed_precision: computing in bf16 autocast with float32 master "
            "weights (decoding from a bf16 copy); run `accelerate launch --mixed_precision no train.py` for float32"))
    if mp is None or mp == "no":
        why = "this GPU has no bf16" if not bf16_supported else "--mixed_precision no"
        hint = "" if not bf16_supported else "; `accelerate launch --mixed_precision bf16` is several times faster"
        return PrecisionPlan("no", None, True, f"CUDA with float32 weights ({why}): computing in float32 with TF32 "
                                               f"matmuls{hint}")
    if mp == "bf16":
        return PrecisionPlan("bf16", copy, False, None)
    return PrecisionPlan(mp, None, False, None)  # fp16 / fp8: accelerate's own handling


def plan_for_run(weight_dtype: torch.dtype, use_peft: bool) -> PrecisionPlan:
    """:func:`precision_plan` for this process: its device, environment and GPU."""
    cuda = torch.cuda.is_available()
    return precision_plan("cuda" if cuda else "cpu", weight_dtype, os.environ.get("ACCELERATE_MIXED_PRECISION"),
                          bool(cuda and torch.cuda.is_bf16_supported()), use_peft)


def decode_copy_dtype(plan: PrecisionPlan, accelerator: Any) -> torch.dtype | None:
    """The plan's decode-copy dtype, or ``None`` under ZeRO-3 / FSDP (each rank holds only a shard of the weights)."""
    sharded = weights_sharded(accelerator)
    return None if sharded else plan.decode_dtype
