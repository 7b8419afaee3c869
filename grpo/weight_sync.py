"""Moving the trainer's weights to a sampler and proving they arrived: shared-memory slots and fingerprints.

A sampler with its own copy of the policy (the async rollout worker, a vLLM engine) must hold exactly the weights
the trainer sent, or it samples from a policy nobody trained and the run learns from the wrong data without a
sign. After every sync both sides hash what they hold (:func:`fingerprint`) and :func:`first_mismatch` names the
first tensor that differs, so a broken copy stops the run with that tensor's name instead of going on silently.

Fingerprints are xxh3-64 of the tensor's bytes: all of them for tensors up to :data:`FULL_HASH_ELEMENTS`
elements (every tensor of a small model), else of a fixed strided sample of that many elements plus the shape and
dtype, so checking a 7B model costs milliseconds, not a second. A sampled fingerprint proves the copy went through
and landed in the right tensor; it does not prove every element (documented in docs/rollout.md).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

FULL_HASH_ELEMENTS = 1 << 20  # 4 MB of float32: hashing it costs ~0.3 ms, so small tensors are hashed whole


def synced_tensors(model: torch.nn.Module) -> dict[str, Tensor]:
    """The tensors a sync moves: the trainable parameters by name (all of them in full fine-tuning, the adapter
    under LoRA; frozen weights never change, so they are not sent). -> {name: tensor}."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def tensor_fingerprint(t: Tensor) -> str:
    """xxh3-64 of ``t``'s bytes (a strided sample of :data:`FULL_HASH_ELEMENTS` elements for larger tensors),
    with its shape and dtype. Any shape, any dtype -> 16 hex digits."""
    import xxhash

    flat = t.detach().reshape(-1)
    if flat.numel() > FULL_HASH_ELEMENTS:
        step = flat.numel() // FULL_HASH_ELEMENTS  # fixed stride: both sides sample the same elements
        flat = flat[::step][:FULL_HASH_ELEMENTS]
    # A copy: a numpy view would pin the parameter's storage, which FSDP must free and resize after gathering.
    data = flat.contiguous().cpu().clone().view(torch.uint8).numpy()
    h = xxhash.xxh3_64(data)
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    return h.hexdigest()


def fingerprint(tensors: dict[str, Tensor]) -> dict[str, str]:
    """:func:`tensor_fingerprint` of each named tensor. -> {name: hex}."""
    return {name: tensor_fingerprint(t) for name, t in tensors.items()}


def first_mismatch(expected: dict[str, str], got: dict[str, str]) -> str | None:
    """The first tensor name (in ``expected``'s order) whose fingerprint differs or is missing from ``got``, a
    name only ``got`` has, or None when they agree."""
    for name, value in expected.items():
        if got.get(name) != value:
            return name
    extra = [name for name in got if name not in expected]
    return extra[0] if extra else None


def shared_slots(tensors: dict[str, Tensor], count: int) -> list[dict[str, Tensor]]:
    """``count`` sets of CPU tensors in shared memory shaped like ``tensors`` (filled with zeros): the trainer
    writes version v into slot v % count and the worker process reads it from there, with no copy through a pipe.

    torch shares CPU tensors by file descriptor and unlinks the memory at once, so nothing is left in /dev/shm when
    either process dies, even by kill -9."""
    return [{name: torch.zeros(t.shape, dtype=t.dtype).share_memory_() for name, t in tensors.items()}
            for _ in range(count)]


@torch.no_grad()
def write_slot(slot: dict[str, Tensor], tensors: dict[str, Tensor]) -> tuple[int, float]:
    """Copy ``tensors`` into a shared slot (device -> CPU where needed). -> (bytes written, seconds)."""
    t0, size = time.perf_counter(), 0
    for name, dst in slot.items():
        src = tensors[name].detach()
        dst.copy_(src)
        size += dst.numel() * dst.element_size()
    return size, time.perf_counter() - t0


@torch.no_grad()
def read_slot(slot: dict[str, Tensor], params: dict[str, Tensor]) -> float:
    """Copy a shared slot into the worker's parameters (CPU -> their device). -> seconds."""
    t0 = time.perf_counter()
    for name, dst in params.items():
        dst.copy_(slot[name], non_blocking=False)
    return time.perf_counter() - t0
