// A small CPU emulator of the CUDA execution model, for testing the kernels of this
// directory on machines without a GPU (development and CI; never part of the built
// extension). Define CF_CUDA_EMULATION, include the torch/ATen headers you need, then this
// file, then the kernel headers (patch_kernels.cuh, ideal_kernels.cuh) and compile them as
// plain C++17 with g++/clang.
//
// What it emulates: a launch runs its blocks one after another; the threads of a block
// are cooperative fibers (ucontext) on one OS thread; __syncthreads() and warp shuffles are
// real barriers (a missing barrier shows up as a wrong order of shared-memory accesses, a
// barrier not reached by every thread as a reported deadlock); __shared__ variables are
// function statics (one copy, reused by the blocks in turn). wmma fragments hold the whole
// tile in every lane (so the results, not the register layout, are emulated); tf32 rounding
// is emulated bit-exactly (round to nearest, ties away, 10 mantissa bits). __expf is libm's
// expf. Not emulated: timing, occupancy, memory coalescing, races between warps that real
// hardware would interleave differently, register limits.
#pragma once

#if !defined(CF_CUDA_EMULATION)
#error "define CF_CUDA_EMULATION before including cpu_emulation.cuh"
#endif

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::exp;
using std::fma;
using std::isfinite;
using std::log;
using std::sqrt;

enum cudaError_t { cudaSuccess = 0 };
typedef struct CUstream_st* cudaStream_t;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct int4 {
  int x, y, z, w;
};
struct emu_dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __expf(float x) { return std::exp(x); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32); }
[[noreturn]] inline void __trap() {
  std::fprintf(stderr, "cpu_emulation: __trap()\n");
  std::abort();
}

namespace cf_emu {

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
  const uint64_t* wait_on = nullptr;  // waiting until *wait_on != wait_gen
  uint64_t wait_gen = 0;
};

struct State {
  ucontext_t main_ctx;
  std::vector<Fiber> fibers;
  int current = -1;
  int nthreads = 0;
  uint64_t block_gen = 0;
  int block_arrived = 0;
  std::vector<uint64_t> warp_gen;
  std::vector<int> warp_arrived;
  std::vector<uint64_t> shfl;  // one 8-byte slot per thread
  std::function<void()> body;
  // Order in which runnable threads are resumed: 0 ascending, 1 descending, 2 shuffled on
  // every pass (seeded). Running a test under all three exposes a missing barrier whichever
  // thread writes first. Set with CF_EMU_SCHEDULE=forward|reverse|random.
  int schedule = -1;
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  // dynamic shared memory of the current launch, refilled with 0xFF bytes (NaN doubles,
  // int -1) before every block so that a read before a write shows up
  std::vector<double> dynamic_smem;
};
inline State g;

inline void* dynamic_shared() { return g.dynamic_smem.data(); }

inline void trampoline() {
  g.body();
  g.fibers[g.current].done = true;
  swapcontext(&g.fibers[g.current].ctx, &g.main_ctx);  // never resumed
}

inline void wait_for_change(const uint64_t* gen_ptr, uint64_t gen) {
  Fiber& f = g.fibers[g.current];
  f.wait_on = gen_ptr;
  f.wait_gen = gen;
  swapcontext(&f.ctx, &g.main_ctx);
}

inline void syncthreads() {
  const uint64_t gen = g.block_gen;
  if (++g.block_arrived == g.nthreads) {
    g.block_arrived = 0;
    ++g.block_gen;
    return;
  }
  wait_for_change(&g.block_gen, gen);
}

inline void warp_barrier() {
  const int w = static_cast<int>(threadIdx.x) / 32;
  const int size = std::min(32, g.nthreads - 32 * w);
  const uint64_t gen = g.warp_gen[w];
  if (++g.warp_arrived[w] == size) {
    g.warp_arrived[w] = 0;
    ++g.warp_gen[w];
    return;
  }
  wait_for_change(&g.warp_gen[w], gen);
}

