// Small device helpers shared by the kernel headers.
#pragma once

#include <cmath>

#include "common.cuh"

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

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // identical on every lane
}

}  // namespace detail
}  // namespace cuda
}  // namespace creativity_fast
