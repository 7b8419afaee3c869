"""Checkpoints that survive: damaged files found and skipped, full disks, hostile pickles, safe RNG state.

Unit tests build a checkpoint in-process from a tiny model (fast); the end-to-end tests run ``train.py`` on the
bundled tiny base and check what a user sees: exit code, one line, no traceback, the run reaching ``max_steps``.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from grpo import checkpoint as ck
from grpo.checkpoint_files import digest, manifest, rng_state, set_rng_state, unsafe_reason
from grpo.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--per_device_train_batch_size", "16", "--eval_steps", "0", "--seed", "3", "--cpu_threads", "1"]
Usage = collections.namedtuple("Usage", "total used free")


class Payload:
    """Unpickling this runs a shell command that creates ``marker``: what a hostile checkpoint file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tiny_run(tmp_path: Path) -> tuple[Accelerator, torch.nn.Module]:
    """An accelerator with a prepared tiny model, AdamW (one step taken, so it has state) and a scheduler."""
    AcceleratorState._reset_state()
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(16, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model, opt, sched = acc.prepare(model, opt, sched)
    model(torch.randn(4, 16)).sum().backward()
    opt.step()
    sched.step()
    return acc, model


def save(acc: Accelerator, model: torch.nn.Module, out: Path, step: int) -> Path:
    return ck.save_checkpoint(acc, out, step, {"stream": {"pos": step}}, None, model)


def rewrite_manifest(path: Path) -> None:
    """What an attacker would do after replacing files: make the file list match them again."""
    state = json.loads((path / ck.STATE_FILE).read_text())
    state["files"] = manifest(path, skip=(ck.STATE_FILE,))
    (path / ck.STATE_FILE).write_text(json.dumps(state))


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *SMALL, *args], capture_output=True, text=True,
                          cwd=ROOT, check=False, timeout=600, **kw)


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("time/", "throughput/"))}


# --- what a checkpoint holds ---------------------------------------------------------------------------------


def test_checkpoint_lists_every_file_with_size_and_checksum_and_holds_no_rng_pickle(tmp_path):
    acc, model = tiny_run(tmp_path)
    path = save(acc, model, tmp_path, 1)
    state = json.loads((path / ck.STATE_FILE).read_text())
    files = sorted(p.name for p in path.iterdir() if p.name != ck.STATE_FILE)
    assert sorted(state["files"]) == files
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "rank_state_0.json"} <= set(files)
    assert not list(path.glob("random_states_*.pkl"))  # replaced by JSON in rank_state_0.json
    for name, rec in state["files"].items():
        assert rec["size"] == (path / name).stat().st_size and rec["xxh3_128"] == digest(path / name)
    assert ck.check_checkpoint(path) is None
    assert json.loads((path / "rank_state_0.json").read_text())["stream"] == {"pos": 1}


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    for _ in range(5):  # move every generator on, then restore
        random.random(), np.random.rand(), torch.rand(7)
    set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_load_restores_model_optimizer_rng_and_rank_state(tmp_path):
    acc, model = tiny_run(tmp_path)
    path = save(acc, model, tmp_path, 3)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected_draw = torch.rand(4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    step, rank_state = ck.load_checkpoint(acc, path)
    assert step == 3 and rank_state == {"stream": {"pos": 3}}
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.rand(4), expected_draw)  # the RNG is back where the save left it


# --- damaged checkpoints -------------------------------------------------------------------------------------


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda p: os.truncate(p / "model.safetensors", 100), "model.safetensors has 100 bytes"),
    (lambda p: flip_byte(p / "optimizer.bin"), "optimizer.bin does not match its checksum"),
    (lambda p: (p / "scheduler.bin").unlink(), "scheduler.bin is missing"),
    (lambda p: (p / "random_states_0.pkl").write_bytes(b"x"), "random_states_0.pkl was not written by this run"),
    (lambda p: (p / ck.STATE_FILE).write_text('{"step": 2, "fi'), "trainer_state.json is not valid JSON"),
    (lambda p: (p / ck.STATE_FILE).write_text('{"step": 2, "world_size": 1}'), "has no file list"),
])
def test_damaged_newest_checkpoint_is_named_and_skipped(tmp_path, capsys, damage, expected):
    acc, model = tiny_run(tmp_path)
    save(acc, model, tmp_path, 1)
    newest = save(acc, model, tmp_path, 2)
    damage(newest)
    assert expected in ck.check_checkpoint(newest)
    assert ck.resolve_resume(acc, tmp_path, None, False) == tmp_path / "checkpoint-1"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: checkpoint-2 is damaged (") and expected in err[0]
    assert err[0].endswith("resuming from checkpoint-1 instead")
    with pytest.raises(ConfigError, match=rf"cannot resume from .*checkpoint-2: .*{expected.split()[0]}"):
        ck.resolve_resume(acc, tmp_path, str(newest), False)


def test_no_intact_checkpoint_is_one_line_error(tmp_path):
    acc, model = tiny_run(tmp_path)
    for step in (1, 2):
        os.truncate(save(acc, model, tmp_path, step) / "optimizer.bin", 10)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*checkpoint-2 is damaged.*checkpoint-1 is "
                                              r"damaged.*--overwrite_output_dir true") as e:
        ck.resolve_resume(acc, tmp_path, None, False)
    assert "\n" not in str(e.value)


