// The ideal machine (mode "ideal", docs/theory.md §3.1): one softmax over whole images
// per sample; unit = sample b. Scalar code with nothing to specialise per instruction
// set, so it is compiled once, here, with the default target (no FMA contraction: the
// same result on every CPU), and the ISA builds' entry points (ppm_kernel.h) call it.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>

#include "cpu/ppm_api.h"

namespace creativity_fast {
namespace cpu {

template <class T>
void forward_ideal(const PpmProblem& pb, int64_t b) {
  const int64_t C = pb.C, HW = pb.H * pb.W, D = C * HW, N = pb.N;
  const T* zb = static_cast<const T*>(pb.z) + b * D;
  const T* data = static_cast<const T*>(pb.data);
  const T* logw = static_cast<const T*>(pb.logw);
  const double sg = pb.sigma[b];
  const double inv2s2 = 1.0 / (2.0 * sg * sg);
  double* acc = static_cast<double*>(std::aligned_alloc(64, (D * sizeof(double) + 63) / 64 * 64));
  for (int64_t i = 0; i < D; ++i) acc[i] = 0;
  double m = -std::numeric_limits<double>::infinity(), S = 0;
  int64_t best = -1;
  for (int64_t mu = 0; mu < N; ++mu) {
    const T* ph = data + mu * D;
    double d = 0;
    for (int64_t i = 0; i < D; ++i) {
      const double diff = double(zb[i]) - double(ph[i]);
      d += diff * diff;
    }
    double l = -d * inv2s2;
    if (logw) l += double(logw[mu]);
    if (l == -std::numeric_limits<double>::infinity()) {
      // weight 0; an image at infinite distance holds an infinity, and 0 * inf = NaN there
      // (the rule of csrc/cuda/NOTES.md, "Non-finite inputs"); a key removed by its prior
      // (finite distance) adds exact zeros, so it is skipped
      if (d == std::numeric_limits<double>::infinity())
        for (int64_t i = 0; i < D; ++i) acc[i] += 0.0 * double(ph[i]);
      continue;
    }
    if (l > m) {
      const double sc = std::exp(m - l);
      S *= sc;
      for (int64_t i = 0; i < D; ++i) acc[i] *= sc;
      m = l;
      best = mu;
    }
    const double p = std::exp(l - m);
    S += p;
    for (int64_t i = 0; i < D; ++i) acc[i] += p * double(ph[i]);
  }
  T* x0 = static_cast<T*>(pb.x0) + b * D;
  for (int64_t i = 0; i < D; ++i) x0[i] = T(acc[i] / S);
  T* lse = static_cast<T*>(pb.lse) + b * HW;
  const T lv = T(m + std::log(S));
  for (int64_t i = 0; i < HW; ++i) lse[i] = lv;
  if (pb.best)
    for (int64_t i = 0; i < HW; ++i) pb.best[b * HW + i] = best < 0 ? -1 : best * HW + i;
  std::free(acc);
}

template <class T>
void backward_ideal(const PpmProblem& pb, int64_t b) {
  const int64_t C = pb.C, HW = pb.H * pb.W, D = C * HW, N = pb.N;
  const T* zb = static_cast<const T*>(pb.z) + b * D;
  const T* gq = static_cast<const T*>(pb.grad) + b * D;
  const T* x0 = static_cast<const T*>(pb.x0_in) + b * D;
  const T* data = static_cast<const T*>(pb.data);
  const T* logw = static_cast<const T*>(pb.logw);
  const double lse = double(static_cast<const T*>(pb.lse_in)[b * HW]);
  const double sg = pb.sigma[b];
  const double inv2s2 = 1.0 / (2.0 * sg * sg);
  double* Gp = pb.grad_partial + b * D;
  if (!(lse > -std::numeric_limits<double>::infinity())) return;
  double gx0 = 0;
  for (int64_t i = 0; i < D; ++i) gx0 += double(gq[i]) * double(x0[i]);
  if (pb.grad_lse)  // every pixel's lse is the sample's log-normaliser
    for (int64_t i = 0; i < HW; ++i) gx0 -= double(static_cast<const T*>(pb.grad_lse)[b * HW + i]);
  for (int64_t mu = 0; mu < N; ++mu) {
    const T* ph = data + mu * D;
    double d = 0, gc = 0;
    for (int64_t i = 0; i < D; ++i) {
      const double diff = double(zb[i]) - double(ph[i]);
      d += diff * diff;
      gc += double(gq[i]) * double(ph[i]);
    }
    double l = -d * inv2s2;
    if (logw) l += double(logw[mu]);
    const double w = std::exp(l - lse);
    if (w == 0) continue;
    const double a = w * (gc - gx0);
    for (int64_t i = 0; i < D; ++i) Gp[i] += a * (double(ph[i]) - double(zb[i]));
  }
  for (int64_t i = 0; i < D; ++i) Gp[i] /= sg * sg;
}

template void forward_ideal<float>(const PpmProblem&, int64_t);
template void forward_ideal<double>(const PpmProblem&, int64_t);
template void backward_ideal<float>(const PpmProblem&, int64_t);
template void backward_ideal<double>(const PpmProblem&, int64_t);

}  // namespace cpu
}  // namespace creativity_fast
