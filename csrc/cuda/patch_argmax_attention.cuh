// Kernel of the dataset-wide argmax attention on CUDA (docs/theory.md §3.4, §4); the launcher is
// patch_argmax_attention.cu, the host flow attention() in ops_impl.cuh, the CPU kernel
// csrc/cpu/patch_argmax_attention.cpp. See NOTES.md for the design and the cost.
//
// The scores are those of the CPU kernel, float64 operation for operation: every operation
// that enters a score is a function of csrc/attention_rules.h, shared with the CPU kernel
// (products kept out of fused multiply-adds), so every score is bitwise the CPU kernel's
// and y* is identical for any input, ties included:
//   s(x, y) = <Pi_x - c, Pi_y - c> = G(x, y) - a(x) - a(y) + |c|^2    (x before y in flat order)
//   s(x, x) = G(x, x) - 2 a(x) + |c|^2
//   a(u) = <c, Pi_u>,  G(x, x + d) = box sum over x's P x P window of Q_d(u) = sum_ch img(u) img(u + d),
// the box sum read from a 2-D prefix-sum table of Q_d over the rectangle of pixels u with u
// and u + d inside the image (built row by row, then column by column, exactly as the CPU
// kernel's sequential loop). d runs over one half plane (d > 0 in flat order) and each score
// serves both pairs (x, x + d) and (x + d, x).
//
// Work item = (image i, split s): the displacements [s*per, (s+1)*per) of the list p.disp
// (split 0 also d = 0). A block loops over work items; per item:
//   1. image -> scratch (float64), per-pixel states initialised, a(u) per pixel;
//   2. per round of K displacements: Q_d into K tables (all threads), row scans (one thread
//      per table row), column scans (one thread per table column), then every thread
//      updates the pixels it owns (p = tid + k * blockDim): as the later pixel of the pair
//      (p - d, p), then as the earlier one (p, p + d) -- the CPU kernel's order per row --
//      reading only its own states, so nothing is shared but the tables and a(u);
//   3. the per-pixel states are written as the item's partial state.
// Phases: 0 hard argmax (strict >, lowest y on equal scores: the same rule as the CPU
// kernel, independent of the visiting order); 1 the same plus the online row max / sum of
// exp(s / tau); 2 (lse of every row known) column sums: the thread owning key p adds
// exp(s / tau - lse(x)) for the rows x = p -+ d. The splits are merged by the host flow.
//
// Scratch (doubles): img [C*HW] | a [HW] | states [1 or 3][HW] | tables [K][(H+1)(W+1)] |
// arg [HW] int32: in dynamic shared memory when it fits, else a global buffer per block.
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

#include <cmath>
#include <cstdint>

#include "attention_rules.h"
#include "common.cuh"
#include "device_utils.cuh"

