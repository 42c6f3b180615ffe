// One-dimensional window sums, the separable passes of the box filter. Part of
// ppm_kernel.h: included inside an ISA build's namespace after ppm_simd.h.
//
// out[i] = sum_{j=0}^{L-1} src(i + s + j) for output positions i in [lo, hi], anchored:
// blocks of L outputs start at multiples of L, so a sum never depends on where [lo, hi]
// starts (tiling changes no bit). Element u (unwrapped) is `width` vectors
// get(u)[k * stride], k < width; the width dimension is independent work (rows or
// columns processed side by side), so the prefix/suffix recurrences run as `width`
// interleaved chains. emit(i, acc) gets the window sums of element i as `width`
// contiguous vectors. Windows shorter than slide_min (PpmOptions::slide_min) are summed
// directly; longer ones in O(1) per output by Gil-Werman / van Herk.
#pragma once

template <class v, class Get, class Emit>
CF_AI void window_sums(int lo, int hi, int s, int L, int width, int stride, int slide_min, Get&& get, v* suf,
                       v* pre, v* acc, Emit&& emit) {
  if (L == 0) {
    for (int i = lo; i <= hi; ++i) {
      for (int c = 0; c < width; ++c) acc[c] = v{};
      emit(i, acc);
    }
    return;
  }
  if (L < slide_min) {  // short windows: direct sums
    for (int i = lo; i <= hi; ++i) {
      const v* a = get(i + s);
      for (int c = 0; c < width; ++c) acc[c] = a[c * stride];
      for (int j = 1; j < L; ++j) {
        const v* b = get(i + s + j);
        for (int c = 0; c < width; ++c) acc[c] = acc[c] + b[c * stride];
      }
      emit(i, acc);
    }
    return;
  }
  // Gil-Werman / van Herk: window = suffix of its block + prefix of the next block.
  int i = lo;
  while (i <= hi) {
    const int k = floordiv(i, L);
    const int bs = k * L + s, be = bs + L - 1;  // unwrapped element range of block k
    const int seg_end = imin(hi, k * L + L - 1);
    const int t0 = i + s;
    {  // suffix sums for t in [t0, be], stored at suf[(t - bs) * width]
      const v* a = get(be);
      v* dst = suf + (be - bs) * width;
      for (int c = 0; c < width; ++c) dst[c] = a[c * stride];
      for (int t = be - 1; t >= t0; --t) {
        const v* x = get(t);
        v* d = suf + (t - bs) * width;
        const v* nx = d + width;
        for (int c = 0; c < width; ++c) d[c] = x[c * stride] + nx[c];
      }
    }
    for (int c = 0; c < width; ++c) pre[c] = v{};
    int u = be + 1;
    for (; i <= seg_end; ++i) {
      const int t = i + s;
      const v* sf = suf + (t - bs) * width;
      if (t == bs) {
        emit(i, sf);
      } else {
        for (; u <= t + L - 1; ++u) {
          const v* x = get(u);
          for (int c = 0; c < width; ++c) pre[c] = pre[c] + x[c * stride];
        }
        for (int c = 0; c < width; ++c) acc[c] = sf[c] + pre[c];
        emit(i, acc);
      }
    }
  }
}
