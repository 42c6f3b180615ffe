// The kernels' float32 exp, shared by ppm_simd.h and bench/microbench.cpp (so the
// benchmark's exp floor is measured on this very code). Include <cstdint> first: this
// header includes nothing, because ppm_simd.h is included inside a per-ISA namespace.
#pragma once

// exp(x) <= kVexpLoF flushes to exactly 0: exp(-87) > FLT_MIN, so no denormals (the
// pruning contract of ppm_simd.h relies on this exact 0).
constexpr float kVexpLoF = -87.0f;

// exp for arguments <= 0 on any GCC float vector type VF (Cephes expf polynomial with a
// Cody-Waite split of ln 2); exactly 0 below kVexpLoF and exactly 1 at 0.
template <class VF>
inline __attribute__((always_inline)) VF vexp_f(VF x) {
  typedef int32_t VI __attribute__((vector_size(sizeof(VF))));
  const VF lo = VF{} + kVexpLoF;
  const VF xc = x < lo ? lo : x;
  const VF magic = VF{} + 12582912.0f;  // 1.5 * 2^23: round to nearest integer
  const VF t = xc * 1.44269504088896341f + magic;
  const VF n = t - magic;
  const VI ni = (VI)t - (VI)magic;  // the integer n, read from the mantissa bits
  VF r = xc - n * 0.693359375f;     // Cody-Waite split of ln 2 (Cephes expf)
  r = r - n * -2.12194440e-4f;
  const VF z = r * r;
  VF y = VF{} + 1.9875691500E-4f;
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * z + r + 1.0f;
  const VI bits = (ni + 127) << 23;
  const VF res = y * (VF)bits;
  return x < lo ? VF{} : res;
}
