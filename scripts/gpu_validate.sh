#!/usr/bin/env bash
# One-shot validation of the CUDA kernels on their first GPU (csrc/cuda/NOTES.md), planned for
# about 15 minutes of an H100/H200 in all. Everything it writes goes under $OUT (default
# ./gpu_validate_out); it never resets or reconfigures the GPU. Stages, in order of value
# (each under its own time limit; a stage that fails is logged and the next one runs; once
# the overall deadline is near the remaining stages are skipped):
#   1. device       nvidia-smi -q (read only)
#   2. build        FORCE_CUDA=1 build in place for sm_90 (or the GPU's own arch), with
#                   -Xptxas -v; then ptxas: the kernel files alone with -Xptxas -v (registers,
#                   spills, shared memory per kernel instantiation -> ptxas.log)
#   3. tests        tests/test_cuda.py, test_cuda_attention.py, test_op_errors.py on the device
#                   (the emulator cases off: CREATIVITY_FAST_CUDA_EMULATOR=0)
#   4. memcheck     compute-sanitizer memcheck on bench/gpu_driver.py (every kernel instantiation once)
#   5. gpu_check    bench/gpu_check.py --no-build: correctness, precision switch, accuracy at
#                   N = 60,000 (B = 2, P in {3, 7}, fp32 and tf32 vs the GPU's float64), timing
#                   (B in {1, 8, 64}, P in {3, 7, 15}, forward, warm backward, attention)
#   6. racecheck    compute-sanitizer racecheck on the driver
#   7. synccheck    compute-sanitizer synccheck on the driver
#   8. ncu          one Nsight Compute report of forward_kernel (speed of light, occupancy,
#                   warp state / stall reasons, launch statistics) -> forward.ncu-rep
# summary.txt has one line per stage (exit status, seconds); each stage's output is <stage>.log.
#
#   OUT=/tmp/out scripts/gpu_validate.sh
#   DEADLINE_S=540 ARCH=9.0 scripts/gpu_validate.sh     # overall budget (s; default 540), target arch
#   STAGES="memcheck racecheck synccheck ncu" scripts/gpu_validate.sh   # only these stages (a second
#                                                         # call after a first one hit its deadline)
#   DRY_RUN=1 scripts/gpu_validate.sh                    # no GPU: print the plan, run the CPU parts
# Where one command may run at most 10 minutes, run it twice on the same machine (the build
# stays): STAGES="device build ptxas tests memcheck", then
# STAGES="gpu_check racecheck synccheck ncu" (gpu_check's timing is bounded by --max-seconds).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu_validate_out}"
DEADLINE_S="${DEADLINE_S:-540}"
STAGES="${STAGES:-device build ptxas tests memcheck gpu_check racecheck synccheck ncu}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
DRY_RUN="${DRY_RUN:-0}"
mkdir -p "$OUT"
cd "$ROOT" || exit 2
T0=$SECONDS
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

find_tool() {  # name: PATH, $CUDA_HOME, /usr/local/cuda, Nsight installs
  local name="$1" c
  c="$(command -v "$name" 2>/dev/null)" && { echo "$c"; return 0; }
  for c in "${CUDA_HOME:-/usr/local/cuda}/bin/$name" "${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer/$name" \
    /usr/local/cuda/bin/"$name" /opt/nvidia/nsight-compute/*/"$name" /usr/local/cuda/nsight-compute*/"$name"; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

# stage NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, one summary line.
stage() {
  local name="$1" limit="$2"
  shift 2
  case " $STAGES " in
    *" $name "*) ;;
    *) echo "$name: not selected (STAGES)" >>"$SUMMARY"; return 0 ;;
  esac
  local left=$((DEADLINE_S - (SECONDS - T0)))
  if [ "$left" -lt 30 ]; then
    echo "$name: skipped (deadline)" | tee -a "$SUMMARY"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/commands.txt"
  if [ "$DRY_RUN" = "1" ]; then
    echo "$name: dry run" | tee -a "$SUMMARY"
    return 0
  fi
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - start)) s$([ $rc -eq 124 ] && echo ' (time limit)')" | tee -a "$SUMMARY"
  return 0
}

SAN="$(find_tool compute-sanitizer || true)"
NCU="$(find_tool ncu || true)"
{
  echo "gpu_validate: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "python: $PYTHON; compute-sanitizer: ${SAN:-absent}; ncu: ${NCU:-absent}; deadline ${DEADLINE_S}s"
} | tee "$OUT/environment.txt"

