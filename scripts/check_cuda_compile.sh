#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with nvcc for sm_80 (Ampere) and sm_90 (Hopper), with the
# flags torch's CUDAExtension uses, to object files in a temporary directory. Needs nvcc
# and an installed torch (its headers; a CPU-only torch works), no GPU. Exit status is
# non-zero if any file fails to compile (or nvcc / torch is missing: 2).
#
#   scripts/check_cuda_compile.sh            # all files, both architectures
#   VERBOSE=1 scripts/check_cuda_compile.sh  # also print ptxas register / shared-memory use
#   NVCC=/path/to/nvcc PYTHON=/path/to/python scripts/check_cuda_compile.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; fi
if [ -z "$NVCC" ]; then echo "check_cuda_compile: nvcc not found (set NVCC or CUDA_HOME)" >&2; exit 2; fi
PYTHON="${PYTHON:-$(command -v python || command -v python3 || true)}"
if [ -z "$PYTHON" ]; then echo "check_cuda_compile: python not found" >&2; exit 2; fi

if ! TORCH_INFO="$("$PYTHON" - <<'PY'
import os, sysconfig
import torch
from torch.utils.cpp_extension import include_paths
paths = include_paths()
print(" ".join("-I" + p for p in paths))
print("-I" + sysconfig.get_paths()["include"])
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
# CPU-only wheels ship the c10/cuda headers without the generated cuda_cmake_macros.h
print(int(any(os.path.exists(os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for p in paths)))
PY
)"; then
  echo "check_cuda_compile: cannot import torch with $PYTHON" >&2
  exit 2
fi
TORCH_INC="$(sed -n 1p <<<"$TORCH_INFO")"
PY_INC="$(sed -n 2p <<<"$TORCH_INFO")"
ABI="$(sed -n 3p <<<"$TORCH_INFO")"
HAS_MACROS="$(sed -n 4p <<<"$TORCH_INFO")"

FLAGS=(
  -std=c++17 -O3 --use_fast_math -lineinfo
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
  -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H "-D_GLIBCXX_USE_CXX11_ABI=$ABI"
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
  -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -Xcompiler -fPIC
  -DCF_WITH_CUDA -I"$ROOT/csrc"
)
if [ "$HAS_MACROS" = "0" ]; then FLAGS+=(-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE); fi
if [ "${VERBOSE:-0}" = "1" ]; then FLAGS+=(-Xptxas -v); else FLAGS+=(-w); fi
# shellcheck disable=SC2206
INCS=($TORCH_INC $PY_INC)

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
shopt -s nullglob
FILES=("$ROOT"/csrc/cuda/*.cu)
if [ "${#FILES[@]}" -eq 0 ]; then echo "check_cuda_compile: no csrc/cuda/*.cu files" >&2; exit 1; fi

echo "nvcc: $("$NVCC" --version | tail -n 1)"
FAILED=0
for f in "${FILES[@]}"; do
  name="$(basename "$f" .cu)"
  start=$SECONDS
  if "$NVCC" -c "$f" -o "$OUT/$name.o" "${FLAGS[@]}" "${INCS[@]}" >"$OUT/$name.log" 2>&1; then
    echo "OK    $name.cu  (sm_80, sm_90; $((SECONDS - start)) s)"
    if [ "${VERBOSE:-0}" = "1" ]; then grep -E "Compiling entry|Used [0-9]+ registers" "$OUT/$name.log" || true; fi
  else
    echo "FAIL  $name.cu"
    cat "$OUT/$name.log"
    FAILED=1
  fi
done
if [ "$FAILED" -ne 0 ]; then echo "check_cuda_compile: compile errors" >&2; exit 1; fi
echo "check_cuda_compile: all ${#FILES[@]} files compile for sm_80 and sm_90"
