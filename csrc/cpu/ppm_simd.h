// SIMD layer of the CPU kernels of patch_posterior_mean: the vector types of one
// instruction set (CF_ISA_LEVEL), the exps, lane conversions and "any lane" tests.
// Part of ppm_kernel.h: included inside an ISA build's namespace, after its target
// pragma, so nothing here may include a header (see ppm_api.h).
#pragma once

#ifndef CF_ISA_LEVEL
#error "define CF_ISA_LEVEL before including the ppm kernel headers (see ppm_kernel.h)"
#endif

#define CF_AI inline __attribute__((always_inline))

#include "cpu/vexp_f.h"  // vexp_f: the float exp (in this ISA's namespace and target)

template <class T>
struct VecT;
// Lanes per group V = doubles per native vector (8 AVX-512, 4 AVX2, 2 baseline), so
// every type below is one native register: v data lanes (T), vi int lanes of v's
// width, vd the same lanes in double (distances, logits, running maxima, outer
// sums), vdi int64 lanes of vd.
#if CF_ISA_LEVEL >= 2
#define CF_VBYTES 64
#elif CF_ISA_LEVEL == 1
#define CF_VBYTES 32
#else
#define CF_VBYTES 16
#endif
template <>
struct VecT<float> {
  static constexpr int V = CF_VBYTES / 8;
  typedef float v __attribute__((vector_size(CF_VBYTES / 2)));
  typedef int32_t vi __attribute__((vector_size(CF_VBYTES / 2)));
  typedef double vd __attribute__((vector_size(CF_VBYTES)));
  typedef int64_t vdi __attribute__((vector_size(CF_VBYTES)));
  static constexpr float kExpLo = kVexpLoF;  // vexp_f.h: exp(-87) > FLT_MIN, no denormals
};
template <>
struct VecT<double> {
  static constexpr int V = CF_VBYTES / 8;
  typedef double v __attribute__((vector_size(CF_VBYTES)));
  typedef int64_t vi __attribute__((vector_size(CF_VBYTES)));
  typedef double vd __attribute__((vector_size(CF_VBYTES)));
  typedef int64_t vdi __attribute__((vector_size(CF_VBYTES)));
  static constexpr double kExpLo = -708.0;  // exp(-708) > DBL_MIN
};
// Keys are pruned when every lane's (double) exponent is below kExpLo - 0.5: after
// rounding to T such an exponent is still below kExpLo, so vexp would return exactly
// 0 for it. Pruning therefore never changes a bit of the result.
template <class T>
CF_AI double prune_below() {
  return double(VecT<T>::kExpLo) - 0.5;
}

template <class VV, class S>
CF_AI VV splat(S s) {
  return VV{} + s;
}

// ---------------------------------------------------------------------------
// exp for arguments <= 0 (all call sites: logit minus a running max or lse).
// Returns exactly 0 below kExpLo (that is the pruning contract) and exactly 1 at 0:
// vexp_f (float, vexp_f.h) and vexp_d (double).

template <class VD>
CF_AI VD vexp_d(VD x) {
  typedef int64_t VI __attribute__((vector_size(sizeof(VD))));
  const VD lo = splat<VD>(VecT<double>::kExpLo);
  const VD xc = x < lo ? lo : x;
  const VD magic = splat<VD>(6755399441055744.0);  // 1.5 * 2^52
  const VD t = xc * 1.4426950408889634074 + magic;
  const VD n = t - magic;
  const VI ni = (VI)t - (VI)magic;
  VD r = xc - n * 6.93145751953125E-1;
  r = r - n * 1.42860682030941723212E-6;
  // Taylor series to degree 13 on |r| <= ln2/2: truncation < 1e-17.
  VD y = splat<VD>(1.0 / 6227020800.0);
  y = y * r + 1.0 / 479001600.0;
  y = y * r + 1.0 / 39916800.0;
  y = y * r + 1.0 / 3628800.0;
  y = y * r + 1.0 / 362880.0;
  y = y * r + 1.0 / 40320.0;
  y = y * r + 1.0 / 5040.0;
  y = y * r + 1.0 / 720.0;
  y = y * r + 1.0 / 120.0;
  y = y * r + 1.0 / 24.0;
  y = y * r + 1.0 / 6.0;
  y = y * r + 0.5;
  y = y * r + 1.0;
  y = y * r + 1.0;
  const VI bits = (ni + 1023) << 52;
  const VD res = y * (VD)bits;
  return x < lo ? VD{} : res;
}

