#!/usr/bin/env bash
# GPU benchmarks in one command (under 5 minutes on a CUDA machine): capture against plain
# `generate` at batch 1 and 8 on a random 16-layer x 64-expert MoE, and the max-T engine (torch
# backend) against its GEMM floor on the e114-sized and a DeepSeek-sized problem. Prints ratios;
# copy them, with the machine line, into bench/RESULTS.md. Extra arguments go to bench/bench_gpu.py
# (e.g. --skip-capture, --repeats 2). Never part of the tests or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  echo "bench/gpu.sh: no CUDA device (torch.cuda.is_available() is False in $PY); run it on a GPU machine, or smoke-test the CPU pieces with: $PY bench/bench_gpu.py --device cpu --small" >&2
  exit 1
fi
exec "$PY" bench/bench_gpu.py --device cuda "$@"
