"""CPU decoding from a copy of the linear weights prepacked for oneDNN.

Why: a decode step multiplies a handful of rows (N sequences, one token each) by every weight matrix. For such
skinny products, MKL's ``F.linear`` on a CPU first re-packs each weight into its kernel's layout on every call and
barely uses a second thread; oneDNN with the weight packed once (``torch.ops.mkldnn._reorder_linear_weight``, the
kernel torch.compile's CPU backend emits) runs the same product about 2x faster, the 49k-column lm_head of
SmolLM2-135M 4x faster (16 rows, 2 threads: 46 ms vs 104 ms per decode step for all 211 matmuls).

The copy is built once and re-packed from the policy's weights after each optimizer step (``refresh``), so every
rollout samples from the current policy, in float32 like the policy itself: the products differ from
``F.linear``'s only in float rounding (summation order), as two BLAS libraries do.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

# The packing's batch-size hint: decode rows per step are in the tens; any batch size stays correct.
_ROWS_HINT = 16
# Below this many weight entries a matmul is dispatch-bound and packing does not pay (the bundled tiny model).
MIN_PACKED_ENTRIES = 2**18


def prepacking_available(model: nn.Module) -> bool:
    """True where a packed decode copy can be made: float32 weights on a CPU, oneDNN built in, no peft wrapper,
    and at least one linear layer large enough to gain (:data:`MIN_PACKED_ENTRIES` weight entries)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    if hasattr(model, "get_base_model"):  # LoRA: adapters change every step; decode with the model itself
        return False
    params = list(model.parameters())
    if not params or params[0].device.type != "cpu" or any(p.dtype != torch.float32 for p in params):
        return False
    return any(_packable(m) for m in model.modules())


def _packable(module: nn.Module) -> bool:
    return type(module) is nn.Linear and module.weight.numel() >= MIN_PACKED_ENTRIES


class PackedLinear(nn.Module):
    """``nn.Linear`` for inference with its weight in oneDNN's packed layout. (..., in) -> (..., out) float32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.pack(linear)

    @torch.no_grad()
    def pack(self, linear: nn.Linear) -> None:
        """(Re)pack from ``linear``'s current weight (out, in) and bias (out,)."""
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), _ROWS_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out)."""
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def packed_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` whose large ``nn.Linear`` layers are :class:`PackedLinear` (tied output
    embeddings included: the copy's input embedding stays a plain tensor)."""
    twin = copy.deepcopy(model).requires_grad_(False).eval()
    for name, module in list(twin.named_modules()):
        if _packable(module):
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, PackedLinear(module))
    return twin


@torch.no_grad()
def refresh(twin: nn.Module, model: nn.Module) -> None:
    """Bring a decode copy ``twin`` of ``model`` (:func:`packed_copy`, or a copy in another dtype) up to
    ``model``'s current weights: re-pack its packed layers, copy every other parameter and buffer (each keeps the
    copy's dtype)."""
    source = dict(model.named_modules())
    for name, module in twin.named_modules():
        if isinstance(module, PackedLinear):
            module.pack(source[name])
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, p in twin.named_parameters():
        p.copy_(params[name])
    buffers = dict(model.named_buffers())
    for name, b in twin.named_buffers():
        if name in buffers:
            b.copy_(buffers[name])
