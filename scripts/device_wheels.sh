#!/usr/bin/env bash
# The wheels a lent GPU machine lacks (its image has jax 0.11.2 with CUDA, flax, transformers, torch, triton, aiohttp,
# orbax, safetensors, tokenizers, grpcio): downloaded here into .whl/ (ignored by git), carried with a device call
# (`carry: [".whl"]`) and installed there into /tmp/site without an index:
#
#     bash scripts/device_wheels.sh                     # here, once per checkout
#     bash scripts/device_wheels.sh install             # there, first in each call's command; then
#     export PYTHONPATH=$PWD:$PWD/scripts:/tmp/site
#
# jax-triton 0.3.1 is the release that runs with the image's triton 3.6; the rest are jllm's own dependencies (and
# pydantic's) at the versions this checkout's .venv runs (scripts/setup.sh), so the device runs what the tests ran;
# py-spy (its binary in /tmp/site/bin) samples where a start-up's threads spend their time.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(
    jax-triton llguidance pydantic pydantic-core annotated-types typing-inspection typing-extensions grpcio
    grpcio-health-checking protobuf prometheus-client py-spy
)
if [[ "${1:-download}" == install ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    exit
fi
mapfile -t WHEELS < <(.venv/bin/python -c '
import sys
from importlib.metadata import version

pinned = {"jax-triton": "0.3.1", "py-spy": "0.4.3"}  # not in .venv: the GPU release of jax-triton, the profiler
for name in sys.argv[1:]:
    print(f"{name}=={pinned.get(name) or version(name)}")
' "${PACKAGES[@]}")
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PLATFORMS=()
for p in manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d .whl "${WHEELS[@]}"
du -sh .whl
