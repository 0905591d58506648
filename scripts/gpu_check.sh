#!/usr/bin/env bash
# On a machine with a CUDA GPU: build the native extension with its CUDA
# sources, run the CUDA op tests, then the GPU kernel benchmark (JSON on stdout).
#
# Needs torch (CUDA build), hypothesis, pytest and attrs; installs nothing and
# needs no network. corral is used from the checkout (PYTHONPATH=src), so the
# loader finds native/ next to src/. Every step runs under `timeout`; the whole
# script stays under 8 minutes.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
export CORRAL_CACHE_DIR="${CORRAL_CACHE_DIR:-${TMPDIR:-/tmp}/corral-gpu-check}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# Unset, cpp_extension compiles for the GPU it finds, which is all we run on.

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "device"
timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
timeout 60 python -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())'

step "build (python -m corral.ops.build)"
timeout 200 python -m corral.ops.build

# test_cuda_ops.py, plus the CUDA cases of the op tests shared with the CPU
# kernels (their device parameter is "cuda").
# A test failure still lets the benchmark run; the script then exits non-zero.
status=0
step "CUDA op tests"
timeout 180 python -m pytest -q -p no:cacheprovider tests/ops -k cuda || status=$?

# The model tests pick device="auto", so on this machine corral runs them on CUDA.
step "model parity and invariance on the GPU"
timeout 150 python -m pytest -q -p no:cacheprovider tests/model/test_model_parity.py tests/model/test_model_invariance.py || status=$?

step "kernel benchmark"
timeout 90 python benchmarks/kernels.py --device cuda --dtype bfloat16 || status=$?

exit "$status"