template <class W>
CF_AI W vexp_tag(W x, float) {
  return vexp_f(x);
}
template <class W>
CF_AI W vexp_tag(W x, double) {
  return vexp_d(x);
}
CF_AI VecT<float>::v vexp(VecT<float>::v x) { return vexp_f(x); }
CF_AI VecT<double>::v vexp(VecT<double>::v x) { return vexp_d(x); }

// Lane-wise conversions between v (T lanes) and vd (double lanes). GCC splits the
// 8 x float -> 8 x double convertvector into four instructions; AVX-512 has one.
template <class T>
CF_AI typename VecT<T>::vd to_vd(typename VecT<T>::v x) {
#if CF_ISA_LEVEL >= 2
  if constexpr (sizeof(T) == 4) return (typename VecT<T>::vd)_mm512_cvtps_pd((__m256)x);
#endif
  return __builtin_convertvector(x, typename VecT<T>::vd);
}
template <class T>
CF_AI typename VecT<T>::v to_v(typename VecT<T>::vd x) {
#if CF_ISA_LEVEL >= 2
  if constexpr (sizeof(T) == 4) return (typename VecT<T>::v)_mm512_cvtpd_ps((__m512d)x);
#endif
  return __builtin_convertvector(x, typename VecT<T>::v);
}

// In-place exp of n * V values of T (n vectors of V lanes), CF_VBYTES at a time.
template <class T>
CF_AI void vexp_array(T* x, int nvec) {
  typedef T w __attribute__((vector_size(CF_VBYTES)));
  constexpr int per = int(CF_VBYTES / sizeof(T)) / VecT<T>::V;  // vectors per wide vector
  int i = 0;
  for (; i + per <= nvec; i += per) {
    w* p = reinterpret_cast<w*>(x + size_t(i) * VecT<T>::V);
    *p = vexp_tag(*p, T(0));
  }
  for (; i < nvec; ++i) {
    typename VecT<T>::v* p = reinterpret_cast<typename VecT<T>::v*>(x + size_t(i) * VecT<T>::V);
    *p = vexp(*p);
  }
}

// ---------------------------------------------------------------------------
// "any lane" tests

#if CF_ISA_LEVEL >= 2
CF_AI bool any_gt(VecT<float>::v a, VecT<float>::v b) {
  return _mm256_cmp_ps_mask((__m256)a, (__m256)b, _CMP_GT_OQ) != 0;
}
CF_AI bool any_ge(VecT<float>::v a, VecT<float>::v b) {
  return _mm256_cmp_ps_mask((__m256)a, (__m256)b, _CMP_GE_OQ) != 0;
}
CF_AI bool any_gt(VecT<double>::v a, VecT<double>::v b) {
  return _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GT_OQ) != 0;
}
CF_AI bool any_ge(VecT<double>::v a, VecT<double>::v b) {
  return _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GE_OQ) != 0;
}
// Some lane not provably below b: >= b, or NaN (a NaN must reach the sums, not be pruned).
CF_AI bool any_not_below(VecT<double>::v a, VecT<double>::v b) {
  return _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_NLT_UQ) != 0;
}
#else
template <class VI>
CF_AI bool any_true(VI m) {
  if constexpr (sizeof(VI) == 32) {
    union {
      VI v;
      __m256i h;
    } u;
    u.v = m;
    return !_mm256_testz_si256(u.h, u.h);
  } else if constexpr (sizeof(VI) == 16) {
    union {
      VI v;
      __m128i h;
    } u;
    u.v = m;
    return _mm_movemask_epi8(u.h) != 0;
  } else {
    static_assert(sizeof(VI) == 8, "unexpected vector size");
    union {
      VI v;
      uint64_t h;
    } u;
    u.v = m;
    return u.h != 0;
  }
}
template <class VV>
CF_AI bool any_gt(VV a, VV b) {
  return any_true(a > b);
}
template <class VV>
CF_AI bool any_ge(VV a, VV b) {
  return any_true(a >= b);
}
// Some lane not provably below b: >= b, or NaN (a NaN must reach the sums, not be pruned).
template <class VV>
CF_AI bool any_not_below(VV a, VV b) {
  return any_true(~(a < b));
}
#endif

// Any lane of an integer (comparison-mask) vector non-zero.
template <class VI>
CF_AI bool any_nonzero(VI m) {
  VI acc = m;
  bool r = false;
  for (size_t i = 0; i < sizeof(VI) / sizeof(acc[0]); ++i) r = r || acc[i] != 0;
  return r;
}

CF_AI int imin(int a, int b) { return a < b ? a : b; }
CF_AI int imax(int a, int b) { return a > b ? a : b; }
CF_AI int floordiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
