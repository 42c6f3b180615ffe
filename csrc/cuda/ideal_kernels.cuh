// Kernels of the ideal score machine on CUDA (docs/theory.md §3.1): one softmax over whole training images per query.
//
// Grid (nsplit, B); each block streams the images [s*per, (s+1)*per) of its split for one
// query b, one warp per image at a time (lane-strided over the C*H*W pixels, warp-shuffle
// reductions, no block barriers). Three passes share the kernel:
//   phase 0: per-warp running (max, sum, best) of the logits        -> partial [slot, b]
//   phase 1: acc += exp(l - lse) * phi_mu                            -> partial [slot, b, CHW]
//   phase 2: acc += exp(l - lse) * (<g, phi_mu> - <g, x0>) * phi_mu  -> partial [slot, b, CHW]
//            S   += the same coefficients                            -> partial [slot, b]
// Each warp owns its slot, so every partial is written by one warp only (no atomics), and
// the glue sums slots in a fixed order: the passes are deterministic. Keys whose weight
// underflows to exactly 0 skip the accumulation (exact pruning at low sigma).
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "device_utils.cuh"

namespace creativity_fast {
namespace cuda {
namespace detail {

template <typename T, int PHASE>
__global__ void __launch_bounds__(kThreads) ideal_kernel(const IdealParams<T> p) {
  const int split = blockIdx.x, b = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t slot = static_cast<int64_t>(split) * kIdealWarps + warp;
  const T* zb = p.z + b * p.CHW;
  const T* gb = PHASE == 2 ? p.grad + b * p.CHW : nullptr;
  const T scale = p.inv2s2[b];
  const T lse = PHASE > 0 ? p.lse[b] : T(0);
  const T gx0 = PHASE == 2 ? p.gx0[b] : T(0);
  T* accw = PHASE > 0 ? p.pacc + (slot * p.B + b) * p.CHW : nullptr;

  const T ninf = -static_cast<T>(INFINITY);
  T m = ninf, s = T(0), best = ninf, S = T(0);
  int64_t bid = -1;
  const int64_t mu0 = split * p.per;
  const int64_t mu1 = mu0 + p.per < p.N ? mu0 + p.per : p.N;
  for (int64_t mu = mu0 + warp; mu < mu1; mu += kIdealWarps) {
    const T* ph = p.data + mu * p.CHW;
    T dist = T(0), gd = T(0);
    for (int64_t e = lane; e < p.CHW; e += 32) {
      const T v = ph[e];
      const T t = zb[e] - v;
      dist = fma(t, t, dist);
      if (PHASE == 2) gd = fma(gb[e], v, gd);
    }
    dist = warp_sum(dist);
    if (PHASE == 2) gd = warp_sum(gd);
    const T l = -dist * scale + (p.logw != nullptr ? p.logw[mu] : T(0));
    if (PHASE == 0) {
      if (l > best) {  // strict: the lowest image index wins ties within the warp
        best = l;
        bid = mu;
      }
      if (l > m) {
        s *= fast_exp(m - l);
        m = l;
      }
      if (m > ninf || l != l) s += fast_exp(l - m);  // a NaN logit poisons the sum, as in the reference
    } else {
      T a = fast_exp(l - lse);
      if (PHASE == 2) a *= gd - gx0;
      S += a;
      // Skip exact zeros (pruning at low sigma), but not a key at -inf or NaN: its image may hold
      // an infinity, and 0 * inf must give NaN here as in every other path (NOTES.md, non-finite inputs).
      if (a != T(0) || !(l > ninf)) {
        for (int64_t e = lane; e < p.CHW; e += 32) accw[e] = fma(a, ph[e], accw[e]);
      }
    }
  }
  if (lane == 0) {
    const int64_t o = slot * p.B + b;
    if (PHASE == 0) {
      p.pm[o] = m;
      p.ps[o] = s;
      p.pbest[o] = best;
      p.pid[o] = bid;
    } else if (PHASE == 2) {
      p.pS[o] = S;
    }
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace creativity_fast
