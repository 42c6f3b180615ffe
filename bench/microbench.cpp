// Machine rates the kernel is measured against (bench/microbench.py builds and runs it):
//   exp: the kernel's own vectorised exp (Cephes polynomial, flush to 0 below -87),
//        on the widest vectors this CPU has, values per second;
//   fma: independent fused multiply-adds on float32 lanes, per second (on the widest
//        vector that is one register).
// Both run on `threads` OpenMP threads for about `seconds` of wall time each.
//   partner term: the paired-patch machine's second distance, |q - k|^2 over D2 window
//        entries, one double query window against the partner windows of 8 training
//        images (one 8-lane vector per entry), single thread, cache-resident, in three
//        forms (see cf_partner_term_rate); 8-lane distances per second.
#include <omp.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/vexp_f.h"  // the kernel's own exp, not a copy

extern "C" {

typedef float vf __attribute__((vector_size(64)));

static inline vf splat(float s) { return vf{} + s; }

static inline vf vexp(vf x) { return vexp_f(x); }

// Returns values per second (all threads together); sink defeats dead-code removal.
double cf_exp_rate(int threads, double seconds, double* sink) {
  const int n = 256;  // 16 KiB of inputs per thread: L1 resident, like the kernel's rows
  double total = 0, t0 = omp_get_wtime(), elapsed = 0;
  long rounds = 0;
  while (elapsed < seconds) {
    const long reps = 2000;
    double part = 0;
#pragma omp parallel num_threads(threads) reduction(+ : part)
    {
      alignas(64) vf in[n];
      const int tid = omp_get_thread_num();
      for (int i = 0; i < n; ++i)
        for (int l = 0; l < 16; ++l) in[i][l] = -float((i * 16 + l + tid) % 80) * 0.37f;
      vf acc = vf{};
      for (long r = 0; r < reps; ++r) {
        const vf shift = splat(-1e-7f * float(r));
        for (int i = 0; i < n; ++i) acc += vexp(in[i] + shift);
      }
      for (int l = 0; l < 16; ++l) part += acc[l];
    }
    total += part;
    rounds += reps;
    elapsed = omp_get_wtime() - t0;
  }
  *sink = total;
  return double(rounds) * n * 16 * threads / elapsed;
}

// The FMA chains use the widest vector that is one register (64 bytes with AVX-512, 32 with
// AVX, 16 otherwise): 12 chains then fit the register file, and the barrier below can pin
// each one (a 64-byte vector on AVX2 spans two registers, and spilled chains measure memory).
#if defined(__AVX512F__)
typedef float vfma __attribute__((vector_size(64)));
#elif defined(__AVX__)
typedef float vfma __attribute__((vector_size(32)));
#else
typedef float vfma __attribute__((vector_size(16)));
#endif
static constexpr int kFmaLanes = int(sizeof(vfma) / sizeof(float));

static inline void keep_in_register(vfma& x) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("" : "+v"(x));
#elif defined(__aarch64__)
  asm volatile("" : "+w"(x));
#else
  asm volatile("" : "+m"(x));
#endif
}

double cf_fma_rate(int threads, double seconds, double* sink) {
  double total = 0, t0 = omp_get_wtime(), elapsed = 0;
  long rounds = 0;
  while (elapsed < seconds) {
    const long reps = 2000000;
    double part = 0;
#pragma omp parallel num_threads(threads) reduction(+ : part)
    {
      vfma a[12];
      for (int k = 0; k < 12; ++k) a[k] = vfma{} + 0.01f * float(k + omp_get_thread_num());
      const vfma m = vfma{} + 0.999f, c = vfma{} + 0.001f;
      for (long r = 0; r < reps; ++r) {
        for (int k = 0; k < 12; ++k) a[k] = a[k] * m + c;
        keep_in_register(a[0]); keep_in_register(a[6]); keep_in_register(a[11]);
      }
      for (int k = 0; k < 12; ++k) part += a[k][0];
    }
    total += part;
    rounds += reps;
    elapsed = omp_get_wtime() - t0;
  }
  *sink = total;
  return double(rounds) * 12 * kFmaLanes * threads / elapsed;
}

typedef double vd8 __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));

