"""Atomic, verified checkpoints and exact resume.

A checkpoint ``output_dir/checkpoint-<step>/`` holds everything needed to continue a run as if it had never
stopped: model (or adapter), optimizer and scheduler (``accelerator.save_state``, sharded under FSDP/DeepSpeed),
per rank a JSON file with the RNG states, the data-stream position and the step counters, and a copy of the run's
``*.jsonl`` logs up to that step.

- **Atomic.** All ranks write into ``output_dir/.tmp-checkpoint-<step>/``; when every rank is done the main process
  writes ``trainer_state.json`` *last*, fsyncs, and renames the folder into place. A kill at any moment leaves the
  old checkpoints, or the old ones plus one complete new one; a ``.tmp-*`` folder is never resumed from.
- **Verified.** ``trainer_state.json`` lists every file with its size and checksum. Resume checks the newest
  checkpoint first; a damaged one (truncated copy, bit rot, a file missing) is named in one line and the newest
  intact one is used instead (:func:`resolve_resume`).
- **No code.** Every file resume reads is plain data: safetensors, JSON, or torch pickles that pass torch's
  ``weights_only`` loader before any real load (:mod:`grpo.checkpoint_files`). A file that does not is refused.
- **Disk full.** Before writing, the free space is checked against the expected size; a write error (``ENOSPC``,
  I/O error) ends the run with one line; either way the ``.tmp-*`` folder is removed and the previous checkpoint
  is untouched, so rerunning on a disk with room resumes from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from grpo.checkpoint_files import HASH, manifest, problems, rng_state, set_rng_state
from grpo.errors import CheckpointError, ConfigError

STATE_FILE = "trainer_state.json"
FORMAT = 2  # 2: file list with sizes and checksums, RNG states as JSON
_CKPT = re.compile(r"^checkpoint-(\d+)$")
# torch.save reports a failed write as a RuntimeError from its zip writer, not as an OSError.
_TORCH_WRITE_ERRORS = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")


class _UnactionableSaveWarnings(logging.Filter):
    """Drop two warnings printed on every checkpoint that a user cannot act on.

    accelerate's "Removed shared tensor {'lm_head.weight'}": safetensors cannot store a tied embedding twice, so
    the alias is left out and re-tied on load (the exact-resume test on the tied SmolLM2 checks it).
    DeepSpeed's "Setting accelerator to CPU" (when it is installed, accelerate imports it to save state on a
    machine without a GPU): that is the intended device.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "Removed shared tensor" not in msg and "Setting accelerator to CPU" not in msg


for _name in ("accelerate.utils.other", "DeepSpeed"):
    _log = logging.getLogger(_name)
    if not any(isinstance(f, _UnactionableSaveWarnings) for f in _log.filters):
        _log.addFilter(_UnactionableSaveWarnings())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def step_of(path: Path) -> int:
    """The step of a ``checkpoint-<step>`` folder."""
    return int(_CKPT.match(path.name).group(1))


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished checkpoint (renamed into place, state file present; not yet verified)."""
    return _CKPT.match(path.name) is not None and (path / STATE_FILE).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    return sorted((p for p in out.iterdir() if p.is_dir() and is_complete(p)), key=step_of)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None (see :func:`resolve_resume` for the newest *intact* one)."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


# --- saving --------------------------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def expected_bytes(output_dir: str | Path, model: torch.nn.Module | None = None) -> int:
    """About how many bytes the next checkpoint takes: the last one's size, or weights + 2 Adam moments.

    Plus the ``*.jsonl`` logs that are copied in, and 5% for what the estimate misses.
    """
    out = Path(output_dir)
    last = 0
    prev = latest_checkpoint(out)
    if prev is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            files = json.loads((prev / STATE_FILE).read_text())["files"]
            last = sum(int(rec["size"]) for rec in files.values())
    params = 0
    if model is not None:
        for p in model.parameters():  # under FSDP2 a DTensor's numel() is the full tensor's
            params += p.numel() * p.element_size() * (3 if p.requires_grad else 1)
    logs = sum(p.stat().st_size for p in out.glob("*.jsonl")) if out.is_dir() else 0
    return int(1.05 * (max(last, params) + logs))


def _is_write_error(e: BaseException) -> bool:
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE_ERRORS)) \
        or type(e).__name__ == "SafetensorError"


def _short(e: BaseException) -> str:
    """A write error in a few words: the OS's reason, or torch's zip-writer failure (which hides ENOSPC)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f" ({e.filename})" if e.filename else "")
    text = str(e).strip().splitlines()
    first = text[0][:160] if text else type(e).__name__
    if isinstance(e, RuntimeError):  # "[enforce fail at inline_container.cc:672] . unexpected pos 2137792 vs ..."
        return f"a file write failed, most likely the disk is full (torch: {first})"
    return first