# 1. device (read only)
stage device 30 nvidia-smi -q

# 2. build: the GPU's own architecture (ARCH, default from torch; sm_90 on H100/H200), -Xptxas -v
ARCH="${ARCH:-$("$PYTHON" -c 'import torch; M, m = torch.cuda.get_device_capability(); print(f"{M}.{m}")' 2>/dev/null || echo 9.0)}"
stage build 420 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  NVCC_APPEND_FLAGS="-Xptxas -v" "$PYTHON" setup.py build_ext --inplace
# ptxas -v of the kernel files for this architecture alone (the build log has it too when nvcc
# honours NVCC_APPEND_FLAGS): registers, spills, shared memory per kernel instantiation
SM="sm_${ARCH/./}"
stage ptxas 120 bash -c "for f in csrc/cuda/patch_kernels.cu csrc/cuda/ideal_kernels.cu csrc/cuda/patch_argmax_attention.cu; do \
  \"\${NVCC:-nvcc}\" -cubin -arch=$SM -O3 --use_fast_math -std=c++17 --expt-relaxed-constexpr -Icsrc -Xptxas -v \
  \"\$f\" -o /dev/null || exit 1; done"

# 3. the CUDA tests on the device
stage tests 240 env CREATIVITY_FAST_CUDA_EMULATOR=0 PYTHONPATH="$ROOT" "$PYTHON" -m pytest -q -p no:cacheprovider -rf \
  tests/test_cuda.py tests/test_cuda_attention.py tests/test_op_errors.py

# 4. memcheck on every kernel instantiation (the caching allocator off, so that an access past
#    a tensor's end is outside any allocation)
if [ -n "$SAN" ]; then
  stage memcheck 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONPATH="$ROOT" \
    "$SAN" --tool memcheck --leak-check no --error-exitcode 3 "$PYTHON" bench/gpu_driver.py
else
  echo "memcheck: compute-sanitizer not found" | tee -a "$SUMMARY"
fi

# 5. correctness, accuracy at scale, timing
stage gpu_check 330 env PYTHONPATH="$ROOT" "$PYTHON" bench/gpu_check.py --no-build --max-seconds 200

# 6-7. racecheck and synccheck (slower instrumentation: the same small driver)
if [ -n "$SAN" ]; then
  stage racecheck 150 env PYTHONPATH="$ROOT" "$SAN" --tool racecheck --racecheck-report analysis \
    --error-exitcode 3 "$PYTHON" bench/gpu_driver.py
  stage synccheck 120 env PYTHONPATH="$ROOT" "$SAN" --tool synccheck --error-exitcode 3 "$PYTHON" bench/gpu_driver.py
fi

# 8. one Nsight Compute report of the forward kernel
if [ -n "$NCU" ]; then
  stage ncu 120 env PYTHONPATH="$ROOT" "$NCU" --target-processes all -k regex:forward_kernel -c 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section LaunchStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    -f -o "$OUT/forward" "$PYTHON" bench/gpu_driver.py --ncu-forward
  if [ -f "$OUT/forward.ncu-rep" ]; then
    "$NCU" --import "$OUT/forward.ncu-rep" --page details >"$OUT/forward_ncu.txt" 2>&1 || true
  fi
else
  echo "ncu: Nsight Compute not found" | tee -a "$SUMMARY"
fi

echo "total $((SECONDS - T0)) s" | tee -a "$SUMMARY"
if [ "$DRY_RUN" = "1" ]; then
  # what can run without a GPU: the scripts' own logic
  "$PYTHON" bench/gpu_check.py --dry-run >"$OUT/gpu_check_dry_run.log" 2>&1 && echo "gpu_check --dry-run: ok" \
    || echo "gpu_check --dry-run: FAILED (see $OUT/gpu_check_dry_run.log)"
  PYTHONPATH="$ROOT" "$PYTHON" bench/gpu_driver.py --emulator >"$OUT/gpu_driver_emulator.log" 2>&1 \
    && echo "gpu_driver --emulator: ok" || echo "gpu_driver --emulator: FAILED (see $OUT/gpu_driver_emulator.log)"
fi
grep -q -E "exit [1-9]" "$SUMMARY" && exit 1
exit 0
