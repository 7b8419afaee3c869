"""Atomic checkpoints and exact resume.

A checkpoint ``output_dir/checkpoint-<step>/`` holds everything needed to continue a run as if it had never
stopped: model (or adapter), optimizer, scheduler and every RNG state per rank (``accelerator.save_state``),
each rank's data-stream position, the step, and a copy of the run's ``*.jsonl`` logs up to that step.

Atomicity: all ranks write into ``output_dir/.tmp-checkpoint-<step>/``; when every rank is done the main
process writes ``trainer_state.json`` *last*, fsyncs, and renames the folder into place. A kill at any
moment leaves either the old set of checkpoints or the old set plus one complete new one: a folder without
``trainer_state.json`` or still named ``.tmp-*`` is never resumed from, and is cleaned up on the next save.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


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


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished checkpoint (renamed into place, state file present)."""
    return _CKPT.match(path.name) is not None and (path / STATE_FILE).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_CKPT.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, rank_state: dict[str, Any],
                    total_limit: int | None) -> Path:
    """Write ``checkpoint-<step>`` atomically (all ranks call this). Returns the final path.

    Args:
        accelerator: saves model, optimizer, scheduler and per-rank RNG states.
        output_dir: the run folder.
        step: the number of finished steps.
        rank_state: this rank's extra state (data stream position...), JSON-serialisable.
        total_limit: keep only the newest ``total_limit`` checkpoints (None or 0 = keep all).
    """
    out = Path(output_dir)
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        for stale in out.glob(".tmp-checkpoint-*"):  # left by a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    (tmp / f"rank_state_{accelerator.process_index}.json").write_text(json.dumps(rank_state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for log in out.glob("*.jsonl"):  # the logs up to this step travel with the checkpoint
            shutil.copy2(log, tmp / log.name)
        state = {"step": step, "world_size": accelerator.num_processes}
        state_path = tmp / STATE_FILE
        with open(state_path, "w") as f:  # written last: its presence marks a complete checkpoint
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(out)
        if total_limit:
            for old in list_checkpoints(out)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | Path) -> tuple[int, dict[str, Any]]:
    """Restore model, optimizer, scheduler and RNG states from ``path``. Returns (step, this rank's state).

    Raises:
        ValueError: ``path`` is not a complete checkpoint, or was written by a different world size.
    """
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {STATE_FILE}); pick a checkpoint-<step> folder")
    state = json.loads((path / STATE_FILE).read_text())
    if state["world_size"] != accelerator.num_processes:
        raise ValueError(f"{path} was saved by {state['world_size']} processes but this run has "
                         f"{accelerator.num_processes}; resume with the same number of processes")
    accelerator.load_state(str(path))
    rank_state = json.loads((path / f"rank_state_{accelerator.process_index}.json").read_text())
    return int(state["step"]), rank_state


def restore_logs(accelerator: Accelerator, checkpoint: str | Path, output_dir: str | Path) -> None:
    """Put the checkpoint's copy of the ``*.jsonl`` logs back, so rows after the checkpoint are not duplicated."""
    if accelerator.is_main_process:
        for log in Path(checkpoint).glob("*.jsonl"):
            shutil.copy2(log, Path(output_dir) / log.name)
    accelerator.wait_for_everyone()


def resume_point(accelerator: Accelerator, output_dir: str | Path, resume_from_checkpoint: str | None,
                 overwrite_output_dir: bool) -> Path | None:
    """Where a run starts: ``resume_from_checkpoint`` if set; else, unless ``overwrite_output_dir`` (which deletes
    the old checkpoints), the newest complete checkpoint in ``output_dir``; None starts fresh. All ranks call it."""
    if resume_from_checkpoint:
        return Path(resume_from_checkpoint)
    if overwrite_output_dir:
        if accelerator.is_main_process:
            for old in list_checkpoints(output_dir):
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return None
    return latest_checkpoint(output_dir)
