"""Advantages of this rank's rewards: group statistics need no communication (a prompt's G rows are on one
rank); ``scale_rewards: batch`` needs every rank's rewards. The math is :func:`grpo.core.compute_advantages`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from grpo import core


def advantages_over_ranks(accelerator: Any, rewards: Tensor, group_size: int, scale: str, estimator: str) -> Tensor:
    """Advantages (N,) for this rank's N rewards. ``scale == "batch"`` uses the std over all ranks' rewards
    (all ranks call it then); group scaling needs no communication (a prompt's G rows are on one rank)."""
    if scale == "batch" and accelerator.num_processes > 1:
        all_rewards = accelerator.gather(rewards.to(accelerator.device)).cpu()
        adv = core.compute_advantages(all_rewards, group_size, scale, estimator)
        n = rewards.numel()
        return adv[accelerator.process_index * n : (accelerator.process_index + 1) * n]
    return core.compute_advantages(rewards, group_size, scale, estimator)
