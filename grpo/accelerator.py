"""The accelerate side of a run: the ``Accelerator`` (precision, accumulation, trackers, FSDP on CPU), the end of
the process group, gathered FSDP weights for generation, and the optimizer with its guarded step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from grpo.config import GRPOConfig


def make_accelerator(cfg: GRPOConfig, micro_steps: int, trackers: list[str], precision: Any = None) -> Any:
    """The run's ``Accelerator``: accumulation over ``micro_steps`` micro-batches, trackers, CPU threads, and the
    compute precision of ``precision`` (a ``grpo.precision.PrecisionPlan``; its line is printed once)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps its settings (mixed precision, accumulation) in a process-wide singleton; an earlier
    # Accelerator in this process (another trainer, a TRL run) must not leak e.g. bf16 autocast into ours.
    # The distributed process group (PartialState) is kept.
    AcceleratorState._reset_state()
    # accelerate wants mpirun for multi-process CPU unless told cpu=True; with cpu=True,
    # `accelerate launch --multi_gpu --num_processes 2` (or torchrun) runs 2 gloo ranks on a CPU machine.
    acc = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=micro_steps,
                      log_with=trackers or None, project_dir=cfg.output_dir,
                      mixed_precision=None if precision is None else precision.mixed_precision)
    if precision is not None:
        if precision.tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        if precision.message:
            acc.print(precision.message)
    if cfg.cpu_threads and acc.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    _fsdp_on_cpu(acc)
    return acc


def close_distributed() -> None:
    """End the run's process group after every rank has finished (a barrier, then ``destroy_process_group``).

    Call once, at the end of a run that succeeded on every rank. Without it a rank that exits first leaves gloo's
    worker threads to be torn down during interpreter finalisation, which can abort the process (SIGABRT,
    "terminate called without an active exception"; pytorch/pytorch#190489) and fail ``accelerate launch`` after the
    run's files were written. Not called after an error: a rank still inside a collective would hang the others.
    No-op in a single process.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a peer that already failed reports itself; this rank's files are written
            return
        dist.destroy_process_group()


def _fsdp_on_cpu(acc: Any) -> None:
    """Make ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` shard on CPU ranks too (gloo).

    accelerate maps any multi-process CPU run to MULTI_CPU (plain DDP), silently ignoring the FSDP config; FSDP2
    itself runs on CPU. So when the launcher asked for FSDP, switch the (process-wide) state to it before
    ``prepare``: both the accelerator's and the partial state's copy, which accelerate re-syncs on every access.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or acc.distributed_type != DistributedType.MULTI_CPU:
        return
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()


@contextlib.contextmanager
def full_weights(model: torch.nn.Module, accelerator: Any) -> Iterator[torch.nn.Module]:
    """The unwrapped model, with FSDP2-sharded weights gathered once for the block (generation, eval).

    A sharded forward all-gathers each layer: a collective every rank must join. Rollouts run a different number
    of decode steps on each rank (each samples its own prompts, finished rows drop out), so per-forward gathers
    would deadlock. Gathering once before (and resharding after) keeps generation local, as ZeRO-3's
    ``GatheredParameters`` does in TRL. Costs one full copy of the weights per rank while generating.
    """
    from torch.distributed.fsdp import FSDPModule

    inner = accelerator.unwrap_model(model)
    mods = [m for m in inner.modules() if isinstance(m, FSDPModule)]
    saved = []
    for m in mods:  # same modules in the same order on every rank: the all-gathers match
        state = m._get_fsdp_state()
        saved.append((state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in state._fsdp_param_groups]))
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield inner
    finally:
        for m, (auto, infos) in zip(mods, saved):
            state = m._get_fsdp_state()
            state._auto_reshard_after_forward = auto
            for g, info in zip(state._fsdp_param_groups, infos):
                g.post_forward_mesh_info = info
            m.reshard()


def optimizer_step(accelerator: Any, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                   max_grad_norm: float) -> tuple[float, bool]:
    """Clip, then step, unless the gradient is not finite: then drop it (Adam state untouched). -> (norm, stepped).

    ``max_grad_norm`` 0 turns clipping off; the norm is still computed (clipping with an infinite bound returns it),
    which is what the finiteness check needs. It is computed after DDP's all-reduce, so every rank takes the same
    branch.
    """
    import math

    norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf))
    ok = math.isfinite(norm)
    if ok:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, ok


def build_optimizer(cfg: GRPOConfig, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters and the ``lr_scheduler_type`` schedule over every optimizer step."""
    from transformers import get_scheduler

    params = list(model.parameters())  # all of them, frozen too: the optimizer state's indices stay as they were
    # fused=True: one kernel over all tensors (what transformers' Trainer, hence TRL, uses by default). torch's
    # CPU default is a loop of ~10 ops per tensor: 0.41 s vs 0.09 s a step for SmolLM2-135M on 2 cores. torch
    # refuses fused for other devices and for integer (quantised, frozen) weights: those keep the default.
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), fused=fused or None)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps * cfg.num_iterations)
    return optimizer, scheduler
