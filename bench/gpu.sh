#!/usr/bin/env bash
# The GPU benchmark: rows 1-3 of bench/throughput.py (encoder floor, labeler alone, naive
# reference) with the paper-sized encoders in bf16, channels-last; no Ray needed. A few
# minutes on one H100. Results land in $OUT (default bench/results).
#   bash bench/gpu.sh                # on a machine with a GPU and this project installed
# PyAV is the only extra package the GPU image may lack: a wheel in .wheels/ is used when
# it is there (pip download av==18.1.0 --only-binary=:all: -d .wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
$PY -c "import av" 2>/dev/null || $PY -m pip install --no-index --no-deps -q .wheels/av-*.whl
nvidia-smi -L || true
$PY bench/throughput.py --preset paper --device cuda --no-ray --clips 4 --seconds 2 \
    --repeats 3 --json "$OUT/gpu_paper.json" --profile "$OUT/gpu_profile.txt" "$@"
