// The arithmetic of the dataset-wide argmax attention (docs/theory.md §3.4), shared by the CPU
// kernel (cpu/patch_argmax_attention.cpp), the CUDA kernel
// (cuda/patch_argmax_attention.cuh) and its CPU emulator. Both kernels call these
// functions for every float64 operation that enters a score, so a score is the same
// operations in the same order on either device and y* (ties included) is identical;
// only the loop structure around them differs (sequential on the CPU, threads and
// barriers on the GPU).
//
// With zero-extended P x P patches Pi (half-width m) and the embedding Pi - c:
//   s(x, y) = <Pi_x - c, Pi_y - c> = G(x, y) - a(x) - a(y) + |c|^2   (x the earlier pixel)
//   s(x, x) = G(x, x) - 2 a(x) + |c|^2
//   a(u) = <c, Pi_u>,  G(x, x + d) = window sum around x of Q_d(u) = sum_ch img(u) img(u + d),
// the window sum read from a 2-D prefix table of Q_d over the rectangle of pixels u with
// u and u + d inside the image. Images are float64 [C][H][W], the centre [C][P][P].
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CF_ATTN_FN __host__ __device__ __forceinline__
#else
#define CF_ATTN_FN inline
#endif

namespace creativity_fast {
namespace attention_rules {

CF_ATTN_FN int imin(int a, int b) { return a < b ? a : b; }
CF_ATTN_FN int imax(int a, int b) { return a > b ? a : b; }

// a * b, never contracted into a fused multiply-add (nvcc contracts even in float64;
// the CPU build has no FMA in this translation unit).
CF_ATTN_FN double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

CF_ATTN_FN double exp_(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// Displacement d = (dr, dc) (one half plane: dr > 0, or dr == 0 and dc > 0) is skipped
// when its Chebyshev length is under the exclusion radius.
CF_ATTN_FN bool excluded(int dr, int dc, int exclude) { return imax(dr, dc < 0 ? -dc : dc) < exclude; }

// a(u) = <c, Pi_u> at pixel (r, c): only offsets that land inside the image contribute.
CF_ATTN_FN double center_dot(const double* img, const double* center, int C, int H, int W, int P, int r,
                             int c) {
  const int m = (P - 1) / 2;
  const int or0 = imax(-m, -r), or1 = imin(m, H - 1 - r);
  const int oc0 = imax(-m, -c), oc1 = imin(m, W - 1 - c);
  double acc = 0.0;
  for (int ch = 0; ch < C; ++ch) {
    const double* im = img + static_cast<int64_t>(ch) * H * W;
    const double* ce = center + static_cast<int64_t>(ch) * P * P;
    for (int orr = or0; orr <= or1; ++orr)
      for (int oc = oc0; oc <= oc1; ++oc) acc += mul(ce[(orr + m) * P + (oc + m)], im[(r + orr) * W + (c + oc)]);
  }
  return acc;
}

// G(x, x) = <Pi_x, Pi_x> at pixel (r, c).
CF_ATTN_FN double self_window_dot(const double* img, int C, int H, int W, int m, int r, int c) {
  double acc = 0.0;
  for (int ch = 0; ch < C; ++ch) {
    const double* im = img + static_cast<int64_t>(ch) * H * W;
    for (int rr = imax(0, r - m); rr <= imin(H - 1, r + m); ++rr)
      for (int cc = imax(0, c - m); cc <= imin(W - 1, c + m); ++cc) acc += mul(im[rr * W + cc], im[rr * W + cc]);
  }
  return acc;
}

// Q_d(u) = sum_ch img(u) img(v), v = u + d (flat pixel indices).
CF_ATTN_FN double displaced_product(const double* img, int C, int HW, int u, int v) {
  double q = 0.0;
  for (int ch = 0; ch < C; ++ch) q += mul(img[static_cast<int64_t>(ch) * HW + u], img[static_cast<int64_t>(ch) * HW + v]);
  return q;
}

// Window sum around (i, j) (half-width m, clipped to the h x w rectangle) from the
// prefix table S [(h + 1) x (w + 1)], S(i + 1, j + 1) = S(i, j + 1) + row prefix (i, j).
CF_ATTN_FN double window_sum(const double* S, int h, int w, int m, int i, int j) {
  const int pw = w + 1;
  const int lo_i = imax(0, i - m) * pw, hi_i = (imin(h - 1, i + m) + 1) * pw;
  const int lo_j = imax(0, j - m), hi_j = imin(w - 1, j + m) + 1;
  return S[hi_i + hi_j] - S[lo_i + hi_j] - S[hi_i + lo_j] + S[lo_i + lo_j];
}

// s(x, y) with x the earlier pixel of the pair in flat order.
CF_ATTN_FN double pair_score(double g, double a_x, double a_y, double cc) { return g - a_x - a_y + cc; }

// s(x, x).
CF_ATTN_FN double self_score(double g, double a_x, double cc) { return g - mul(2.0, a_x) + cc; }

// The argmax rule: a strictly larger score, or an equal one with a lower key index,
// takes over (so y* does not depend on the order the pairs are visited in).
template <class I>
CF_ATTN_FN bool takes_over(double s, int y, double best, I arg) {
  return s > best || (s == best && y < arg);
}

// Online log-sum-exp of v = s / tau over a row: running max rmax, sum of exp(v - rmax).
CF_ATTN_FN void lse_push(double v, double& rmax, double& rsum) {
  if (v > rmax) {
    rsum = rsum * exp_(rmax - v) + 1.0;
    rmax = v;
  } else {
    rsum += exp_(v - rmax);
  }
}

// Soft attention weight of the pair with score s in a row whose log-normaliser is lse.
CF_ATTN_FN double soft_weight(double s, double tau, double lse) { return exp_(s / tau - lse); }

}  // namespace attention_rules
}  // namespace creativity_fast