# --- hostile files -------------------------------------------------------------------------------------------


def test_hostile_pickles_are_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload works: plain unpickling runs the command
    assert marker.exists()
    marker.unlink()

    acc, model = tiny_run(tmp_path)
    save(acc, model, tmp_path, 1)
    newest = save(acc, model, tmp_path, 2)
    (newest / "random_states_0.pkl").touch()  # accelerate's name for the RNG file: replaced too
    replaced = [p for p in newest.iterdir() if p.suffix in (".bin", ".pkl")]
    assert {p.name for p in replaced} == {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"}
    for p in replaced:  # a torch.save zip for .bin (looks like a real torch file), a raw pickle for .pkl
        if p.suffix == ".bin":
            torch.save(Payload(marker), p)
        else:
            p.write_bytes(pickle.dumps(Payload(marker)))
    rewrite_manifest(newest)  # sizes and checksums agree: only the content betrays it

    problem = ck.check_checkpoint(newest)
    assert "is not plain tensors and data, refused without loading it" in problem
    assert ck.resolve_resume(acc, tmp_path, None, False) == tmp_path / "checkpoint-1"
    assert "checkpoint-2 is damaged" in capsys.readouterr().err
    for p in replaced:  # each file on its own is refused, not just the first one checked
        assert "refused without loading it" in unsafe_reason(p)
    with pytest.raises(ConfigError):
        ck.resolve_resume(acc, tmp_path, str(newest), False)
    assert not marker.exists()


# --- full disk and write errors ------------------------------------------------------------------------------


def test_too_little_free_space_stops_before_writing(tmp_path, monkeypatch):
    acc, model = tiny_run(tmp_path)
    save(acc, model, tmp_path, 1)
    need = ck.expected_bytes(tmp_path, model)
    assert need >= (tmp_path / "checkpoint-1" / "optimizer.bin").stat().st_size
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - need // 2, need // 2))
    with pytest.raises(CheckpointError, match=r"^not enough disk space to save checkpoint-2 in .*: it needs about "
                                              r"[0-9.]+ [KMG]?B, [0-9.]+ [KMG]?B is free; checkpoint-1 is intact; free disk space") as e:
        save(acc, model, tmp_path, 2)
    assert "\n" not in str(e.value)
    assert not list(tmp_path.glob(".tmp-*")) and ck.check_checkpoint(tmp_path / "checkpoint-1") is None
    assert ck.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")])
def test_write_error_mid_save_is_one_line_and_leaves_no_tmp(tmp_path, monkeypatch, error):
    acc, model = tiny_run(tmp_path)
    save(acc, model, tmp_path, 1)
    real = Accelerator.save_state

    def failing(self, output_dir, **kw):
        real(self, output_dir, **kw)  # files half written, then the disk fills up
        raise error

    monkeypatch.setattr(Accelerator, "save_state", failing)
    with pytest.raises(CheckpointError, match=r"^could not write checkpoint-2 \(rank 0\): .*checkpoint-1 is intact"):
        save(acc, model, tmp_path, 2)
    assert not list(tmp_path.glob(".tmp-*"))
    monkeypatch.setattr(Accelerator, "save_state", real)
    assert save(acc, model, tmp_path, 2) == tmp_path / "checkpoint-2"  # with room again, saving works


def test_write_error_while_sealing_leaves_no_tmp(tmp_path, monkeypatch):
    acc, model = tiny_run(tmp_path)

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "trainer_state.json")

    monkeypatch.setattr(ck, "manifest", no_space)
    with pytest.raises(CheckpointError, match=r"^could not write checkpoint-1: No space left on device "
                                              r"\(trainer_state.json\); no checkpoint was saved yet"):
        save(acc, model, tmp_path, 1)
    assert not any(tmp_path.iterdir())


