#!/usr/bin/env bash
# The GPU benchmark on a lent device machine, which has torch, lightning, tensorboard and
# prometheus-client but no network: gradwatch is put on the path without an install (its
# package folder, with this checkout's monitor/ and callbacks/ linked in, as pyproject.toml
# maps them), then benchmarks.gpu runs under a hard limit and writes its section to
# $OUT/gpu.md (the device tool's result folder) or, without $OUT, into docs/benchmarks.md.
#   benchmarks/gpu.sh [--smoke]
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(mktemp -d)
mkdir "$site/gradwatch"
cp gradwatch/*.py gradwatch/py.typed "$site/gradwatch/"
ln -s "$PWD/monitor" "$site/gradwatch/monitor"
ln -s "$PWD/callbacks" "$site/gradwatch/callbacks"
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
output=docs/benchmarks.md
[ -n "${OUT:-}" ] && output="$OUT/gpu.md"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
timeout 480 "${PYTHON:-python3}" -m benchmarks.gpu --output "$output" "$@"
