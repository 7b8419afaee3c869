"""What a checkpoint's files must be before resume reads them: sizes, checksums, and no code inside.

Three guarantees, each checked on the files alone (no model, no accelerator):

- **Intact.** ``trainer_state.json`` lists every file of the checkpoint with its size and an xxh3-128 checksum
  (:func:`manifest`); :func:`problems` compares the folder with that list, so a truncated copy, a flipped bit or a
  missing file is found before anything is loaded. xxh3 hashes at several GB/s, so checksumming a checkpoint costs
  a fraction of writing it (BENCHMARKS.md); it detects damage, not tampering (an attacker rewrites the list too).
- **No code.** A torch ``.bin``/``.pt``/``.pkl`` file is a pickle, and unpickling can run any code. Every such file
  is first opened with ``torch.load(weights_only=True, mmap=True)``: torch's restricted unpickler, which builds tensors and
  plain containers and refuses every other global. Only files that pass are handed to the real loaders (which
  read the same bytes and so build the same plain objects). PyTorch DCP ``.metadata`` files (sharded FSDP state)
  are plain pickles; they go through :class:`_MetadataUnpickler`, which admits only DCP's metadata classes.
- **Our own formats for the rest.** RNG states are JSON (:func:`rng_state` / :func:`set_rng_state`), not
  accelerate's ``random_states_<rank>.pkl``; the data-stream position was JSON already.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HASH = "xxh3_128"
CHUNK = 8 << 20  # 8 MiB reads: large enough that the per-call overhead vanishes, small enough to stay in cache
# torch.save files, which a loader would unpickle. Safetensors and JSON cannot carry code, and DCP's .distcp
# shards are raw tensor bytes plus items torch itself loads with weights_only: checked by checksum only.
PICKLED = (".bin", ".pt", ".pth", ".pkl")
# Anything a loader might read: a file of this kind that the manifest does not list is refused.
LOADABLE = (*PICKLED, ".safetensors", ".metadata")


def digest(path: Path) -> str:
    """xxh3-128 of a file's bytes, read in 8 MiB chunks (hex string)."""
    import xxhash  # a dependency of `datasets`, listed in pyproject.toml as ours too

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def manifest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` (recursively, names relative to it, ``/``-separated) -> {size, xxh3_128}."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in skip:
            out[rel] = {"size": path.stat().st_size, HASH: digest(path)}
    return out


def problems(folder: Path, files: dict[str, dict[str, Any]]) -> str | None:
    """The first thing wrong with ``folder`` against its manifest ``files``, as a short phrase; None when intact.

    Checks, cheapest first: every listed file exists with its recorded size; no unlisted loadable file; every
    checksum matches; every pickled file holds only tensors and plain data.
    """
    for rel, rec in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != rec["size"]:
            return f"{rel} has {size} bytes, {rec['size']} were written"
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in files and path.name.endswith(LOADABLE):
            return f"{rel} was not written by this run (it is not in the checkpoint's file list)"
    for rel, rec in files.items():
        if digest(folder / rel) != rec.get(HASH):
            return f"{rel} does not match its checksum (changed or damaged since it was saved)"
    for rel in files:
        why = unsafe_reason(folder / rel)
        if why:
            return why
    return None


def unsafe_reason(path: Path) -> str | None:
    """Why loading ``path`` could run code or is not a torch file (short phrase); None when it is plain data."""
    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it may not support: refused anyway
            if name.endswith(PICKLED):
                # mmap: only the pickle is parsed, tensor bytes stay on disk, so this costs little even for GBs.
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            elif name.endswith(".metadata"):
                with open(path, "rb") as f:
                    _MetadataUnpickler(f).load()
    except Exception as e:  # noqa: BLE001 - any failure means "not plain data": refuse, never load it for real
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        return f"{path.name} is not plain tensors and data, refused without loading it ({reason})"
    return None


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a PyTorch DCP ``.metadata`` file, admitting only its own data classes and torch's plain types."""

    _BUILTINS = frozenset({("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                           ("builtins", "slice"), ("torch", "Size"),
                           ("torch.serialization", "_get_layout"),  # name -> torch.layout, a dict lookup
                           ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")})  # the checkpoint's own path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._BUILTINS:
            return super().find_class(module, name)
        if module.startswith("torch.distributed.checkpoint."):
            obj = super().find_class(module, name)
            # Data classes (rebuilt field by field, no __init__) and enums; never a function or another class.
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        if module == "torch":
            obj = getattr(torch, name, None)
            if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
                return obj
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in DCP metadata")


# --- RNG states as JSON -------------------------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA RNG states as JSON-serialisable data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned (a JSON round trip turns tuples into lists: undone here)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])