def test_other_errors_are_not_disguised_as_disk_errors(tmp_path, monkeypatch):
    acc, model = tiny_run(tmp_path)
    monkeypatch.setattr(Accelerator, "save_state", lambda self, d, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save(acc, model, tmp_path, 1)


# --- end to end: what a user sees ----------------------------------------------------------------------------


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_truncated_newest_weights_run_falls_back_and_finishes(tmp_path):
    out = tmp_path / "run"
    proc = run(["--max_steps", "3", "--save_steps", "1", "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = metric_rows(out)
    weights = out / "checkpoint-3" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)

    proc = run(["--max_steps", "4", "--save_steps", "1", "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    no_traceback(proc)
    lines = [x for x in proc.stderr.splitlines() if "damaged" in x]
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint-3 is damaged (model.safetensors has")
    assert lines[0].endswith("resuming from checkpoint-2 instead")
    assert f"resuming from {out / 'checkpoint-2'} at step 2 of 4" in proc.stdout
    after = metric_rows(out)
    assert [r["step"] for r in after] == [1, 2, 3, 4]  # logs rewritten from checkpoint-2, then continued
    assert comparable(after[2]) == comparable(before[2])  # step 3 redone exactly as the first time
    assert ck.check_checkpoint(out / "checkpoint-4") is None and (out / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_hostile_checkpoint_run_falls_back_without_running_code(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    proc = run(["--max_steps", "2", "--save_steps", "1", "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    newest = out / "checkpoint-2"
    for name in ("optimizer.bin", "scheduler.bin"):
        torch.save(Payload(marker), newest / name)
    (newest / "random_states_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    rewrite_manifest(newest)

    proc = run(["--max_steps", "3", "--save_steps", "1", "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    no_traceback(proc)
    lines = [x for x in proc.stderr.splitlines() if "damaged" in x]
    assert len(lines) == 1 and "checkpoint-2 is damaged" in lines[0] and "refused without loading it" in lines[0]
    assert [r["step"] for r in metric_rows(out)] == [1, 2, 3]
    assert not marker.exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


@pytest.mark.slow
def test_real_full_disk_12mb_tmpfs(tmp_path):
    """A real 12 MB filesystem: a tiny-base checkpoint is ~7.7 MB, so the second one cannot fit."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "12m"):
        pytest.skip("mounting a tmpfs needs root and mount(8); the simulated full-disk tests above still ran")
    try:
        out = disk / "run"
        proc = run(["--max_steps", "4", "--save_steps", "1", "--output_dir", str(out)])
        assert proc.returncode == 1, proc.stderr[-2000:]
        no_traceback(proc)
        errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "not enough disk space to save checkpoint-2" in errors[0], proc.stderr[-2000:]
        assert "checkpoint-1 is intact" in errors[0]
        assert not list(out.glob(".tmp-*")) and [p.name for p in ck.list_checkpoints(out)] == ["checkpoint-1"]
        assert ck.check_checkpoint(out / "checkpoint-1") is None

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # room again: resume
        proc = run(["--max_steps", "4", "--save_steps", "1", "--output_dir", str(out)])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"resuming from {out / 'checkpoint-1'} at step 1 of 4" in proc.stdout
        assert [r["step"] for r in metric_rows(out)] == [1, 2, 3, 4]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, check=False)


def test_dcp_metadata_of_sharded_state_is_accepted_and_a_hostile_one_refused(tmp_path):
    """FSDP with SHARDED_STATE_DICT writes PyTorch DCP folders; their .metadata is a plain pickle that torch
    itself loads with pickle.load, so our restricted unpickler stands in front of it."""
    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    dcp.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": 3}, checkpoint_id=str(tmp_path))
    assert unsafe_reason(tmp_path / ".metadata") is None
    marker = tmp_path / "pwned"
    (tmp_path / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    assert "global posix.system is not allowed" in unsafe_reason(tmp_path / ".metadata")
    assert not marker.exists()
