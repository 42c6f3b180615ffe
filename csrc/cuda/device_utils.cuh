// Small device helpers shared by the kernel headers.
#pragma once

#include <cmath>

#include "common.cuh"

// Dynamic shared memory of a kernel as `T* name` (the CPU emulator hands out a per-block buffer).
#if defined(CF_CUDA_EMULATION)
#define CF_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(cf_emu::dynamic_shared())
#else
#define CF_DYNAMIC_SHARED(T, name)                                \
  extern __shared__ __align__(16) unsigned char cf_dynamic_smem[]; \
  T* name = reinterpret_cast<T*>(cf_dynamic_smem)
#endif

// A rarely taken device function kept out of line (so it costs no registers in its caller).
#if defined(CF_CUDA_EMULATION)
#define CF_NOINLINE
#else
#define CF_NOINLINE __noinline__
#endif

// Hides a pointer's derivation from the optimiser, so that `ptr + int offset` in a loop stays one
// 64-bit multiply-add per access instead of being re-associated into (base + offset) in 64-bit
// integer arithmetic (4 instructions) each time.
#if defined(CF_CUDA_EMULATION)
#define CF_OPAQUE_PTR(ptr) ((void)0)
#else
#define CF_OPAQUE_PTR(ptr) asm("" : "+l"(ptr))
#endif

namespace creativity_fast {
namespace cuda {
namespace detail {

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -static_cast<T>(INFINITY);
}

// exp of a logit difference (<= 0 except in the rescale of a merge, also <= 0): the
// hardware ex2 path for float (about 2 + 1.2|x| ulp, exact 0 for -inf), libm for double.
__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }
__device__ __forceinline__ double fast_exp(double x) { return exp(x); }

// Units of the logits inside the patch kernels (docs/theory.md §4): base-2 for float, so that
// log2(e) is folded into the scale 1 / (2 sigma^2) and the log prior once per query / key and
// each pair's weight is one ex2 (no multiply); natural for double (exp from libm). A state's
// maximum m converts back with lse = m * kLn2 + log(sum).
template <typename T>
struct LogitUnit;
template <>
struct LogitUnit<float> {
  static constexpr float kPerNat = 1.44269504088896341f;  // log2(e)
  static constexpr float kLn2 = 0.693147180559945309f;    // log(2)
};
template <>
struct LogitUnit<double> {
  static constexpr double kPerNat = 1.0, kLn2 = 1.0;
};

// exp of a logit difference in those units (<= 0 except in the rescale of a merge, also <= 0):
// the hardware ex2 for float (ex2.approx, 2 ulp, exact 0 for -inf), libm's exp for double.
__device__ __forceinline__ float unit_exp(float x) { return exp2f(x); }
__device__ __forceinline__ double unit_exp(double x) { return exp(x); }

// Correctly rounded float64 product that the compiler may not fuse with a following add
// (nvcc contracts a * b + c into an fma by default, even in float64): the attention kernel
// reproduces the CPU kernel's float64 rounding step by step.
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // identical on every lane
}

}  // namespace detail
}  // namespace cuda
}  // namespace creativity_fast
