#!/usr/bin/env bash
# Install what attnc needs to build, idempotently: LLVM/MLIR 22 from Debian (static
# libraries for melior/mlir-sys and inkwell), clang-22 (libclang for bindgen), the
# compression libraries LLVM links against, LLVM's OpenMP runtime (compiled code's
# parallel loops), OpenBLAS (the benchmarks' GEMM reference) and a C compiler (the
# test that links a compiled object into a C program). Safe to run again: it only installs
# what is missing.
set -euo pipefail

packages=(llvm-22-dev libmlir-22-dev libpolly-22-dev clang-22 zlib1g-dev libzstd-dev libffi-dev libomp-22-dev libopenblas-dev gcc)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  echo "setup: installing python3 and pip (the reference tests and ptxas need them)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-pip
fi

# ptxas, NVIDIA's PTX assembler (PyPI's nvcc wheel, no GPU needed): the GPU tests
# assemble the emitted PTX with it for sm_80 and sm_90. Optional: without it those
# checks are skipped with a note.
if command -v python3 >/dev/null 2>&1 && ! python3 -c "import nvidia.cuda_nvcc" 2>/dev/null; then
  echo "setup: installing ptxas (pip nvidia-cuda-nvcc-cu12)"
  python3 -m pip install -q nvidia-cuda-nvcc-cu12 2>/dev/null \
    || python3 -m pip install -q --break-system-packages nvidia-cuda-nvcc-cu12 \
    || echo "setup: ptxas not installed; the GPU tests will not assemble PTX"
fi

# numpy and safetensors: the independent reference models of tests/hf_reference.rs
# (tests/reference/hf_reference.py) are written in numpy.
if command -v python3 >/dev/null 2>&1 && ! python3 -c "import numpy, safetensors" 2>/dev/null; then
  echo "setup: installing numpy and safetensors (pip)"
  python3 -m pip install -q numpy safetensors 2>/dev/null \
    || python3 -m pip install -q --break-system-packages numpy safetensors
fi

if [ ! -x /usr/lib/llvm-22/bin/llvm-config ]; then
  echo "setup: /usr/lib/llvm-22/bin/llvm-config is missing after the install" >&2
  exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed; install Rust with rustup first" >&2
  exit 1
fi
