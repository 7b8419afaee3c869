#!/usr/bin/env bash
# The GPU checks in one script, for a machine with one CUDA GPU (e.g. the H200 some sessions are lent).
# Prints decode tokens/s per backend and the step-time ratio vs TRL for the gpu-0.5b preset, runs the
# gpu-marked tests, and writes every result to ${OUT:-bench/results}. Each part has its own timeout so the
# whole script ends within 8 minutes (decode 150 s + step 210 s + tests 120 s: the tests train the tiny base in
# each recommended GPU configuration, and two of them compile decode graphs).
#
# Self-contained on a machine that cannot download: wheels for the packages its image lacks (trl, datasets,
# math-verify and their small dependencies) may be carried in a git-ignored .whl/ folder, made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     trl==1.16.0 datasets==5.2.0 math-verify==0.9.0 dill==0.4.0 multiprocess==0.70.18 \
#     latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
# When .whl/ exists they are installed into /tmp/site; the project itself goes on PYTHONPATH (no install).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu_device.txt" || true
python3 -c "import torch, transformers, accelerate, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'trl', trl.__version__)" \
  2>&1 | tee "$out/gpu_versions.txt"
timeout 150 python3 bench/decode_throughput.py --preset gpu-0.5b --backends compact hf hf-compile --repeats 2 \
  --json "$out/gpu_decode.json" 2>&1 | tee "$out/gpu_decode.txt"
echo "decode exit: ${PIPESTATUS[0]}" | tee -a "$out/gpu_decode.txt"
timeout 210 python3 bench/step_throughput.py --preset gpu-0.5b --steps 3 --warmup 1 --json "$out/gpu_step.json" \
  2>&1 | grep -v "it/s\]" | tee "$out/gpu_step.txt"
echo "step exit: ${PIPESTATUS[0]}" | tee -a "$out/gpu_step.txt"
timeout 120 python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -15 | tee "$out/gpu_tests.txt"