namespace creativity_fast {
namespace cuda {
namespace detail {

using attention_rules::imax;
using attention_rules::imin;

// Visit the pair (row x = own pixel, key y) with score s: phases 0 and 1.
template <int PHASE>
__device__ __forceinline__ void attention_visit_row(int x, int y, double s, double tau, double* best, int* arg,
                                                    double* rmax, double* rsum) {
  if (attention_rules::takes_over(s, y, best[x], arg[x])) {
    best[x] = s;
    arg[x] = y;
  }
  if (PHASE == 1) attention_rules::lse_push(s / tau, rmax[x], rsum[x]);
}

template <typename T, int PHASE>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(const AttentionParams<T> p) {
  CF_DYNAMIC_SHARED(double, smem);
  const int C = p.C, H = p.H, W = p.W, P = p.P, m = (P - 1) / 2;
  const int HW = H * W, tstride = (H + 1) * (W + 1);
  const int tid = threadIdx.x, nt = blockDim.x;
  const bool soft = p.tau > 0;
  double* base = p.scratch != nullptr ? p.scratch + static_cast<int64_t>(blockIdx.x) * p.scratch_stride : smem;
  double* img = base;
  double* a = img + static_cast<int64_t>(C) * HW;
  double* st0 = a + HW;                      // best score (phases 0, 1) | column sums (phase 2)
  double* st1 = st0 + HW;                    // row max of s / tau (phase 1) | row lse (phase 2)
  double* st2 = st1 + HW;                    // row sum (phase 1)
  double* tab = st0 + (soft ? 3 : 1) * HW;   // K tables
  int* arg = reinterpret_cast<int*>(tab + static_cast<int64_t>(p.K) * tstride);

  // |c|^2 in the CPU kernel's order (every thread; C*P*P products once per block).
  double cc = 0.0;
  for (int e = 0; e < C * P * P; ++e) cc += attention_rules::mul(p.center[e], p.center[e]);

  const int64_t items = static_cast<int64_t>(p.M) * p.nsplit;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t im = item / p.nsplit;
    const int split = static_cast<int>(item % p.nsplit);
    __syncthreads();  // the previous item is done with the scratch
    const T* src = p.images + im * C * HW;
    for (int e = tid; e < C * HW; e += nt) img[e] = static_cast<double>(src[e]);
    for (int x = tid; x < HW; x += nt) {
      if (PHASE == 2) {
        st0[x] = 0.0;
        st1[x] = p.lse[im * HW + x];
      } else {
        st0[x] = neg_inf<double>();
        arg[x] = -1;
        if (PHASE == 1) {
          st1[x] = neg_inf<double>();
          st2[x] = 0.0;
        }
      }
    }
    __syncthreads();
    // a(u) = <c, Pi_u>: offsets inside the image only.
    for (int x = tid; x < HW; x += nt) a[x] = attention_rules::center_dot(img, p.center, C, H, W, P, x / W, x % W);
    __syncthreads();

    // d = 0: s(x, x) = <Pi_x, Pi_x> - 2 a(x) + |c|^2.
    if (p.self && split == 0) {
      for (int x = tid; x < HW; x += nt) {
        const double g = attention_rules::self_window_dot(img, C, H, W, m, x / W, x % W);
        const double s = attention_rules::self_score(g, a[x], cc);
        if (PHASE == 2)
          st0[x] += attention_rules::soft_weight(s, p.tau, st1[x]);
        else
          attention_visit_row<PHASE>(x, x, s, p.tau, st0, arg, st1, st2);
      }
    }

    const int d0 = split * p.per, d1 = imin(p.ndisp, d0 + p.per);
    for (int k0 = d0; k0 < d1; k0 += p.K) {  // sass: tile=K*2*AVG_HW/THREADS
      const int kc = imin(p.K, d1 - k0);
      const int* dk = p.disp + 2 * k0;
      __syncthreads();  // the tables of the previous round are consumed
      // Row prefix sums of Q_d(u) at table entry (i+1, j+1), zero first row and column: one
      // thread per table row computes the row's products and their running sum in the CPU
      // kernel's order (acc = 0, then acc += Q(i, j) for j = 0, 1, ...), so the table is the
      // one the separate product and row-scan passes gave, without a division per entry.
      for (int e = tid; e < kc * (H + 1); e += nt) {  // sass: trips=K*(H+1)/THREADS
        const int k = e / (H + 1), i1 = e - k * (H + 1);
        const int dr = dk[2 * k], dc = dk[2 * k + 1];
        const int h = H - dr, w = W - (dc < 0 ? -dc : dc), pw = w + 1;
        if (i1 > h) continue;
        double* row = tab + k * tstride + i1 * pw;
        row[0] = 0.0;
        if (i1 == 0) {
          for (int j = 1; j <= w; ++j) row[j] = 0.0;  // sass: trips=AVG_W/(H+1)
          continue;
        }
        const int u0 = (i1 - 1) * W + imax(0, -dc), off = dr * W + dc;
        double acc = 0.0;
        for (int j = 1; j <= w; ++j) {  // sass: trips=AVG_HW/(H+1)
          acc += attention_rules::displaced_product(img, C, HW, u0 + j - 1, u0 + j - 1 + off);
          row[j] = acc;
        }
      }
      __syncthreads();
      // Column accumulation: S(i+1, j+1) = S(i, j+1) + row.
      for (int e = tid; e < kc * W; e += nt) {  // sass: trips=K*W/THREADS
        const int k = e / W, j = e % W;
        const int dr = dk[2 * k], dc = dk[2 * k + 1];
        const int h = H - dr, w = W - (dc < 0 ? -dc : dc), pw = w + 1;
        if (j >= w) continue;
        double* col = tab + k * tstride + (j + 1);
        for (int i = 0; i < h; ++i) col[(i + 1) * pw] = col[i * pw] + col[(i + 1) * pw];  // sass: trips=AVG_H
      }
      __syncthreads();
      // Pairs of the own pixels: (p, p - d) then (p, p + d); the score always takes the
      // earlier pixel of the pair as x (its table position, a(x) subtracted first).
      for (int x = tid; x < HW; x += nt) {  // sass: trips=HW/THREADS
        const int r = x / W, c = x % W;
        for (int k = 0; k < kc; ++k) {  // sass: trips=K
          const int dr = dk[2 * k], dc = dk[2 * k + 1];
          const int h = H - dr, w = W - (dc < 0 ? -dc : dc), c0 = imax(0, -dc);
          const double* S = tab + k * tstride;
          const int off = dr * W + dc;
          // x as the later pixel: partner x - d at (r - dr, c - dc).
          if (r - dr >= 0 && c - dc >= 0 && c - dc < W) {
            const int y = x - off;
            const double g = attention_rules::window_sum(S, h, w, m, r - dr, c - dc - c0);
            const double s = attention_rules::pair_score(g, a[y], a[x], cc);
            if (PHASE == 2)
              st0[x] += attention_rules::soft_weight(s, p.tau, st1[y]);
            else
              attention_visit_row<PHASE>(x, y, s, p.tau, st0, arg, st1, st2);
          }
          // x as the earlier pixel: partner x + d at (r + dr, c + dc).
          if (r + dr < H && c + dc >= 0 && c + dc < W) {
            const int y = x + off;
            const double g = attention_rules::window_sum(S, h, w, m, r, c - c0);
            const double s = attention_rules::pair_score(g, a[x], a[y], cc);
            if (PHASE == 2)
              st0[x] += attention_rules::soft_weight(s, p.tau, st1[y]);
            else
              attention_visit_row<PHASE>(x, y, s, p.tau, st0, arg, st1, st2);
          }
        }
      }
    }

    // The item's partial state (each thread its own pixels).
    const int64_t o = (static_cast<int64_t>(split) * p.M + im) * HW;
    for (int x = tid; x < HW; x += nt) {
      if (PHASE == 2) {
        p.pcol[o + x] = st0[x];
      } else {
        p.pbest[o + x] = st0[x];
        p.parg[o + x] = arg[x];
        if (PHASE == 1) {
          p.pmax[o + x] = st1[x];
          p.psum[o + x] = st2[x];
        }
      }
    }
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace creativity_fast
