"""Loading the policy (and, when ``beta > 0``, the reference model) and its tokenizer; saving the result.

Options (all in :class:`GRPOConfig`): ``gguf_file`` (a llama.cpp GGUF file in ``model_name_or_path``, loaded
through transformers' own GGUF support and de-quantised to a plain float model), ``dtype``,
``attn_implementation``, ``gradient_checkpointing``, ``trust_remote_code`` (off by default) and LoRA through peft
(``use_peft``, ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``).

Precision. ``dtype: auto`` keeps weights that train in float32 and lets accelerate compute in bf16
(``--mixed_precision bf16``): an AdamW step at lr 1e-6 is about 1e-6 in absolute size, far below bf16's
resolution near a typical weight (~1e-4), so pure-bf16 weights would silently ignore most updates. A frozen
LoRA base has no such problem and loads in bf16 on GPU (half the memory); peft keeps the adapter in float32.

With LoRA and ``beta > 0`` there is no second copy of the model: the reference is the same network with the
adapter switched off (:func:`reference_context`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from grpo.config import DTYPES, ConfigError, GRPOConfig
from grpo.dist import weights_sharded
from grpo.paths import resolve_model_path

log = logging.getLogger(__name__)



class ModelLoadError(ConfigError):
    """A model or tokenizer that cannot be loaded; one line saying what was tried and how to run offline."""


def resolve_dtype(dtype: str, use_peft: bool, cuda: bool | None = None) -> torch.dtype:
    """The torch dtype for the weights: ``auto`` is bf16 for a frozen LoRA base on GPU, else float32."""
    if dtype == "auto":
        cuda = torch.cuda.is_available() if cuda is None else cuda
        return torch.bfloat16 if (cuda and use_peft) else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return getattr(torch, DTYPES[dtype])


def _load_error(what: str, name: str, e: Exception) -> ModelLoadError:
    path = resolve_model_path(name)
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    tried = f"the local folder {path}" if Path(path).exists() else "it is not a local folder; the Hugging Face hub"
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return ModelLoadError(
        f"cannot load {what} {name!r}: {tried}{offline} said: {reason}; to run offline pass a local model folder as "
        "model_name_or_path, or download it once (hf download NAME; older huggingface_hub: huggingface-cli download NAME) and set HF_HUB_OFFLINE=1"
    )


def check_gguf(folder: str, gguf_file: str) -> None:
    """Config-time check of a ``gguf_file`` option: the file is in ``folder`` and the ``gguf`` package is installed.

    Raises:
        ConfigError: one line naming the problem and the fix.
    """
    path = Path(resolve_model_path(folder)) / gguf_file
    if not gguf_file.endswith(".gguf"):
        raise ConfigError(f"gguf_file {gguf_file!r} is not a .gguf file; give the file's name inside model_name_or_path")
    if not path.is_file():
        raise ConfigError(f"gguf_file {path} does not exist; model_name_or_path must be the folder holding the .gguf "
                          "file and gguf_file its name inside it")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError("gguf_file needs the gguf package: pip install gguf") from None


def _gguf_kwargs(gguf_file: str) -> dict[str, Any]:
    return {"gguf_file": gguf_file} if gguf_file else {}


def _drop_quantization_marker(model: PreTrainedModel) -> None:
    """A GGUF file loads de-quantised into ordinary float weights, but transformers still marks the model as
    quantised, so ``save_pretrained`` refuses it and the config would name a quantisation. Drop the marker so
    the model trains, checkpoints and saves as the plain model it is (``final/`` then loads without GGUF)."""
    packed = [n for n, m in model.named_modules() if type(m).__name__.lower().startswith("gguf")]
    if packed:  # kept in GGUF blocks (a matmul kernel was found): not trainable as float weights
        raise ModelLoadError(f"the GGUF model kept {len(packed)} layers packed ({packed[0]}...); training needs it "
                             "de-quantised: uninstall the `kernels` package or convert the file to safetensors first")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_tokenizer(cfg: GRPOConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (EOS when the model has none).

    Raises:
        ModelLoadError: the name is neither a local folder nor reachable on the hub.
    """
    name = cfg.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=cfg.trust_remote_code,
                                                  **_gguf_kwargs(cfg.gguf_file))
    except (OSError, ValueError, ImportError) as e:
        raise _load_error("tokenizer", name, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def quiet_progress(enabled: bool = True) -> Any:
    """transformers' per-file progress bars ("Loading weights", "Writing model shards") off for the block: for a
    local folder they flash by on every load and save and say nothing a user can act on. Downloads keep theirs."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if enabled and was_on:
        hf_logging.disable_progress_bar()
    # transformers' GGUF conversion bar uses tqdm directly (not the switch above); in a log file, rather than a
    # terminal, its carriage-return updates are noise.
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if enabled and gguf_tqdm is not None and not sys.stderr.isatty():
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if enabled and was_on:
            hf_logging.enable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm


def _from_pretrained(cfg: GRPOConfig, dtype: torch.dtype) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    path = resolve_model_path(cfg.model_name_or_path)
    try:
        if cfg.gguf_file:
            import transformers.modeling_gguf_pytorch_utils  # noqa: F401 - loaded now so quiet_progress finds its bar
        with quiet_progress(Path(path).is_dir()):
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs, **_gguf_kwargs(cfg.gguf_file))
    except (OSError, ValueError, ImportError) as e:
        raise _load_error("model", cfg.model_name_or_path, e) from None
    if cfg.gguf_file:
        _drop_quantization_marker(model)
    return model


def load_policy(cfg: GRPOConfig) -> PreTrainedModel:
    """The trainable policy, on CPU (``accelerate.prepare`` moves it): full model, or a peft LoRA model.

    The LoRA adapter is initialised under its own seed (``cfg.seed``), independent of the process rank and of
    anything drawn before, so two runs with one seed start from the same adapter (unlike TRL #6688).
    """
    dtype = resolve_dtype(cfg.dtype, cfg.use_peft)
    if dtype != torch.float32 and not cfg.use_peft:
        log.warning("dtype %s with full fine-tuning: AdamW steps smaller than the dtype's resolution are lost; prefer "
                    "dtype float32 (or auto) with `accelerate launch --mixed_precision bf16`", dtype)
    model = _from_pretrained(cfg, dtype)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads.
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Training forwards keep no KV cache under checkpointing; saying so up front stops transformers' warning
        # (one per rank) that it turned the cache off. Decoding passes its own use_cache and keeps its cache.
        model.config.use_cache = False
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                          target_modules="all-linear" if targets == ["all-linear"] else list(targets))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            try:
                with warnings.catch_warnings():  # peft reads the deprecated is_gradient_checkpointing: not ours to fix
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                    model = get_peft_model(model, lora)
            except ValueError as e:
                raise ConfigError(f"lora_target_modules {targets}: {str(e).splitlines()[0][:200]}; use [all-linear] or "
                                  "names of the model's linear layers (e.g. q_proj, v_proj)") from None
    return model


def load_reference(cfg: GRPOConfig, device: torch.device) -> PreTrainedModel | None:
    """A frozen copy of the base model for the KL term.

    ``None`` when ``beta == 0`` (no KL), and ``None`` with LoRA: there is no second copy, the reference is the
    policy with its adapter switched off (the trainer wraps the policy's forward in :func:`reference_context`).
    """
    if cfg.beta <= 0 or cfg.use_peft:
        return None
    # A frozen model takes no optimizer steps, so bf16 costs it nothing on GPU.
    dtype = resolve_dtype(cfg.dtype, use_peft=True) if cfg.dtype == "auto" else resolve_dtype(cfg.dtype, False)
    ref = _from_pretrained(cfg, dtype).to(device).eval()
    ref.requires_grad_(False)
    return ref


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Peel DDP / FSDP / compile wrappers (``.module``, ``._orig_mod``) off ``model``."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def is_peft_model(model: torch.nn.Module) -> bool:
    """True when ``model`` (possibly wrapped by accelerate) is a peft model with adapters."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(_unwrap(model), PeftModel)


def reference_context(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Context in which ``model`` computes the reference policy's log-probs.

    For a LoRA model: the adapter is switched off, so the forward pass is the frozen base model's. For a full
    model: a no-op (the trainer then uses the separate reference model). Usage in the trainer::

        with torch.no_grad(), reference_context(self.model):
            ref = scoring.completion_logprobs(model, rows, options)  # see grpo.scoring
    """
    if is_peft_model(model):
        return _unwrap(model).disable_adapter()
    return contextlib.nullcontext()


def save_final(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, out: str | os.PathLike, merge: bool,
               accelerator: Any = None) -> str:
    """Save the trained model and tokenizer to ``out`` (every rank must call it; the main process writes).

    A full model is saved as is. A LoRA model is saved as its adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``: load with ``peft.AutoPeftModelForCausalLM`` or ``python -m grpo.evaluate``)
    or, with ``merge``, as a plain model with the adapter merged into the base weights.

    Args:
        model: the trained model, as prepared by ``accelerator`` (or a plain model without one).
        tokenizer: saved beside the weights.
        out: the folder.
        merge: merge a LoRA adapter into the base before saving.
        accelerator: the run's accelerator; with ZeRO-3 / FSDP the full state dict is gathered through it.

    Returns:
        What was saved: ``"model"``, ``"adapter"`` or ``"merged"``.
    """
    out = str(out)
    main = accelerator is None or accelerator.is_main_process
    if accelerator is not None:
        accelerator.wait_for_everyone()
    inner = _unwrap(model) if accelerator is None else accelerator.unwrap_model(model)
    sharded = accelerator is not None and weights_sharded(accelerator)
    state_dict = accelerator.get_state_dict(model) if sharded else None  # a collective: every rank joins
    kind = "model"
    if is_peft_model(inner):
        kind = "merged" if merge else "adapter"
        if merge and not sharded:
            if main:
                with quiet_progress():
                    inner.merge_and_unload().save_pretrained(out)  # the run is over: merging in place is fine
        elif main:
            with quiet_progress():
                inner.save_pretrained(out, state_dict=state_dict)
            if merge:  # weights were sharded: merge from the saved adapter on the main process, on CPU
                _merge_saved_adapter(out)
    elif main:
        with quiet_progress():
            inner.save_pretrained(out, state_dict=state_dict)
    if main:
        tokenizer.save_pretrained(out)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return kind


def _merge_saved_adapter(folder: str) -> None:
    """Replace the adapter saved in ``folder`` by the merged model (base + adapter), computed on CPU."""
    from peft import AutoPeftModelForCausalLM

    with quiet_progress():  # a local folder: "Loading weights" / "Writing model shards" say nothing useful
        merged = AutoPeftModelForCausalLM.from_pretrained(folder, dtype="auto").merge_and_unload()
        for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
            (Path(folder) / name).unlink(missing_ok=True)
        merged.save_pretrained(folder)


def load_for_eval(name: str, dtype: str = "auto", trust_remote_code: bool = False,
                  attn_implementation: str | None = None,
                  gguf_file: str = "") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved model for evaluation: a full model folder, a LoRA adapter folder, a hub name, or (``gguf_file``)
    a GGUF file inside the folder ``name``.

    Raises:
        ModelLoadError: the name cannot be reached.
    """
    path = resolve_model_path(name)
    torch_dtype = resolve_dtype(dtype, use_peft=True)  # inference only: bf16 on GPU, float32 on CPU
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file:
        check_gguf(name, gguf_file)
        kwargs["gguf_file"] = gguf_file
    try:
        if (Path(path) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            if gguf_file:
                _drop_quantization_marker(model)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **_gguf_kwargs(gguf_file))
    except (OSError, ValueError, ImportError) as e:
        raise _load_error("model", name, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
