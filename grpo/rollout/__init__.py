"""Rollout backends: prompts in, a typed batch of sampled completions out.

Backends are registered by name (``ROLLOUT_BACKENDS``) with the options they take; the trainer only sees
:class:`grpo.batch.RolloutBatch`. ``grpo.rollout.base`` holds the shared sampling math, the public
:class:`Backend` base class and the registry; ``compact``, ``hf`` and
``vllm_engine`` hold one backend each (importing this package registers all three). Every backend samples the
distribution the loss scores and returns the sampler's log-probs (docs/rollout.md).
Notation: N = B x G sequences (a prompt's G completions contiguous), P = prompt tokens (left-padded),
T = completion tokens (right-padded).
"""

from grpo.rollout.base import (
    COMMON_OPTIONS,
    ROLLOUT_BACKENDS,
    Backend,
    backend_for_run,
    completion_mask_from_ids,
    draw_from_weights,
    make_backend,
    register_backend,
    sample_next,
    toolbox_for_run,
)
from grpo.rollout.compact import CompactSampler, finished_check_interval
from grpo.rollout.hf import (
    CACHE_LEN_STEP,
    HFGenerateBackend,
    batch_bucket,
    check_hf_generation_kwargs,
    neutral_generation_config,
    pad_rows,
    recompile_limit,
)
from grpo.rollout.turns import SYNTAX_STOPS, ToolTurns, could_end_table, tool_rounds
from grpo.rollout.vllm_engine import (
    VLLM_GENERATION_KWARGS,
    VLLM_NATIVE_KWARGS,
    VLLMBackend,
    lora_merged_weight,
    vllm_launch_env,
    vllm_outputs_to_tensors,
    vllm_sampling_kwargs,
    vllm_weights,
)

__all__ = [
    "CACHE_LEN_STEP",
    "COMMON_OPTIONS",
    "ROLLOUT_BACKENDS",
    "SYNTAX_STOPS",
    "VLLM_GENERATION_KWARGS",
    "VLLM_NATIVE_KWARGS",
    "Backend",
    "CompactSampler",
    "HFGenerateBackend",
    "ToolTurns",
    "VLLMBackend",
    "backend_for_run",
    "batch_bucket",
    "check_hf_generation_kwargs",
    "completion_mask_from_ids",
    "could_end_table",
    "draw_from_weights",
    "finished_check_interval",
    "lora_merged_weight",
    "make_backend",
    "neutral_generation_config",
    "pad_rows",
    "recompile_limit",
    "register_backend",
    "sample_next",
    "tool_rounds",
    "toolbox_for_run",
    "vllm_launch_env",
    "vllm_outputs_to_tensors",
    "vllm_sampling_kwargs",
    "vllm_weights",
]
