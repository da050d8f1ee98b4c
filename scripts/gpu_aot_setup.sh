#!/usr/bin/env bash
# What scripts/compile_for_gpu.py needs beside the checkout's .venv (jax 0.11.2 for the CPU and jllm's dependencies,
# left untouched) to compile for an NVIDIA GPU without one: installed into .gpu_aot/site (ignored by git), which the
# script puts first on its path.
#
#     bash scripts/gpu_aot_setup.sh     # once per checkout, about 5 s; again: nothing to do
#
# jax-cuda13-plugin / -pjrt: XLA:GPU and the compile-only devices of a GPU described by a target spec.
# nvidia-cuda-nvcc: ptxas, which assembles XLA's PTX (without it every Triton GEMM fails: "No supported config
# found"); nvidia-nvvm: libdevice, the maths functions XLA links into its kernels (without it: "libdevice not found").
# The plugin finds both at .gpu_aot/site/nvidia/cu13, beside it; a system CUDA at /usr/local/cuda would do too, where
# there is one. Nothing else of the plugin's CUDA wheels (cuBLAS, cuDNN, NCCL, ...: 3 GB more) is read by a compile.
# jax-triton 0.3.1 (the gpu extra's), without its dependencies (.venv has jax and triton): jllm's "auto" attention
# backend on a GPU is triton-prefill where it imports, and its kernels lower through it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "no .venv here: run bash scripts/setup.sh first" >&2; exit 1; }
PACKAGES=(
    jax-cuda13-plugin==0.11.2 jax-cuda13-pjrt==0.11.2 nvidia-cuda-nvcc==13.5.37 nvidia-nvvm==13.5.37
    jax-triton==0.3.1
)
SITE=.gpu_aot/site
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qx '/.gpu_aot/' "$EXCLUDE" 2>/dev/null || echo /.gpu_aot/ >> "$EXCLUDE"
if [[ -f $SITE/.installed && "$(cat "$SITE/.installed")" == "${PACKAGES[*]}" ]]; then
    echo "$SITE is up to date"
    exit
fi
rm -rf "$SITE"
.venv/bin/python -m pip install -q --no-deps --target "$SITE" "${PACKAGES[@]}"
echo "${PACKAGES[*]}" > "$SITE/.installed"
du -sh "$SITE"
