// CPU kernel of creativity_fast::masked_local_posterior (schema: csrc/peers_schema.cpp).
//
// The local machine (docs/theory.md §3.6) with a per-unit mask in place of the square
// patch: each query unit q has a key support (indices + weights, CSR) on which distances
// are measured and an output support whose training values are averaged under the
// softmax. The training set is streamed image by image with an exact online
// log-sum-exp per (sample, unit): one exp per (sample, unit, image) pair, no
// [queries x keys] matrix, memory O(B*C*(U + nnz_out)) whatever N.
//
// Parallel over units (at::parallel_for), in cache-sized tiles of units that visit
// each training image once. Per unit and image the key and output values are
// gathered once into contiguous buffers and reused by all B samples. Softmax state
// is kept in double; weights are exp'd in the input precision. Pairs whose weight
// underflows to exactly 0 (logit more than 104 (float) or 746 (double) below the
// running max) are skipped: exact pruning.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace creativity_fast {
namespace {

// Logit differences below which the weight is exactly 0 (exp underflows): double
// exp(x) == 0 for x < -745.2, float expf(x) == 0 for x < -103.3.
template <typename scalar_t>
constexpr double underflow() {
  return std::is_same<scalar_t, float>::value ? -104.0 : -746.0;
}

// exp of a non-positive logit difference. For float inputs it is evaluated in float
// (relative error ~1e-7, below the inputs' own rounding; a difference under -104 gives
// an exact 0 either way, then skipped), for double inputs in double.
template <typename scalar_t>
inline double weight_exp(double delta) {
  return std::exp(delta);
}
template <>
inline double weight_exp<float>(double delta) {
  return double(std::exp(float(delta)));
}

// Units are processed in tiles; for each tile every training image is visited once and
// all the tile's units read it while it sits in L1/L2 (supports are local). State of a
// tile: the queries on its key supports and B running (max, sum, weighted sum) per unit.
constexpr int64_t kTileValues = 1 << 15;  // query + accumulator values per tile (cache budget)

template <typename scalar_t>
void masked_kernel(const scalar_t* z, const scalar_t* data, const scalar_t* sigma, const int64_t* key_ptr,
                   const int64_t* key_index, const scalar_t* key_weight, const int64_t* out_ptr,
                   const int64_t* out_index, scalar_t* mean, scalar_t* lse, int64_t B, int64_t C, int64_t U,
                   int64_t N, int64_t Q, int64_t nnz_out) {
  std::vector<double> inv2s2(B);
  for (int64_t b = 0; b < B; ++b) inv2s2[b] = 1.0 / (2.0 * double(sigma[b]) * double(sigma[b]));

  at::parallel_for(0, Q, 1, [&](int64_t q_begin, int64_t q_end) {
    std::vector<scalar_t> zg, kbuf, obuf;
    std::vector<double> mx, sum, acc;
    std::vector<int64_t> zoff, aoff;
    for (int64_t t0 = q_begin; t0 < q_end;) {
      // Grow the tile while its state stays within the cache budget (at least one unit).
      int64_t t1 = t0, values = 0;
      while (t1 < q_end) {
        const int64_t v = B * C * ((key_ptr[t1 + 1] - key_ptr[t1]) + (out_ptr[t1 + 1] - out_ptr[t1]));
        if (t1 > t0 && values + v > kTileValues) break;
        values += v;
        ++t1;
      }
      const int64_t T = t1 - t0;
      zoff.assign(T + 1, 0);
      aoff.assign(T + 1, 0);
      int64_t maxKC = 0, maxOC = 0;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t KC = (key_ptr[t0 + t + 1] - key_ptr[t0 + t]) * C;
        const int64_t OC = (out_ptr[t0 + t + 1] - out_ptr[t0 + t]) * C;
        zoff[t + 1] = zoff[t] + B * KC;
        aoff[t + 1] = aoff[t] + B * OC;
        maxKC = std::max(maxKC, KC);
        maxOC = std::max(maxOC, OC);
      }
      // Queries on each unit's key support: zg[zoff[t] + b*KC + k*C + c] = z[b, c, key k].
      zg.resize(zoff[T]);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t k0 = key_ptr[t0 + t], K = key_ptr[t0 + t + 1] - k0, KC = K * C;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t k = 0; k < K; ++k)
            for (int64_t c = 0; c < C; ++c) zg[zoff[t] + b * KC + k * C + c] = z[(b * C + c) * U + key_index[k0 + k]];
      }
      kbuf.resize(maxKC);
      obuf.resize(maxOC);
      mx.assign(T * B, -std::numeric_limits<double>::infinity());
      sum.assign(T * B, 0.0);
      acc.assign(aoff[T], 0.0);
      for (int64_t i = 0; i < N; ++i) {
        const scalar_t* img = data + i * C * U;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t q = t0 + t;
          const int64_t k0 = key_ptr[q], K = key_ptr[q + 1] - k0, KC = K * C;
          const int64_t o0 = out_ptr[q], Ko = out_ptr[q + 1] - o0, OC = Ko * C;
          for (int64_t k = 0; k < K; ++k) {
            const int64_t n = key_index[k0 + k];
            for (int64_t c = 0; c < C; ++c) kbuf[k * C + c] = img[c * U + n];
          }
          const scalar_t* kp = kbuf.data();
          const scalar_t* wp = key_weight + k0;
          bool out_loaded = false;
          for (int64_t b = 0; b < B; ++b) {
            const scalar_t* zp = zg.data() + zoff[t] + b * KC;
            scalar_t d = 0;
            if (C == 1) {
#pragma omp simd reduction(+ : d)
              for (int64_t j = 0; j < K; ++j) {
                const scalar_t diff = zp[j] - kp[j];
                d += wp[j] * diff * diff;
              }
            } else {
              for (int64_t k = 0; k < K; ++k) {
                scalar_t dk = 0;
                for (int64_t c = 0; c < C; ++c) {
                  const scalar_t diff = zp[k * C + c] - kp[k * C + c];
                  dk += diff * diff;
                }
                d += wp[k] * dk;
              }
            }
            const double logit = -double(d) * inv2s2[b];
            const int64_t s = t * B + b;
            double* a = acc.data() + aoff[t] + b * OC;
            double p;
            if (logit > mx[s]) {
              const double scale = std::exp(mx[s] - logit);  // 0 on the first image
              sum[s] *= scale;
              for (int64_t j = 0; j < OC; ++j) a[j] *= scale;
              mx[s] = logit;
              p = 1.0;
            } else {
              const double delta = logit - mx[s];
              if (delta < underflow<scalar_t>()) continue;  // its weight is exactly 0
              p = weight_exp<scalar_t>(delta);
            }
            if (!out_loaded) {
              for (int64_t c = 0; c < C; ++c)
                for (int64_t o = 0; o < Ko; ++o) obuf[c * Ko + o] = img[c * U + out_index[o0 + o]];
              out_loaded = true;
            }
            sum[s] += p;
            for (int64_t j = 0; j < OC; ++j) a[j] += p * double(obuf[j]);
          }
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        const int64_t q = t0 + t;
        const int64_t o0 = out_ptr[q], Ko = out_ptr[q + 1] - o0, OC = Ko * C;
        for (int64_t b = 0; b < B; ++b) {
          const int64_t s = t * B + b;
          lse[b * Q + q] = scalar_t(mx[s] + std::log(sum[s]));
          const double* a = acc.data() + aoff[t] + b * OC;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t o = 0; o < Ko; ++o)
              mean[(b * C + c) * nnz_out + o0 + o] = scalar_t(a[c * Ko + o] / sum[s]);
        }
      }
      t0 = t1;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> masked_local_posterior_cpu(const at::Tensor& z, const at::Tensor& data,
                                                              const at::Tensor& sigma, const at::Tensor& key_ptr,
                                                              const at::Tensor& key_index,
                                                              const at::Tensor& key_weight,
                                                              const at::Tensor& out_ptr,
                                                              const at::Tensor& out_index) {
  TORCH_CHECK(z.dim() == 3 && data.dim() == 3, "masked_local_posterior: z [B,C,U] and data [N,C,U] expected");
  TORCH_CHECK(z.size(1) == data.size(1) && z.size(2) == data.size(2),
              "masked_local_posterior: z and data differ in C or U");
  TORCH_CHECK(data.size(0) > 0, "masked_local_posterior: data is empty");
  TORCH_CHECK(z.scalar_type() == data.scalar_type() && z.scalar_type() == sigma.scalar_type() &&
                  z.scalar_type() == key_weight.scalar_type(),
              "masked_local_posterior: z, data, sigma and key_weight must share a dtype");
  for (const at::Tensor* t : {&key_ptr, &key_index, &out_ptr, &out_index})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->dim() == 1,
                "masked_local_posterior: index tensors must be 1-D int64");
  TORCH_CHECK(sigma.dim() == 1 && sigma.size(0) == z.size(0), "masked_local_posterior: sigma must be [B]");
  TORCH_CHECK(key_ptr.size(0) >= 1 && key_ptr.size(0) == out_ptr.size(0),
              "masked_local_posterior: key_ptr and out_ptr must both be [Q+1]");
  TORCH_CHECK(key_weight.dim() == 1 && key_weight.size(0) == key_index.size(0),
              "masked_local_posterior: key_weight and key_index differ in length");
  const int64_t B = z.size(0), C = z.size(1), U = z.size(2), N = data.size(0);
  const int64_t Q = key_ptr.size(0) - 1;
  auto zc = z.contiguous(), dc = data.contiguous(), sc = sigma.contiguous();
  auto kp = key_ptr.contiguous(), ki = key_index.contiguous(), kw = key_weight.contiguous();
  auto op = out_ptr.contiguous(), oi = out_index.contiguous();
  const int64_t* kpp = kp.data_ptr<int64_t>();
  const int64_t* opp = op.data_ptr<int64_t>();
  TORCH_CHECK(kpp[0] == 0 && opp[0] == 0 && kpp[Q] == ki.size(0) && opp[Q] == oi.size(0),
              "masked_local_posterior: CSR pointers must start at 0 and end at the index length");
  for (int64_t q = 0; q < Q; ++q)
    TORCH_CHECK(kpp[q + 1] >= kpp[q] && opp[q + 1] >= opp[q], "masked_local_posterior: CSR pointers must not decrease");
  for (const at::Tensor* t : {&ki, &oi}) {
    if (t->numel() == 0) continue;
    TORCH_CHECK(t->min().item<int64_t>() >= 0 && t->max().item<int64_t>() < U,
                "masked_local_posterior: support index out of range [0, U)");
  }
  const int64_t nnz_out = oi.size(0);
  auto mean = at::empty({B, C, nnz_out}, z.options());
  auto lse = at::empty({B, Q}, z.options());
  if (B == 0 || Q == 0) return {mean, lse};
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "masked_local_posterior", [&] {
    masked_kernel<scalar_t>(zc.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(), kpp,
                            ki.data_ptr<int64_t>(), kw.data_ptr<scalar_t>(), opp, oi.data_ptr<int64_t>(),
                            mean.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), B, C, U, N, Q, nnz_out);
  });
  return {mean, lse};
}

}  // namespace
}  // namespace creativity_fast

TORCH_LIBRARY_IMPL(creativity_fast, CPU, m) {
  m.impl("masked_local_posterior", &creativity_fast::masked_local_posterior_cpu);
}
