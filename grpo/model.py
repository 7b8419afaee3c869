"""Loading the policy (and, when ``beta > 0``, the reference model) and its tokenizer."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from grpo.config import GRPOConfig, resolve_model_path


def load_tokenizer(cfg: GRPOConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (EOS when the model has none)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model_name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(cfg: GRPOConfig) -> PreTrainedModel:
    """The trainable policy, on CPU (``accelerator.prepare`` moves it)."""
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model_name_or_path))


def load_reference(cfg: GRPOConfig, device: torch.device) -> PreTrainedModel | None:
    """A frozen copy of the base model for the KL term; ``None`` when ``beta == 0`` (nothing loaded)."""
    if cfg.beta <= 0:
        return None
    ref = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model_name_or_path)).to(device).eval()
    ref.requires_grad_(False)
    return ref
