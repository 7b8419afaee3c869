"""Sharded training proven on CPU: FSDP2 on 2 gloo ranks computes what DDP computes, resumes exactly, and saves a
full model. Each run is a real ``accelerate launch`` of ``train.py`` on the bundled tiny base (a few steps, small
batches), with the same accelerate configs users launch on GPUs (``--mixed_precision no``: CPUs have no bf16 path).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo.checkpoint import check_checkpoint, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
ARGS = ["--per_device_train_batch_size", "16", "--eval_steps", "0", "--seed", "3", "--cpu_threads", "1"]
VOLATILE = ("time/", "throughput/")


def launch(config: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [*ACCELERATE, "--config_file", str(ROOT / "configs" / "accelerate" / config), "--num_processes", "2",
           "--mixed_precision", "no", str(ROOT / "train.py"), *ARGS, "--output_dir", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def distributed_type(out: Path) -> str:
    return json.loads((out / "run_info.json").read_text())["distributed_type"]


@pytest.mark.slow
def test_fsdp2_matches_ddp_resumes_exactly_and_saves_a_full_model(tmp_path):
    ddp, fsdp, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    launch("ddp.yaml", ddp, "--max_steps", "1", "--save_final_model", "false")
    launch("fsdp.yaml", fsdp, "--max_steps", "3", "--save_steps", "1", "--save_total_limit", "null")
    assert distributed_type(ddp) == "DistributedType.MULTI_CPU"
    assert distributed_type(fsdp) == "DistributedType.FSDP"  # really sharded, not DDP under another name

    # Step 1 from the same weights: same samples, so the same rewards exactly; loss and gradient norm agree to
    # float rounding (FSDP reduce-scatters gradient shards, DDP all-reduces whole buckets).
    a, b = rows(ddp)[0], rows(fsdp)[0]
    assert a["step"] == b["step"] == 1
    for k in [k for k in a if k.startswith(("reward", "rewards/", "completions/"))]:
        assert a[k] == b[k], k
    for k in ("loss", "grad_norm", "entropy"):
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), k

    # Exact resume: a copy that only has checkpoint-1 reruns steps 2 and 3 exactly as the uninterrupted run did.
    shutil.copytree(fsdp, resumed, ignore=shutil.ignore_patterns("checkpoint-2", "checkpoint-3", "final"))
    (resumed / "metrics.jsonl").unlink()  # rows 2 and 3 must be computed again, not carried over
    assert [p.name for p in list_checkpoints(resumed)] == ["checkpoint-1"]
    proc = launch("fsdp.yaml", resumed, "--max_steps", "3", "--save_steps", "1", "--save_total_limit", "null")
    assert f"resuming from {resumed / 'checkpoint-1'} at step 1 of 3" in proc.stdout
    full, again = rows(fsdp), rows(resumed)
    assert [r["step"] for r in again] == [1, 2, 3]
    for x, y in zip(full, again):
        assert {k: v for k, v in x.items() if not k.startswith(VOLATILE)} == \
               {k: v for k, v in y.items() if not k.startswith(VOLATILE)}, x["step"]

    # FSDP checkpoints are verified like any other, and final/ is a full model equal to the last checkpoint's.
    ckpt = fsdp / "checkpoint-3"
    assert check_checkpoint(ckpt) is None
    assert sorted(p.name for p in ckpt.glob("rank_state_*.json")) == ["rank_state_0.json", "rank_state_1.json"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fsdp / "final")
    saved = torch.load(ckpt / "pytorch_model_fsdp.bin", weights_only=True)
    state = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    assert sum(t.numel() for t in state.values()) == sum(
        t.numel() for t in AutoModelForCausalLM.from_pretrained(ROOT / "models" / "tiny-base").state_dict().values())
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_close_distributed_ends_the_process_group(tmp_path):
    """A finished run ends its process group before exit: a rank that leaves gloo's threads to interpreter
    finalisation can abort (SIGABRT) after its files are written, which failed an FSDP launch in CI once."""
    import torch.distributed as dist

    from grpo.accelerator import close_distributed

    close_distributed()  # no process group: nothing to do, no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    close_distributed()
    assert not dist.is_initialized()