def _agree(accelerator: Accelerator, problem: str | None) -> str | None:
    """The first rank's problem, on every rank (a collective: all ranks call it), so all stop together."""
    if accelerator.num_processes == 1:
        return problem
    return next((p for p in gather_object([problem]) if p), None)


@contextlib.contextmanager
def write_errors(what: str, output_dir: str | Path) -> Iterator[None]:
    """Turn a failed write (disk full, I/O error) into a one-line :class:`CheckpointError` naming what is intact."""
    try:
        yield
    except Exception as e:
        if not _is_write_error(e):
            raise
        raise CheckpointError(f"could not write {what}: {_short(e)}; {_intact(output_dir)}") from None


def _intact(output_dir: str | Path) -> str:
    prev = latest_checkpoint(output_dir)
    where = f"{prev.name} is intact" if prev else "no checkpoint was saved yet"
    return f"{where}; free disk space (or set output_dir on a larger disk) and rerun the same command to resume"


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, rank_state: dict[str, Any],
                    total_limit: int | None, model: torch.nn.Module | None = None,
                    rank_files: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoint-<step>`` atomically, with sizes and checksums (all ranks call this). Returns its path.

    Args:
        accelerator: saves model, optimizer and scheduler (sharded as the run is).
        output_dir: the run folder.
        step: the number of finished steps.
        rank_state: this rank's extra state (data-stream position...), JSON-serialisable.
        total_limit: keep only the newest ``total_limit`` checkpoints up to ``step`` (None or 0 = keep all).
        model: the trained model, for the disk-space estimate of a first checkpoint.
        rank_files: this rank's extra data files, ``{name: plain data}`` (tensors, text, numbers, containers),
            written as ``<name>_<rank>.pt`` and read back by :func:`load_rank_file` (e.g. async in-flight batches).

    Raises:
        CheckpointError: too little free space, or a write failed; the folder being written is removed.
    """
    out = Path(output_dir)
    final, tmp = out / f"checkpoint-{step}", out / f".tmp-checkpoint-{step}"
    problem = None
    if accelerator.is_main_process:
        for stale in out.glob(".tmp-checkpoint-*"):  # left by a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        need, free = expected_bytes(out, model), shutil.disk_usage(out).free
        if free < need:
            problem = (f"not enough disk space to save checkpoint-{step} in {out}: it needs about {_size(need)}, "
                       f"{_size(free)} is free")
        else:
            with contextlib.suppress(OSError):
                tmp.mkdir(parents=True)
            problem = None if tmp.is_dir() else f"could not create {tmp}"
    problem = _agree(accelerator, problem)
    if problem is None:
        problem = _agree(accelerator, _write_rank_files(accelerator, tmp, rank_state, rank_files or {}))
    if problem is None and accelerator.is_main_process:
        try:
            _seal(tmp, final, step, accelerator.num_processes)
        except Exception as e:
            if not _is_write_error(e):
                raise
            problem = f"could not write checkpoint-{step}: {_short(e)}"
    problem = _agree(accelerator, problem)
    if problem is not None:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        raise CheckpointError(f"{problem}; {_intact(out)}")
    if accelerator.is_main_process and total_limit:
        for old in [p for p in list_checkpoints(out) if step_of(p) <= step][:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_rank_files(accelerator: Accelerator, tmp: Path, rank_state: dict[str, Any],
                      rank_files: dict[str, Any]) -> str | None:
    """This rank's share of the checkpoint; the write error as a phrase, or None."""
    rank = accelerator.process_index
    try:
        accelerator.save_state(str(tmp))
        for name, data in rank_files.items():
            torch.save(data, tmp / f"{name}_{rank}.pt")
        # accelerate's RNG pickle is replaced by JSON in rank_state (see grpo.checkpoint_files).
        (tmp / f"random_states_{rank}.pkl").unlink(missing_ok=True)
        state = {**rank_state, "rng": rng_state(), "accelerator_step": accelerator.step}
        (tmp / f"rank_state_{rank}.json").write_text(json.dumps(state))
    except Exception as e:
        if not _is_write_error(e):
            raise
        return f"could not write {tmp.name.removeprefix('.tmp-')} (rank {rank}): {_short(e)}"
    return None


def _seal(tmp: Path, final: Path, step: int, world_size: int) -> None:
    """Main process: copy the logs in, list and checksum every file, write the state file last, rename."""
    out = tmp.parent
    for log in out.glob("*.jsonl"):  # the logs up to this step travel with the checkpoint
        shutil.copy2(log, tmp / log.name)
    state = {"format": FORMAT, "step": step, "world_size": world_size, "hash": HASH,
             "files": manifest(tmp, skip=(STATE_FILE,))}
    with open(tmp / STATE_FILE, "w") as f:  # written last: its presence marks a complete checkpoint
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(out)


