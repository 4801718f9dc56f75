#!/usr/bin/env bash
# The GPU run of issue 7 in one command: the gpu validation preset, then the engine's GPU speed benchmark.
# Runs from a plain checkout with the machine's own torch/transformers (nothing installed: PYTHONPATH=.).
#   bash benchmarks/gpu_run.sh OUT_DIR            # defaults: preset gpu, seeds 0,1, validation budget 400 s
#   PYTHON=.venv/bin/python PRESET=test SEEDS=0 BENCH_ARGS="--small --device cpu" bash benchmarks/gpu_run.sh runs/rehearsal
# Each part has a hard timeout; the validation rewrites its report after every seed, so a stop keeps what finished.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") > "$out/device.txt" 2>&1
"${PYTHON:-python3}" -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)" \
  >> "$out/device.txt"

start=$(date +%s)
timeout "${VALIDATE_TIMEOUT:-460}" "${PYTHON:-python3}" -m llm validate --preset "${PRESET:-gpu}" --seeds "${SEEDS:-0,1}" \
  --time-budget-s "${BUDGET:-400}" --threads 0 --out-dir "$out/validate" 2>&1 | tee "$out/validate.log"
echo "validate: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s" | tee -a "$out/validate.log"

start=$(date +%s)
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-120}" "${PYTHON:-python3}" benchmarks/bench_gpu.py ${BENCH_ARGS:-} --out "$out/bench_gpu.json" \
  2>&1 | tee "$out/bench_gpu.log"
echo "bench_gpu: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s" | tee -a "$out/bench_gpu.log"
