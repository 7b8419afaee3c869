#!/usr/bin/env bash
# The GPU checks in one script, for a machine with one CUDA GPU (e.g. the H200 some sessions are lent).
# Prints decode tokens/s per backend and the step-time ratio vs TRL for the gpu-0.5b preset; writes JSON to
# ${OUT:-bench/results}. Needs the project installed with its test extra (TRL) and a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 420 python bench/decode_throughput.py --preset gpu-0.5b --backends compact hf hf-compile --repeats 2 \
  2>&1 | tee "$out/gpu_decode.txt"
timeout 600 python bench/step_throughput.py --preset gpu-0.5b --steps 3 --warmup 1 --json "$out/gpu_step.json" \
  2>&1 | grep -v "it/s\]" | tee "$out/gpu_step.txt"
python -m pytest -q -m gpu tests 2>&1 | tail -3 | tee "$out/gpu_tests.txt"