# --- resuming ------------------------------------------------------------------------------------------------


def check_checkpoint(path: str | Path) -> str | None:
    """What is wrong with checkpoint ``path`` (one short phrase naming the file), or None when it is intact.

    Reads every file once (sizes, checksums, the refusal of pickles that are not plain data); loads nothing.
    """
    path = Path(path)
    if not path.is_dir():
        return "no such folder"
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError:
        return f"{STATE_FILE} is missing (the save never finished)"
    except (OSError, ValueError):
        return f"{STATE_FILE} is not valid JSON"
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(files, dict) or "step" not in state:
        return f"{STATE_FILE} has no file list with sizes and checksums (written by an older grpo-zero)"
    return problems(path, files)


def _checked(accelerator: Accelerator, path: Path) -> str | None:
    """:func:`check_checkpoint` on the main process, its answer on every rank."""
    answer = [check_checkpoint(path) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    return answer[0]


def resolve_resume(accelerator: Accelerator, output_dir: str | Path, resume_from_checkpoint: str | None,
                   overwrite_output_dir: bool) -> Path | None:
    """Where a run starts (all ranks call it); None starts fresh.

    ``resume_from_checkpoint`` if set (damaged: a one-line :class:`ConfigError`). Else, unless
    ``overwrite_output_dir`` (which deletes the old checkpoints), the newest *intact* checkpoint in ``output_dir``:
    damaged newer ones are named in one line on stderr and skipped.

    Raises:
        ConfigError: the named checkpoint is damaged or not a checkpoint.
        CheckpointError: checkpoints exist but none is intact.
    """
    out = Path(output_dir)
    if resume_from_checkpoint:
        path = Path(resume_from_checkpoint)
        problem = _checked(accelerator, path)
        if problem:
            raise ConfigError(f"cannot resume from {path}: {problem}; pick another checkpoint-<step> folder or drop "
                              "--resume_from_checkpoint")
        return path
    if overwrite_output_dir:
        if accelerator.is_main_process:
            for old in list_checkpoints(out):
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return None
    damaged = []
    for path in reversed(list_checkpoints(out)):
        problem = _checked(accelerator, path)
        if problem is None:
            if damaged and accelerator.is_main_process:
                print(f"warning: {'; '.join(damaged)}; resuming from {path.name} instead", file=sys.stderr, flush=True)
            return path
        damaged.append(f"{path.name} is damaged ({problem})")
    if damaged:
        raise CheckpointError(f"no intact checkpoint in {out}: {'; '.join(damaged)}; pass --overwrite_output_dir "
                              "true to start again")
    return None


def load_rank_file(path: str | Path, name: str, rank: int) -> Any:
    """A data file written through ``save_checkpoint(rank_files=...)``, or None when the checkpoint has none.
    Loaded with torch's restricted unpickler (``weights_only``): plain data only, no code."""
    file = Path(path) / f"{name}_{rank}.pt"
    return torch.load(file, map_location="cpu", weights_only=True) if file.is_file() else None


def load_checkpoint(accelerator: Accelerator, path: str | Path) -> tuple[int, dict[str, Any]]:
    """Restore model, optimizer, scheduler and RNG states from a checkpoint :func:`resolve_resume` chose.

    Returns:
        (step, this rank's state: data-stream position, bad-step count...).

    Raises:
        ConfigError: the checkpoint was written by a different number of processes.
    """
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    if state["world_size"] != accelerator.num_processes:
        raise ConfigError(f"{path} was saved by {state['world_size']} processes but this run has "
                          f"{accelerator.num_processes}; resume with the same number of processes")
    # Every pickle in the folder passed torch's weights_only loader in check_checkpoint; load with it again anyway.
    accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    rank_state = json.loads((path / f"rank_state_{accelerator.process_index}.json").read_text())
    set_rng_state(rank_state.pop("rng"))
    accelerator.step = rank_state.pop("accelerator_step", accelerator.step)
    return int(state["step"]), rank_state


def restore_logs(accelerator: Accelerator, checkpoint: str | Path, output_dir: str | Path) -> None:
    """Put the checkpoint's copy of the ``*.jsonl`` logs back, so rows after the checkpoint are not duplicated."""
    if accelerator.is_main_process:
        for log in Path(checkpoint).glob("*.jsonl"):
            shutil.copy2(log, Path(output_dir) / log.name)
    accelerator.wait_for_everyone()
