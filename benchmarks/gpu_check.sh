#!/usr/bin/env bash
# GPU check for a lent accelerator machine (prepared, not run here): CUDA parity with CPU
# (cosine >= 0.9999) and p50 at S=1024 fp32, then the full `regatt bench` with the CUDA engine.
# Usage: benchmarks/gpu_check.sh [PYTHON]   (results under $OUT, or benchmarks/results/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
OUT="${OUT:-benchmarks/results/gpu}"
export OUT
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" | tee -a "$OUT/gpu.txt"
timeout 300 "$PY" benchmarks/gpu_check.py --runs 20 --cache /tmp/regatt-gpu-cache --json "$OUT/gpu_check.json"
timeout 280 "$PY" -m regatt_sdk.cli.app bench --variants none,regional,context --engines ort-cpu,ort-cuda \
  --runs 3 --warmup 1 --cache /tmp/regatt-gpu-cache --out "$OUT" --no-progress
