// Machine rates the kernel is measured against (bench/microbench.py builds and runs it):
//   exp: the kernel's own vectorised exp (Cephes polynomial, flush to 0 below -87),
//        on the widest vectors this CPU has, values per second;
//   fma: independent fused multiply-adds on float32 vectors, per second.
// Both run on `threads` OpenMP threads for about `seconds` of wall time each.
#include <omp.h>

#include <cstdint>

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

double cf_fma_rate(int threads, double seconds, double* sink) {
  double total = 0, t0 = omp_get_wtime(), elapsed = 0;
  long rounds = 0;
  while (elapsed < seconds) {
    const long reps = 2000000;
    double part = 0;
#pragma omp parallel num_threads(threads) reduction(+ : part)
    {
      vf a[12];
      for (int k = 0; k < 12; ++k) a[k] = splat(0.01f * float(k + omp_get_thread_num()));
      const vf m = splat(0.999f), c = splat(0.001f);
      for (long r = 0; r < reps; ++r) {
        for (int k = 0; k < 12; ++k) a[k] = a[k] * m + c;
        asm volatile("" : "+v"(a[0]), "+v"(a[6]), "+v"(a[11]));
      }
      for (int k = 0; k < 12; ++k) part += a[k][0];
    }
    total += part;
    rounds += reps;
    elapsed = omp_get_wtime() - t0;
  }
  *sink = total;
  return double(rounds) * 12 * 16 * threads / elapsed;
}
}