// form 0, as the CPU kernel computes it (csrc/cpu/ppm_paired.h): keys stored in float32,
// widened, subtracted from the broadcast query entry, squared and summed in 4 chains.
static inline vd8 term_kernel(const double* __restrict q, const vf8* __restrict k, int D2) {
  vd8 a0{}, a1{}, a2{}, a3{};
  int d = 0;
  for (; d + 4 <= D2; d += 4) {
    const vd8 e0 = q[d] - __builtin_convertvector(k[d], vd8), e1 = q[d + 1] - __builtin_convertvector(k[d + 1], vd8);
    const vd8 e2 = q[d + 2] - __builtin_convertvector(k[d + 2], vd8), e3 = q[d + 3] - __builtin_convertvector(k[d + 3], vd8);
    a0 += e0 * e0; a1 += e1 * e1; a2 += e2 * e2; a3 += e3 * e3;
  }
  for (; d < D2; ++d) { const vd8 e = q[d] - __builtin_convertvector(k[d], vd8); a0 += e * e; }
  return (a0 + a1) + (a2 + a3);
}
// form 1: the same with keys stored in double (no widening; twice the bytes).
static inline vd8 term_double(const double* __restrict q, const vd8* __restrict k, int D2) {
  vd8 a0{}, a1{}, a2{}, a3{};
  int d = 0;
  for (; d + 4 <= D2; d += 4) {
    const vd8 e0 = q[d] - k[d], e1 = q[d + 1] - k[d + 1], e2 = q[d + 2] - k[d + 2], e3 = q[d + 3] - k[d + 3];
    a0 += e0 * e0; a1 += e1 * e1; a2 += e2 * e2; a3 += e3 * e3;
  }
  for (; d < D2; ++d) { const vd8 e = q[d] - k[d]; a0 += e * e; }
  return (a0 + a1) + (a2 + a3);
}
// form 2: the dot-product form |q|^2 + |k|^2 - 2<q, k> with both norms precomputed: one
// multiply-add per entry, the least arithmetic a direct evaluation can do (and the least
// accurate: it cancels where q and k are close).
static inline vd8 term_dot(const double* __restrict q, const vd8* __restrict k, int D2) {
  vd8 a0{}, a1{}, a2{}, a3{};
  int d = 0;
  for (; d + 4 <= D2; d += 4) {
    a0 += q[d] * k[d]; a1 += q[d + 1] * k[d + 1]; a2 += q[d + 2] * k[d + 2]; a3 += q[d + 3] * k[d + 3];
  }
  for (; d < D2; ++d) a0 += q[d] * k[d];
  return (a0 + a1) + (a2 + a3);
}

// 8-lane partner distances per second on one thread, for D2 entries per window and
// form 0, 1 or 2 (above); 16 query and 16 key windows, so the data stay in L1/L2 and
// the rate is the arithmetic's, not memory's.
double cf_partner_term_rate(int D2, int form, double seconds, double* sink) {
  const int nw = 16;
  std::vector<double> q(std::size_t(nw) * D2);
  std::vector<vf8> kf(std::size_t(nw) * D2);
  std::vector<vd8> kd(std::size_t(nw) * D2);
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = 0.001 * double(i % 997);
    for (int l = 0; l < 8; ++l) {
      kf[i][l] = 0.002f * float((i + l) % 991);
      kd[i][l] = kf[i][l];
    }
  }
  vd8 acc{};
  long pairs = 0;
  const double t0 = omp_get_wtime();
  double elapsed = 0;
  while (elapsed < seconds) {
    for (int a = 0; a < nw; ++a)
      for (int b = 0; b < nw; ++b) {
        const double* qw = q.data() + std::size_t(a) * D2;
        if (form == 0) acc += term_kernel(qw, kf.data() + std::size_t(b) * D2, D2);
        else if (form == 1) acc += term_double(qw, kd.data() + std::size_t(b) * D2, D2);
        else acc += term_dot(qw, kd.data() + std::size_t(b) * D2, D2);
      }
    pairs += long(nw) * nw;
    elapsed = omp_get_wtime() - t0;
  }
  double s = 0;
  for (int l = 0; l < 8; ++l) s += acc[l];
  *sink = s;
  return double(pairs) / elapsed;
}
}