inline void run_block(int nthreads) {
  g.nthreads = nthreads;
  g.block_arrived = 0;
  g.warp_gen.assign((nthreads + 31) / 32, 0);
  g.warp_arrived.assign((nthreads + 31) / 32, 0);
  g.shfl.assign(nthreads, 0);
  if (static_cast<int>(g.fibers.size()) < nthreads) g.fibers.resize(nthreads);
  for (int t = 0; t < nthreads; ++t) {
    Fiber& f = g.fibers[t];
    f.done = false;
    f.wait_on = nullptr;
    if (f.stack.empty()) f.stack.resize(512 * 1024);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
  }
  if (g.schedule < 0) {
    const char* env = std::getenv("CF_EMU_SCHEDULE");
    const std::string v = env != nullptr ? env : "forward";
    g.schedule = v == "reverse" ? 1 : v == "random" ? 2 : 0;
  }
  std::vector<int> order(nthreads);
  for (int t = 0; t < nthreads; ++t) order[t] = g.schedule == 1 ? nthreads - 1 - t : t;
  for (;;) {
    bool alive = false, progressed = false;
    if (g.schedule == 2) {
      for (int i = nthreads - 1; i > 0; --i) {  // Fisher-Yates with xorshift64
        g.rng ^= g.rng << 13;
        g.rng ^= g.rng >> 7;
        g.rng ^= g.rng << 17;
        std::swap(order[i], order[static_cast<int>(g.rng % static_cast<uint64_t>(i + 1))]);
      }
    }
    for (int t : order) {
      Fiber& f = g.fibers[t];
      if (f.done) continue;
      alive = true;
      if (f.wait_on != nullptr && *f.wait_on == f.wait_gen) continue;
      f.wait_on = nullptr;
      g.current = t;
      threadIdx.x = static_cast<unsigned>(t);
      threadIdx.y = threadIdx.z = 0;
      swapcontext(&g.main_ctx, &f.ctx);
      progressed = true;
    }
    if (!alive) break;
    if (!progressed) {
      std::fprintf(stderr, "cpu_emulation: deadlock in block (%u, %u): a barrier is not reached by every thread\n",
                   blockIdx.x, blockIdx.y);
      std::abort();
    }
  }
  g.current = -1;
}

// Run body() as the kernel of a launch <<<grid, block, smem_bytes>>> (1-D blocks).
inline void launch(emu_dim3 grid, emu_dim3 block, size_t smem_bytes, std::function<void()> body) {
  gridDim = grid;
  blockDim = block;
  g.body = std::move(body);
  g.dynamic_smem.assign((smem_bytes + sizeof(double) - 1) / sizeof(double), 0.0);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx.x = x;
        blockIdx.y = y;
        blockIdx.z = z;
        if (!g.dynamic_smem.empty())
          std::memset(g.dynamic_smem.data(), 0xFF, g.dynamic_smem.size() * sizeof(double));
        run_block(static_cast<int>(block.x * block.y * block.z));
      }
}
inline void launch(emu_dim3 grid, emu_dim3 block, std::function<void()> body) {
  launch(grid, block, 0, std::move(body));
}

}  // namespace cf_emu

inline void __syncthreads() { cf_emu::syncthreads(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  const int t = static_cast<int>(threadIdx.x), lane = t % 32, base = t - lane;
  std::memcpy(&cf_emu::g.shfl[t], &v, sizeof(T));
  cf_emu::warp_barrier();
  T r;
  std::memcpy(&r, &cf_emu::g.shfl[base + (lane ^ mask)], sizeof(T));
  cf_emu::warp_barrier();
  return r;
}

// wmma with whole-tile fragments (results emulated, not the register layout).
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment;
template <int M, int N, int K, typename Layout>
struct fragment<matrix_a, M, N, K, precision::tf32, Layout> {
  static constexpr int num_elements = M * K;
  float x[M * K];  // a[i][k] = x[i * K + k]
};
template <int M, int N, int K, typename Layout>
struct fragment<matrix_b, M, N, K, precision::tf32, Layout> {
  static constexpr int num_elements = K * N;
  float x[K * N];  // b[k][n] = x[k * N + n]
};
template <int M, int N, int K>
struct fragment<accumulator, M, N, K, float, void> {
  static constexpr int num_elements = M * N;
  float x[M * N];  // c[i][j] = x[i * N + j]
};

template <int M, int N, int K>
inline void load_matrix_sync(fragment<matrix_a, M, N, K, precision::tf32, row_major>& a, const float* p, unsigned ldm) {
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) a.x[i * K + k] = p[i * ldm + k];
}
template <int M, int N, int K>
inline void load_matrix_sync(fragment<matrix_b, M, N, K, precision::tf32, col_major>& b, const float* p, unsigned ldm) {
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) b.x[k * N + n] = p[n * ldm + k];
}
template <int M, int N, int K>
inline void fill_fragment(fragment<accumulator, M, N, K, float, void>& c, float v) {
  for (int i = 0; i < M * N; ++i) c.x[i] = v;
}
template <int M, int N, int K, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float, void>& d,
                     const fragment<matrix_a, M, N, K, precision::tf32, LA>& a,
                     const fragment<matrix_b, M, N, K, precision::tf32, LB>& b,
                     const fragment<accumulator, M, N, K, float, void>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s = std::fma(a.x[i * K + k], b.x[k * N + j], s);
      out[i * N + j] = s;
    }
  std::memcpy(d.x, out, sizeof(out));
}
template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& c, unsigned ldm,
                              layout_t layout) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      if (layout == mem_col_major)
        p[j * ldm + i] = c.x[i * N + j];
      else
        p[i * ldm + j] = c.x[i * N + j];
    }
}
// cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 mantissa bits.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0x1000u) & ~0x1FFFu;
  std::memcpy(&v, &u, 4);
  return v;
}
}  // namespace wmma
}  // namespace nvcuda
