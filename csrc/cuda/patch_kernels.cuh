// Kernels of the patch posterior mean on CUDA, modes local and els (docs/theory.md §3.2, §3.3, §4).
//
// One block = TQ query pixels of a group x the keys [k0, k1) of its work item, streamed
// in tiles of TK keys. Per tile:
//   1. key metadata (image, centre, log prior, centre pixel) into shared memory;
//   2. the [TQ x TK] distance tile, patch entries in chunks of DK gathered on the fly
//      from z and the training images (no im2col in global memory):
//        fp32/fp64 path: sum_d (q_d - k_d)^2 on CUDA cores (direct differences);
//        tf32 path:      |q|^2 + |k|^2 - 2 <q, k> with the cross term on tensor cores
//                        (wmma m16n16k8 tf32, fp32 accumulate), norms in fp32;
//   3. an online softmax per (query, thread): each query row is shared by PARTS threads
//      that own disjoint key columns and keep independent running (max, sum, weighted
//      centres, best); they are merged once, at the end of the block.
// Every block writes one partial state per query; merge_kernel combines the splits of
// a query in key order (exactly; the best key keeps the lowest id on ties).
//
// The backward pass re-runs the distance tiles, forms a_k = exp(l_k - lse) * g.(c_k - x0)
// and accumulates A = sum_k a_k K_k (a second small GEMM) and S = sum_k a_k per query;
// adjoint_kernel scatters (mult_d / sigma^2) (A_d - q_d S) back to z by gathering over
// the patch offsets (deterministic; no atomics).
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "device_utils.cuh"

// Tensor-core code is compiled for sm_80+ (and by the CPU emulator used in development).
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || defined(CF_CUDA_EMULATION)
#define CF_HAS_TF32_MMA 1
#else
#define CF_HAS_TF32_MMA 0
#endif

namespace creativity_fast {
namespace cuda {
namespace detail {

// Running softmax state of one query over a set of keys.
template <typename T, int CMAX>
struct State {
  T m, s, acc[CMAX], best;
  int64_t id;
  __device__ __forceinline__ void init() {
    m = neg_inf<T>();
    s = T(0);
#pragma unroll
    for (int c = 0; c < CMAX; ++c) acc[c] = T(0);
    best = neg_inf<T>();
    id = -1;
  }
  // Exact merge with another state over a disjoint key set (order-independent; the best
  // key is the largest logit, the lowest id on ties).
  __device__ __forceinline__ void merge(T m2, T s2, const T* acc2, T best2, int64_t id2) {
    const T nm = m > m2 ? m : m2;
    if (nm > neg_inf<T>()) {
      const T a = unit_exp(m - nm), b = unit_exp(m2 - nm);
      s = s * a + s2 * b;
#pragma unroll
      for (int c = 0; c < CMAX; ++c) acc[c] = acc[c] * a + acc2[c] * b;
      m = nm;
    } else {
      s = s + s2;  // both without a finite logit: 0, or NaN from a NaN logit (kept)
    }
    if (best2 > best || (best2 == best && id2 < id)) {
      best = best2;
      id = id2;
    }
  }
};

// Gather one patch entry: image `img` ([C,H,W] base), entry d of the patch centred at (r, c).
template <typename T>
__device__ __forceinline__ T gather(const T* img, const int4 t, int r, int c, const AxisPatch& ar,
                                    const AxisPatch& ac, int H, int W, bool scale) {
  const int sr = ar.source(r, t.y), sc = ac.source(c, t.z);
  if (sr < 0 || sc < 0) return T(0);  // zero extension
  T v = img[(static_cast<int64_t>(t.x) * H + sr) * W + sc];
  if (scale && t.w != 1) v *= sqrt(static_cast<T>(t.w));  // sqrt(multiplicity): weighted distance
  return v;
}

// Offset in its [C, H, W] image of the first entry of the patch centred at (r, c) when the whole
// patch lies inside the image with unit multiplicities, so that entry d is at this offset plus
// p.doff[d] (no bounds, wrap or weight per entry); -1 otherwise (gather() then).
__device__ __forceinline__ int patch_corner(int r, int c, const AxisPatch& ar, const AxisPatch& ac) {
  const int r0 = r + ar.first, c0 = c + ac.first;
  const bool inside = r0 >= 0 && r0 + ar.count <= ar.size && c0 >= 0 && c0 + ac.count <= ac.size;
  const bool unit = ar.boundary == Boundary::Zeros || (ar.P <= ar.size && ac.P <= ac.size);
  return inside && unit ? r0 * ac.size + c0 : -1;
}

// Shared state of a block: query metadata (fixed) and key metadata (per tile).
template <typename T, int CMAX, int TQ, int TK>
struct Meta {
  int64_t q_base[TQ];             // z offset of the query patch's first entry (patch_corner), -1: gather
  int q_b[TQ], q_r[TQ], q_c[TQ];  // q_b = -1: padding row
  T q_scale[TQ];                  // 1 / (2 sigma_b^2), in logit units (LogitUnit)
  int64_t k_base[TK];             // data offset of the key patch's first entry (patch_corner), -1: gather
  int k_mu[TK], k_r[TK], k_c[TK];  // k_mu = -1: padding key
  // 16-byte aligned: the epilogue reads a thread's consecutive keys with vector loads
  alignas(16) T k_logw[TK];        // log prior in logit units (0 without key_logw; -inf for padding)
  alignas(16) T k_centre[CMAX][TK];  // centre pixel of the key patch, per channel
};

template <typename T, int CMAX, int TQ, int TK>
__device__ void load_queries(Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p, const GroupInfo& g, int64_t q0,
                             const AxisPatch& ar, const AxisPatch& ac) {
  const int64_t CHW = static_cast<int64_t>(p.C) * p.H * p.W;
  for (int i = threadIdx.x; i < TQ; i += blockDim.x) {
    const int64_t q = q0 + i;
    if (q < g.nq) {
      const int64_t per = g.nr * g.nc;
      const int64_t b = q / per, rem = q - b * per;
      const int r = static_cast<int>(g.r0 + rem / g.nc), c = static_cast<int>(g.c0 + rem % g.nc);
      const int corner = patch_corner(r, c, ar, ac);
      mt.q_base[i] = corner >= 0 ? b * CHW + corner : -1;
      mt.q_b[i] = static_cast<int>(b);
      mt.q_r[i] = r;
      mt.q_c[i] = c;
      mt.q_scale[i] = p.inv2s2[b] * LogitUnit<T>::kPerNat;
    } else {
      mt.q_base[i] = -1;
      mt.q_b[i] = -1;
      mt.q_r[i] = 0;
      mt.q_c[i] = 0;
      mt.q_scale[i] = T(0);
    }
  }
}

// n / d for a divisor fixed per block, d in [1, 2^31), and n in [0, 2^31), without a division
// instruction sequence: q = (umulhi(n, m) + n) >> s with s = ceil(log2 d) and
// m = floor(2^32 (2^s - d) / d) + 1 (Granlund and Montgomery's round-up method; the sum does not
// overflow since umulhi(n, m) <= n < 2^31).
struct FastDiv {
  uint32_t d, m;
  int s;
  __device__ explicit FastDiv(uint32_t div) : d(div), s(0) {
    while ((uint64_t(1) << s) < d) ++s;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t operator()(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};

// k / d in 64 bits (a long software routine), out of line: keys beyond 2^31 in one group.
inline __device__ CF_NOINLINE int64_t div_s64(int64_t k, int64_t d) { return k / d; }

// Key id k of a group -> image mu and row, column of its centre (k = (mu*nrk + r'-rlo)*nck + c'-clo),
// with the divisions by nrk * nck and nck prepared once per block (both <= H * W < 2^31).
struct KeyIndex {
  FastDiv per, nck;
  int rlo, clo;
  __device__ explicit KeyIndex(const GroupInfo& g)
      : per(static_cast<uint32_t>(g.nrk * g.nck)), nck(static_cast<uint32_t>(g.nck)),
        rlo(static_cast<int>(g.rlo)), clo(static_cast<int>(g.clo)) {}
  __device__ __forceinline__ void operator()(int64_t k, int64_t& mu, int& r, int& c) const {
    uint32_t rem;
    if (k < (int64_t(1) << 31)) {
      const uint32_t ku = static_cast<uint32_t>(k), q = per(ku);
      mu = q;
      rem = ku - q * per.d;
    } else {
      mu = div_s64(k, per.d);  // sass: cold
      rem = static_cast<uint32_t>(k - mu * per.d);  // sass: cold
    }
    const uint32_t rr = nck(rem);
    r = rlo + static_cast<int>(rr);
    c = clo + static_cast<int>(rem - rr * nck.d);
  }
};

template <typename T, int CMAX, int TQ, int TK>
__device__ void load_keys(Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p, const KeyIndex& kx, int64_t kstart,
                          int64_t kend, const AxisPatch& ar, const AxisPatch& ac) {
  const int64_t HW = static_cast<int64_t>(p.H) * p.W;
  for (int i = threadIdx.x; i < TK; i += blockDim.x) {  // sass: trips=TK/THREADS
    const int64_t k = kstart + i;
    if (k < kend) {
      int64_t mu;
      int r, c;
      kx(k, mu, r, c);
      const int corner = patch_corner(r, c, ar, ac);
      mt.k_base[i] = corner >= 0 ? mu * p.C * HW + corner : -1;
      mt.k_mu[i] = static_cast<int>(mu);
      mt.k_r[i] = r;
      mt.k_c[i] = c;
      const int64_t pix = static_cast<int64_t>(r) * p.W + c;
      mt.k_logw[i] = p.logw != nullptr ? p.logw[mu * HW + pix] * LogitUnit<T>::kPerNat : T(0);
#pragma unroll
      for (int ch = 0; ch < CMAX; ++ch)
        mt.k_centre[ch][i] = ch < p.C ? p.data[(mu * p.C + ch) * HW + pix] : T(0);
    } else {
      mt.k_base[i] = -1;  // sass: cold
      mt.k_mu[i] = -1;  // sass: cold
      mt.k_r[i] = 0;  // sass: cold
      mt.k_c[i] = 0;  // sass: cold
      mt.k_logw[i] = neg_inf<T>();  // sass: cold
#pragma unroll
      for (int ch = 0; ch < CMAX; ++ch) mt.k_centre[ch][i] = T(0);  // sass: cold
    }
  }
}

// Entry d of query row `row`'s weighted patch (0 for a padding row).
template <typename T, int CMAX, int TQ, int TK>
__device__ __forceinline__ T query_entry(const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p, const AxisPatch& ar,
                                         const AxisPatch& ac, int row, int d) {
  const int b = mt.q_b[row];
  if (b < 0) return T(0);
  const int64_t base = mt.q_base[row];  // sass: weight=D/(NCHUNK*DK)
  if (base >= 0) return p.z[base + __ldg(p.doff + d)];  // sass: weight=D/(NCHUNK*DK)
  // a patch across the border (edge groups; cold in the interior group counted)
  return gather(p.z + b * static_cast<int64_t>(p.C) * p.H * p.W,  // sass: cold
                __ldg(reinterpret_cast<const int4*>(p.dtab) + d), mt.q_r[row], mt.q_c[row], ar, ac, p.H, p.W, true);
}

// The whole query patches, entries [0, D), into Qs[d * TQ + row] (layout "dm"), once per
// block when they fit (D <= Cfg<T>::DQ): the key tiles then reuse them.
template <typename T, int CMAX, int TQ, int TK>
__device__ void load_query_patches(T* Qs, const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p,
                                   const AxisPatch& ar, const AxisPatch& ac) {
  for (int e = threadIdx.x; e < p.D * TQ; e += blockDim.x) Qs[e] = query_entry(mt, p, ar, ac, e % TQ, e / TQ);
}

// Entries [d0, d0 + n) of key `k`'s patch into Ks[(d - d0) * ldk + k] through gather() (a
// patch across the border), or zeros for a padding key; thread t does entries t / TK + i * STEP.
template <typename T, int CMAX, int TQ, int TK>
__device__ void load_key_entries_slow(T* Ks, int ldk, const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p,
                                      const AxisPatch& ar, const AxisPatch& ac, int k, int d0, int n, bool scale) {
  constexpr int STEP = kThreads / TK;
  const int mu = mt.k_mu[k];
  const T* img = p.data + static_cast<int64_t>(mu) * p.C * p.H * p.W;
  const int4* dtab = reinterpret_cast<const int4*>(p.dtab);
  // (cold in the interior group counted, where every call site is; tagged here too because the
  // line table loses the call site of some of its instructions)
  for (int dd = threadIdx.x / TK; dd < n; dd += STEP) {  // sass: cold; trips=D/LSTEP
    const T v = mu >= 0 ? gather(img, __ldg(dtab + d0 + dd), mt.k_r[k], mt.k_c[k], ar, ac, p.H, p.W, scale)  // sass: cold
                        : T(0);  // sass: cold
    Ks[dd * ldk + k] = v;  // sass: cold
  }
}

// Entries [d0, d0 + n) of ROWS patches lying inside their images into X[(d - d0) * ROWS + i]
// (layout "dm"): patch i of the calling thread is i = t % ROWS, its first entry at src (the
// patch corner), its entries t / ROWS + j * STEP. One offset load, one address and one data load
// per entry, four entries per iteration.
template <typename T, int ROWS>
__device__ __forceinline__ void load_range_inside(T* X, const T* src, const int* doff, int d0, int n) {
  constexpr int STEP = kThreads / ROWS;
  static_assert(kThreads % ROWS == 0, "patch-range mapping");
  CF_OPAQUE_PTR(src);
  const int first = threadIdx.x / ROWS;         // the thread's entries: first + j * STEP
  const int cnt = (n - first + STEP - 1) / STEP;  // how many (0 when first >= n)
  const int* dp = doff + d0 + first;
  CF_OPAQUE_PTR(dp);
  T* xp = X + threadIdx.x;  // entry first + j * STEP of patch t % ROWS is at X[t + j * kThreads]
  int j = cnt;
#pragma unroll 1
  for (; j >= 4; j -= 4, dp += 4 * STEP, xp += 4 * kThreads) {  // sass: trips=LMAIN
#pragma unroll
    for (int u = 0; u < 4; ++u) xp[u * kThreads] = __ldg(src + __ldg(dp + u * STEP));
  }
#pragma unroll 1
  for (; j > 0; --j, dp += STEP, xp += kThreads) *xp = __ldg(src + __ldg(dp));  // sass: trips=LREM
}

// Entries [d0, d0 + n) of the weighted patches of the block's queries (into Qs) or of the tile's
// keys (into Ks), layout "dm" with leading dimension TQ / TK: the forward's ranges of up to
// Cfg<T>::DQ entries (all of them when D <= DQ: no chunk loop, no padded entries).
template <typename T, int CMAX, int TQ, int TK>
__device__ __forceinline__ void load_query_range(T* Qs, const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p,
                                                 const AxisPatch& ar, const AxisPatch& ac, int d0, int n) {
  const int row = threadIdx.x % TQ;
  const int64_t base = mt.q_base[row];
  if (base >= 0) {
    load_range_inside<T, TQ>(Qs, p.z + base, p.doff, d0, n);
  } else {
    // a padding row, or a patch across the border (edge groups; cold in the interior group counted)
    constexpr int STEP = kThreads / TQ;
    for (int dd = threadIdx.x / TQ; dd < n; dd += STEP) Qs[dd * TQ + row] = query_entry(mt, p, ar, ac, row, d0 + dd);  // sass: cold; trips=D/LSTEP
  }
}

template <typename T, int CMAX, int TQ, int TK>
__device__ __forceinline__ void load_key_range(T* Ks, const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p,
                                               const AxisPatch& ar, const AxisPatch& ac, int d0, int n) {
  const int k = threadIdx.x % TK;
  const int64_t base = mt.k_base[k];
  if (base >= 0)
    load_range_inside<T, TK>(Ks, p.data + base, p.doff, d0, n);
  else  // a padding key, or a patch across the border (edge groups; cold in the interior group counted)
    load_key_entries_slow(Ks, TK, mt, p, ar, ac, k, d0, n, true);  // sass: cold
}

// Per-thread offsets of the key entries it loads (load_key_patch_small), fixed for the block:
// thread t loads entries t / TK + u * STEP, u < 4, of key t % TK; 0 (the corner) past D. `on` when every
// entry of a patch is among them (D <= 4 * STEP) and `enable` (the caller's CUDA-core path reads
// the patches as one range).
constexpr int SMALL_ROWS = 16;  // short patches (load_key_patch_small): rows of Qs for the queries; the keys follow

template <int TK>
struct KeyEntryOffsets {
  static constexpr int STEP = kThreads / TK;
  int off[4];
  bool on;
  __device__ KeyEntryOffsets(const int* doff, int D, bool enable) : on(enable && D <= 4 * STEP) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int d = static_cast<int>(threadIdx.x) / TK + u * STEP;
      off[u] = on && d < D ? __ldg(doff + d) : 0;
    }
  }
};

// The whole patches of the tile's keys into Ks[d * TK + k] (layout "dm") when they are short
// (KeyEntryOffsets::on): no loop, the offsets in registers, one address and one load per entry.
template <typename T, int CMAX, int TQ, int TK>
__device__ __forceinline__ void load_key_patch_small(T* Ks, const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p,
                                                     const AxisPatch& ar, const AxisPatch& ac,
                                                     const KeyEntryOffsets<TK>& ko) {
  // (the weight tags: the line table loses the call site of some of these instructions)
  const int k = threadIdx.x % TK;  // sass: weight=KSMALL
  const int64_t base = mt.k_base[k];  // sass: weight=KSMALL
  if (base >= 0) {  // sass: weight=KSMALL
    const T* src = p.data + base;  // sass: weight=KSMALL
    CF_OPAQUE_PTR(src);  // sass: weight=KSMALL
    T* xp = Ks + threadIdx.x;  // entry t / TK + u * STEP of key t % TK is at Ks[t + u * kThreads]; sass: weight=KSMALL
    // Unconditional: an entry d >= D (offset 0, the patch corner) fills a row of Ks that no one
    // reads (accumulate_range stops at D; Ks has DQ >= 4 * STEP rows), cheaper than a predicate.
#pragma unroll
    for (int u = 0; u < 4; ++u) xp[u * kThreads] = __ldg(src + ko.off[u]);  // sass: weight=KSMALL
  } else {  // a padding key, or a patch across the border (edge groups; cold in the interior group counted)
    load_key_entries_slow(Ks, TK, mt, p, ar, ac, k, 0, p.D, true);  // sass: cold
  }
}

// Chunk [d0, d0+DK) of the query patches into Qs and of the key patches into Ks.
// Layout "dm" (CUDA-core path): X[dd * ld + row]; layout "md" (tensor-core path): X[row * ld + dd].
template <typename T, int CMAX, int TQ, int TK, int DK, bool ROW_MAJOR>
__device__ void load_chunk(T* Qs, T* Ks, int ldq, int ldk, const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p,
                           const AxisPatch& ar, const AxisPatch& ac, int d0, bool load_q, bool scale_k) {
  const int64_t CHW = static_cast<int64_t>(p.C) * p.H * p.W;
  const int4* dtab = reinterpret_cast<const int4*>(p.dtab);
  if (load_q) {  // sass: weight=1-QRES
    for (int e = threadIdx.x; e < DK * TQ; e += blockDim.x) {  // sass: trips=DK*TQ/THREADS; weight=1-QRES
      const int row = ROW_MAJOR ? e / DK : e % TQ, dd = ROW_MAJOR ? e % DK : e / TQ;  // sass: weight=1-QRES
      const int d = d0 + dd;                                                       // sass: weight=1-QRES
      const T v = d < p.D ? query_entry(mt, p, ar, ac, row, d) : T(0);             // sass: weight=1-QRES
      Qs[ROW_MAJOR ? row * ldq + dd : dd * ldq + row] = v;                          // sass: weight=1-QRES
    }
  }
  if constexpr (!ROW_MAJOR) {
    // Layout "dm" with blockDim.x == kThreads: thread t always loads key t % TK (its metadata
    // read once per chunk), entries t / TK + i * (kThreads / TK). The padded entries of the
    // last chunk are not written: this layout's readers skip them.
    static_assert(kThreads % TK == 0 && (DK * TK) % kThreads == 0, "key-chunk mapping");
    constexpr int STEP = kThreads / TK;
    const int k = threadIdx.x % TK, dd0 = threadIdx.x / TK;
    const int64_t base = mt.k_base[k];
    if (base >= 0) {
      // A patch inside its image: one offset load, one address and one data load per entry.
      const T* kp = p.data + base;
      CF_OPAQUE_PTR(kp);
      const int* dp = p.doff + d0;
      if (d0 + DK <= p.D) {
#pragma unroll
        for (int i = 0; i < DK / STEP; ++i)
          Ks[(dd0 + i * STEP) * ldk + k] = __ldg(kp + __ldg(dp + dd0 + i * STEP));  // sass: weight=FULL/NCHUNK
      } else {
#pragma unroll 1
        for (int dd = dd0; dd < p.D - d0; dd += STEP)  // sass: weight=PARTC; trips=REM/LSTEP
          Ks[dd * ldk + k] = __ldg(kp + __ldg(dp + dd));  // sass: weight=PARTC
      }
    } else {
      // a padding key, or a patch across the border (edge groups; cold in the interior group counted)
      load_key_entries_slow(Ks, ldk, mt, p, ar, ac, k, d0, p.D - d0 < DK ? p.D - d0 : DK, scale_k);  // sass: cold
    }
  } else {
    for (int e = threadIdx.x; e < DK * TK; e += blockDim.x) {  // sass: trips=DK*TK/THREADS
      const int k = e / DK, dd = e % DK;
      const int d = d0 + dd, mu = mt.k_mu[k];
      T v = T(0);
      if (d < p.D && mu >= 0) {
        const int64_t base = mt.k_base[k];  // sass: weight=D/(NCHUNK*DK)
        if (base >= 0)
          v = p.data[base + __ldg(p.doff + d)];  // sass: weight=D/(NCHUNK*DK)
        else  // a patch across the border (edge groups; cold in the interior group counted)
          v = gather(p.data + mu * CHW, __ldg(dtab + d), mt.k_r[k], mt.k_c[k],  // sass: cold
                     ar, ac, p.H, p.W, scale_k);
      }
      Ks[k * ldk + dd] = v;
    }
  }
}

// acc[i][j] += sum over the chunk's entries dd < n of (q_dd - k_dd)^2 for the thread's RM x RN
// micro-tile. PARTIAL: the last chunk, whose entries n .. DK-1 are padding (zeros on both
// sides, which would add exact zeros): they are skipped (a uniform branch per entry).
// acc[i][j] += (q_d - k_d)^2 of entry d for the thread's RM x RN micro-tile (Qs, Ks: layout "dm").
template <typename T, int RM, int RN, int TQ, int TK>
__device__ __forceinline__ void accumulate_entry(T (&acc)[RM][RN], const T* Qs, const T* Ks, int tx, int ty, int d) {
  T qv[RM], kv[RN];
#pragma unroll
  for (int i = 0; i < RM; ++i) qv[i] = Qs[d * TQ + ty * RM + i];
#pragma unroll
  for (int j = 0; j < RN; ++j) kv[j] = Ks[d * TK + tx * RN + j];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < RN; ++j) {
      const T t = qv[i] - kv[j];
      acc[i][j] = fma(t, t, acc[i][j]);
    }
}

// acc[i][j] += sum over the chunk's entries dd < n of (q_dd - k_dd)^2 for the thread's RM x RN
// micro-tile. PARTIAL: the last chunk, whose entries n .. DK-1 are padding (zeros on both
// sides, which would add exact zeros): they are skipped (a uniform branch per entry).
template <typename T, int RM, int RN, int TQ, int TK, int DK, bool PARTIAL>
__device__ __forceinline__ void accumulate_chunk(T (&acc)[RM][RN], const T* Qs, const T* Ks, int tx, int ty, int n) {
#pragma unroll
  for (int dd = 0; dd < DK; ++dd) {
    if (PARTIAL && dd >= n) break;
    accumulate_entry<T, RM, RN, TQ, TK>(acc, Qs, Ks, tx, ty, dd);
  }
}

// acc += sum over entries [0, n) of (q_d - k_d)^2 (Qs, Ks: layout "dm"), eight entries per iteration.
template <typename T, int RM, int RN, int TQ, int TK>
__device__ __forceinline__ void accumulate_range(T (&acc)[RM][RN], const T* Qs, const T* Ks, int tx, int ty, int n) {
  const T* qp = Qs + ty * RM;  // walk the entries
  const T* kp = Ks + tx * RN;
  const T* const kend = Ks + n * TK;
#pragma unroll 1
  for (; kp + 7 * TK < kend; qp += 8 * TQ, kp += 8 * TK) {  // sass: trips=AMAIN
#pragma unroll
    for (int u = 0; u < 8; ++u) accumulate_entry<T, RM, RN, TQ, TK>(acc, qp, kp, 0, 0, u);
  }
#pragma unroll 1
  for (; kp < kend; qp += TQ, kp += TK) accumulate_entry<T, RM, RN, TQ, TK>(acc, qp, kp, 0, 0, 0);  // sass: trips=AREM
}

// Distance tile on CUDA cores, sum_d (q_d - k_d)^2 (weights folded in), entries in increasing d
// on every path (so every path gives the same bits). Output layout: QMAJOR, St[q * LDS + k] (the
// forward's epilogue reads a query's consecutive keys with vector loads); else St[k * LDS + q].
// q_resident: Qs holds the whole query patches (load_query_patches).
// WIDE (the forward): entries in ranges of DW = Cfg<T>::DQ (Qs and Ks hold TQ x DW and TK x DW),
// one range when D <= DW, no padded entries; St may alias Ks (it is written after the last read
// of Ks, behind a barrier); with ko->on (short patches, the forward's KeyEntryOffsets) the key
// entries come from load_key_patch_small into spare rows of Qs. Otherwise (the backward) chunks
// of DK entries.
// ADD (the paired machine): St = distance + add[i * RN + j], the thread's micro-tile of a second
// term (partner_tile), added once the patch distance is complete.
template <typename T, int CMAX, int TQ, int TK, int DK, int LDS, bool QMAJOR, bool WIDE, bool ADD = false>
__device__ void distance_tile_simt(T* St, T* Qs, T* Ks, const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p,
                                   const AxisPatch& ar, const AxisPatch& ac, bool q_resident,
                                   const KeyEntryOffsets<TK>* ko = nullptr, const T* add = nullptr) {
  constexpr int RM = TQ / 16, RN = TK / 16;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  T acc[RM][RN];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < RN; ++j) acc[i][j] = T(0);
  if constexpr (WIDE) {
    constexpr int DW = Cfg<T>::DQ;
    if (ko != nullptr && ko->on) {
      // Short patches, queries resident (KeyEntryOffsets): one range, no loop; the key entries go
      // to the rows of Qs past the query patches (D <= SMALL_ROWS), so St does not alias them and
      // needs no barrier between the last read of Ks and its store.
      T* const Kq = Qs + SMALL_ROWS * TQ;
      load_key_patch_small(Kq, mt, p, ar, ac, *ko);  // sass: weight=KSMALL
      __syncthreads();  // sass: weight=KSMALL
      accumulate_range<T, RM, RN, TQ, TK>(acc, Qs, Kq, tx, ty, p.D);  // sass: weight=KSMALL
    } else {
      for (int d0 = 0; d0 < p.D; d0 += DW) {  // sass: trips=NWIDE; weight=1-KSMALL
        const int n = p.D - d0 < DW ? p.D - d0 : DW;  // sass: weight=1-KSMALL
        if (!q_resident) load_query_range(Qs, mt, p, ar, ac, d0, n);  // sass: weight=(1-QRES)*(1-KSMALL)
        load_key_range(Ks, mt, p, ar, ac, d0, n);  // sass: weight=1-KSMALL
        __syncthreads();  // sass: weight=1-KSMALL
        accumulate_range<T, RM, RN, TQ, TK>(acc, q_resident ? Qs + d0 * TQ : Qs, Ks, tx, ty, n);  // sass: weight=1-KSMALL
        __syncthreads();  // sass: weight=1-KSMALL
      }
    }
  } else {
    for (int d0 = 0; d0 < p.D; d0 += DK) {  // sass: trips=NCHUNK
      load_chunk<T, CMAX, TQ, TK, DK, false>(Qs, Ks, TQ, TK, mt, p, ar, ac, d0, !q_resident, true);
      __syncthreads();
      const T* Qc = q_resident ? Qs + d0 * TQ : Qs;
      if (d0 + DK <= p.D)
        accumulate_chunk<T, RM, RN, TQ, TK, DK, false>(acc, Qc, Ks, tx, ty, DK);  // sass: weight=FULL/NCHUNK
      else
        accumulate_chunk<T, RM, RN, TQ, TK, DK, true>(acc, Qc, Ks, tx, ty, p.D - d0);  // sass: weight=PARTW
      __syncthreads();
    }
  }
  if constexpr (ADD) {
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) acc[i][j] += add[i * RN + j];
  }
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < RN; ++j) {
      if constexpr (QMAJOR)
        St[(ty * RM + i) * LDS + tx * RN + j] = acc[i][j];
      else
        St[(tx * RN + j) * LDS + ty * RM + i] = acc[i][j];
    }
  __syncthreads();
}

// Entries [0, n) of the table `tab` (dtab layout) of the window centred at (r, c) of `img` (has =
// false: the zero window) into X[d * ROWS + i], layout "dm", through gather(): window i = t % ROWS of
// the calling thread, its entries t / ROWS + j * STEP, four per iteration (independent loads).
// (The trip counts for bench/sass_count.py assume ROWS = TQ = TK, as for float.)
template <typename T, int ROWS>
__device__ __forceinline__ void load_window_range(T* X, const T* img, bool has, int r, int c, const int4* tab, int n,
                                                  const AxisPatch& ar, const AxisPatch& ac, int H, int W) {
  constexpr int STEP = kThreads / ROWS;
  static_assert(kThreads % ROWS == 0, "window-range mapping");
  const int first = threadIdx.x / ROWS;
  const int cnt = (n - first + STEP - 1) / STEP;  // the thread's entries (0 when first >= n)
  const int4* tp = tab + first;
  T* xp = X + threadIdx.x;  // entry first + j * STEP of window t % ROWS is at X[t + j * kThreads]
  int j = cnt;
#pragma unroll 1
  for (; j >= 4; j -= 4, tp += 4 * STEP, xp += 4 * kThreads) {  // sass: trips=GMAIN
#pragma unroll
    for (int u = 0; u < 4; ++u) xp[u * kThreads] = has ? gather(img, __ldg(tp + u * STEP), r, c, ar, ac, H, W, true) : T(0);
  }
#pragma unroll 1
  for (; j > 0; --j, tp += STEP, xp += kThreads) *xp = has ? gather(img, __ldg(tp), r, c, ar, ac, H, W, true) : T(0);  // sass: trips=GREM
}

// The partner term of the paired-patch machine (docs/theory.md §3.7) for the thread's RM x RN
// micro-tile: acc[i][j] = beta * sum_d2 (q2_d2 - k2_d2)^2 over the entries of the C x P2 x P2
// partner windows, the query's at query_partner(x) in z and the key's at key_partner(mu, u) in
// training image mu (-1: the zero window), read with the AxisPatch rule of P2 (zero extension or
// wrap, sqrt(multiplicity) folded into both sides, as the patch distance). The windows are
// gathered per key tile in ranges of Cfg<T>::DP entries into Q2 (TQ x DP) and K2 (TK x DP),
// layout "dm", and summed as accumulate_range sums (direct differences, entries in increasing
// d2, as the patch distance). Partners are arbitrary locations: no patch_corner fast path, every
// entry goes through gather(). Q2 and K2 may alias the distance tile (this runs before it).
template <typename T, int CMAX, int TQ, int TK>
__device__ void partner_tile(T (&acc)[TQ / 16][TK / 16], T* Q2, T* K2, const Meta<T, CMAX, TQ, TK>& mt,
                             const PatchParams<T>& p, const AxisPatch& ar2, const AxisPatch& ac2) {
  constexpr int RM = TQ / 16, RN = TK / 16, DP = Cfg<T>::DP;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < RN; ++j) acc[i][j] = T(0);
  const int64_t HW = static_cast<int64_t>(p.H) * p.W, CHW = p.C * HW;
  const int4* dtab2 = reinterpret_cast<const int4*>(p.dtab2);
  // The thread's query row and key (fixed over the ranges): image, partner row and column (-1: none).
  const int row = threadIdx.x % TQ, k = threadIdx.x % TK;
  const int qb = mt.q_b[row], kmu = mt.k_mu[k];
  const int64_t qloc = qb >= 0 ? p.qpartner[qb * HW + static_cast<int64_t>(mt.q_r[row]) * p.W + mt.q_c[row]] : -1;
  const int64_t kloc = kmu >= 0 ? p.kpartner[kmu * HW + static_cast<int64_t>(mt.k_r[k]) * p.W + mt.k_c[k]] : -1;
  // row and column of a partner: 32-bit divisions (a location is < H * W < 2^31), once per tile
  const int ql = qloc >= 0 ? static_cast<int>(qloc) : 0, kl = kloc >= 0 ? static_cast<int>(kloc) : 0;
  const int qr = ql / p.W, qc = ql - qr * p.W, kr = kl / p.W, kc = kl - kr * p.W;
  const T* zq = p.z + (qb >= 0 ? qb : 0) * CHW;
  const T* zk = p.data + (kmu >= 0 ? kmu : 0) * CHW;
  for (int d0 = 0; d0 < p.D2; d0 += DP) {  // sass: trips=NPART
    const int n = p.D2 - d0 < DP ? p.D2 - d0 : DP;
    load_window_range<T, TQ>(Q2, zq, qloc >= 0, qr, qc, dtab2 + d0, n, ar2, ac2, p.H, p.W);
    load_window_range<T, TK>(K2, zk, kloc >= 0, kr, kc, dtab2 + d0, n, ar2, ac2, p.H, p.W);
    __syncthreads();
    // accumulate_range's loop, written out so that bench/sass_count.py (which reads trip counts
    // per source line) can tell the partner ranges from the patch ranges
    const T* qp = Q2 + ty * RM;
    const T* kp = K2 + tx * RN;
    const T* const kend = K2 + n * TK;
#pragma unroll 1
    for (; kp + 7 * TK < kend; qp += 8 * TQ, kp += 8 * TK) {  // sass: trips=PMAIN
#pragma unroll
      for (int u = 0; u < 8; ++u) accumulate_entry<T, RM, RN, TQ, TK>(acc, qp, kp, 0, 0, u);
    }
#pragma unroll 1
    for (; kp < kend; qp += TQ, kp += TK) accumulate_entry<T, RM, RN, TQ, TK>(acc, qp, kp, 0, 0, 0);  // sass: trips=PREM
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < RN; ++j) acc[i][j] *= p.beta;
}

// sum_d (q_d - k_d)^2 of one (query row, key) pair, gathered from global memory: the
// tf32 path's fallback for pairs with a non-finite norm, so that NaN and inf give the same
// logit on every path (the rare case of non-finite inputs; never taken on finite data).
template <typename T, int CMAX, int TQ, int TK>
__device__ CF_NOINLINE T direct_distance(const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p,
                                          const AxisPatch& ar, const AxisPatch& ac, int row, int k) {
  const int64_t CHW = static_cast<int64_t>(p.C) * p.H * p.W;
  const int4* dtab = reinterpret_cast<const int4*>(p.dtab);
  const T* zq = p.z + mt.q_b[row] * CHW;
  const T* zk = p.data + mt.k_mu[k] * CHW;
  T acc = T(0);
  for (int d = 0; d < p.D; ++d) {
    const int4 t = __ldg(dtab + d);
    const T diff = gather(zq, t, mt.q_r[row], mt.q_c[row], ar, ac, p.H, p.W, true) -
                   gather(zk, t, mt.k_r[k], mt.k_c[k], ar, ac, p.H, p.W, true);
    acc = fma(diff, diff, acc);
  }
  return acc;
}

// Cross-term tile on tensor cores (float only, sm_80+): St[q * LDS + k] = <q, k> in tf32 with
// fp32 accumulation; qn[q] = |q|^2 and kn[k] = |k|^2 in fp32 from the unrounded values.
template <int CMAX, int LDS>
__device__ void cross_tile_tf32(float* St, float* Qs, float* Ks, float* qn, float* kn,
                                const Meta<float, CMAX, 64, 64>& mt, const PatchParams<float>& p, const AxisPatch& ar,
                                const AxisPatch& ac) {
#if CF_HAS_TF32_MMA
  using namespace nvcuda;
  constexpr int TQ = 64, TK = 64, DK = Cfg<float>::DK, LDK = DK + 4;
  const int warp = threadIdx.x / 32;
  const int wr = warp % 4;          // 16-row block of queries
  const int wc = (warp / 4) * 2;    // first of two 16-column blocks of keys
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> c0, c1;
  wmma::fill_fragment(c0, 0.0f);
  wmma::fill_fragment(c1, 0.0f);
  float norm = 0.0f;
  for (int d0 = 0; d0 < p.D; d0 += DK) {  // sass: trips=NCHUNK
    load_chunk<float, CMAX, TQ, TK, DK, true>(Qs, Ks, LDK, LDK, mt, p, ar, ac, d0, true, true);
    __syncthreads();
    if (threadIdx.x < TQ) {
      for (int dd = 0; dd < DK; ++dd)  // sass: weight=TQ/THREADS; trips=DK
        norm = fmaf(Qs[threadIdx.x * LDK + dd], Qs[threadIdx.x * LDK + dd], norm);  // sass: weight=TQ/THREADS
    } else if (threadIdx.x < TQ + TK) {
      const int k = threadIdx.x - TQ;
      for (int dd = 0; dd < DK; ++dd)  // sass: weight=TK/THREADS; trips=DK
        norm = fmaf(Ks[k * LDK + dd], Ks[k * LDK + dd], norm);  // sass: weight=TK/THREADS
    }
#pragma unroll
    for (int kk = 0; kk < DK; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b0, b1;
      wmma::load_matrix_sync(a, Qs + wr * 16 * LDK + kk, LDK);
      wmma::load_matrix_sync(b0, Ks + wc * 16 * LDK + kk, LDK);
      wmma::load_matrix_sync(b1, Ks + (wc + 1) * 16 * LDK + kk, LDK);
#pragma unroll
      for (int i = 0; i < a.num_elements; ++i) a.x[i] = wmma::__float_to_tf32(a.x[i]);
#pragma unroll
      for (int i = 0; i < b0.num_elements; ++i) {
        b0.x[i] = wmma::__float_to_tf32(b0.x[i]);
        b1.x[i] = wmma::__float_to_tf32(b1.x[i]);
      }
      wmma::mma_sync(c0, a, b0, c0);
      wmma::mma_sync(c1, a, b1, c1);
    }
    __syncthreads();
  }
  // Row-major store: element (query i, key j) lands at St[query * LDS + key].
  wmma::store_matrix_sync(St + wr * 16 * LDS + wc * 16, c0, LDS, wmma::mem_row_major);
  wmma::store_matrix_sync(St + wr * 16 * LDS + (wc + 1) * 16, c1, LDS, wmma::mem_row_major);
  if (threadIdx.x < TQ)
    qn[threadIdx.x] = norm;
  else if (threadIdx.x < TQ + TK)
    kn[threadIdx.x - TQ] = norm;
  __syncthreads();
#else
  __trap();  // the host selects this path only on sm_80 and newer
#endif
}

// ---------------------------------------------------------------------------------------
// Streaming softmax of one tile: thread (row, part) folds its KPT keys k0 .. k0 + KPT - 1 of the
// distance tile into its running state (logits in LogitUnit).

// The new best key of a tile (rare after the first tiles: cold for bench/sass_count.py): the
// lowest key id among the logits equal to lmax (keys ascend).
template <typename T, int CMAX, int KPT, int TQ, int TK>
__device__ __forceinline__ void take_best(State<T, CMAX>& st, const T (&lv)[KPT], T lmax,
                                          const Meta<T, CMAX, TQ, TK>& mt, int k0, int64_t HW, int W) {
  int kbest = k0;
#pragma unroll
  for (int j = KPT - 1; j >= 0; --j)
    if (lv[j] == lmax) kbest = k0 + j;
  st.best = lmax;
  st.id = static_cast<int64_t>(mt.k_mu[kbest]) * HW + static_cast<int64_t>(mt.k_r[kbest]) * W + mt.k_c[kbest];
}

// A new running maximum (rare after the first tiles): rescale the sums.
template <typename T, int CMAX>
__device__ __forceinline__ void raise_max(State<T, CMAX>& st, T lmax) {
  const T r = unit_exp(st.m - lmax);  // exp(-inf) = 0 on the first finite logit
  st.s *= r;
#pragma unroll
  for (int c = 0; c < CMAX; ++c) st.acc[c] *= r;
  st.m = lmax;
}

// Any tile: logit l = -dist * scale + k_logw (padding keys: k_logw = -inf), weight ex2(l - m).
// dist_row: St + row * LDS (query-major tile); tf32: dist = |q|^2 + |k|^2 - 2 <q, k>.
template <typename T, int CMAX, int KPT, bool TF32, int TQ, int TK>
__device__ __forceinline__ void tile_softmax_general(State<T, CMAX>& st, const T* dist_row, const T* qn, const T* kn,
                                                     const Meta<T, CMAX, TQ, TK>& mt, const PatchParams<T>& p,
                                                     const AxisPatch& ar, const AxisPatch& ac, int row, int k0,
                                                     T scale, int64_t HW) {
  T lv[KPT];
  T lmax = neg_inf<T>();
#pragma unroll
  for (int j = 0; j < KPT; ++j) {
    const int k = k0 + j;
    T dist = dist_row[k];
    if constexpr (TF32) {
      const T norms = qn[row] + kn[k];
      if (isfinite(norms)) {
        dist = norms - T(2) * dist;
        dist = dist < T(0) ? T(0) : dist;  // clamps rounding below 0; keeps a NaN a NaN
      } else if (mt.q_b[row] >= 0 && mt.k_mu[k] >= 0) {
        // A non-finite entry (or an overflowing norm): the expanded form cannot tell an
        // infinite distance from an undefined one, so evaluate the pair as the fp32 path does.
        dist = direct_distance(mt, p, ar, ac, row, k);  // sass: cold
      } else {
        dist = T(0);  // a padding key (or row): any finite distance; its logit is k_logw = -inf
      }
    }
    // padding keys have k_logw = -inf (and a finite distance unless the query is NaN or
    // infinite, when every real key of the row is NaN or infinitely far too)
    const T l = -dist * scale + mt.k_logw[k];
    lv[j] = l;
    lmax = fmax(lmax, l);  // a NaN logit is no maximum (as `l > lmax` would skip it)
  }
  if (lmax > st.best) take_best(st, lv, lmax, mt, k0, HW, p.W);  // sass: cold
  if (lmax > st.m) raise_max(st, lmax);  // sass: cold
  if (st.m > neg_inf<T>()) {
#pragma unroll
    for (int j = 0; j < KPT; ++j) {
      const T w = unit_exp(lv[j] - st.m);
      st.s += w;
#pragma unroll
      for (int c = 0; c < CMAX; ++c) st.acc[c] = fma(w, mt.k_centre[c][k0 + j], st.acc[c]);
    }
  } else {
    // No finite logit yet (cold: only before the first one). A NaN logit must still
    // poison the sum, so that x0_hat and lse are NaN as in the reference, not "no key".
#pragma unroll
    for (int j = 0; j < KPT; ++j)
      if (lv[j] != lv[j]) st.s = lv[j];  // sass: cold
  }
}

// A full tile without a log prior: every logit is l = -dist * scale (rounded as in
// tile_softmax_general, whose `+ 0` is exact), so the tile maximum is -min(dist) * scale (rounding
// is monotone, so this is the maximum of the rounded logits, ties and NaN as there: fmin skips a
// NaN as fmax does) and each weight is ex2(fma(-dist, scale, -m)): one fma per pair for the logit
// and its shift, one rounding instead of two. The best key and the maximum are those of the
// general path bit for bit; the weights differ by the rounding of the logit (csrc/cuda/NOTES.md,
// "Rounding of the base-2 logits").
template <typename T, int CMAX, int KPT, int TQ, int TK>
__device__ __forceinline__ void tile_softmax_plain(State<T, CMAX>& st, const T* dist_row,
                                                   const Meta<T, CMAX, TQ, TK>& mt, int k0, T scale, int64_t HW,
                                                   int W) {
  T dv[KPT];
  T dmin = static_cast<T>(INFINITY);
#pragma unroll
  for (int j = 0; j < KPT; ++j) {
    dv[j] = dist_row[k0 + j];
    dmin = fmin(dmin, dv[j]);
  }
  const T lmax = -dmin * scale;
  if (lmax > st.best || lmax > st.m || !(st.m > neg_inf<T>())) {  // rare after the first tiles
    T lv[KPT];  // sass: cold
#pragma unroll
    for (int j = 0; j < KPT; ++j) lv[j] = -dv[j] * scale;  // sass: cold
    if (lmax > st.best) take_best(st, lv, lmax, mt, k0, HW, W);  // sass: cold
    if (lmax > st.m) raise_max(st, lmax);  // sass: cold
    if (!(st.m > neg_inf<T>())) {
      // no finite logit yet: a NaN logit still poisons the sum (as in tile_softmax_general)
#pragma unroll
      for (int j = 0; j < KPT; ++j)
        if (lv[j] != lv[j]) st.s = lv[j];  // sass: cold
      return;  // sass: cold
    }
  }
  const T nm = -st.m;
#pragma unroll
  for (int j = 0; j < KPT; ++j) {
    const T w = unit_exp(fma(-dv[j], scale, nm));
    st.s += w;
#pragma unroll
    for (int c = 0; c < CMAX; ++c) st.acc[c] = fma(w, mt.k_centre[c][k0 + j], st.acc[c]);
  }
}

// ---------------------------------------------------------------------------------------
// Forward kernel.

// PAIRED: the paired-patch machine (docs/theory.md §3.7), CUDA cores only: each key tile first
// computes the partner term (partner_tile) into registers, then the patch distance tile adds it
// (distance = patch distance + beta * partner distance); the softmax epilogue is the same. Its
// partner micro-tile stays live across the patch distance: 3 blocks per SM at C = 1 (4 capped
// ptxas at 64 registers and spilled 12 bytes).
template <typename T, int CMAX, bool TF32, bool PAIRED = false>
__global__ void __launch_bounds__(kThreads, TF32 || sizeof(T) != 4 ? 1 : CMAX == 1 && !PAIRED ? 4 : 3) forward_kernel(const PatchParams<T> p) {
  constexpr int TQ = Cfg<T>::TQ, TK = Cfg<T>::TK, DK = Cfg<T>::DK;
  constexpr int PARTS = kThreads / TQ, KPT = TK / PARTS;
  // St[q * LDS + k], query-major: a thread's KPT consecutive keys are read with 16-byte loads; the
  // pad of 16 bytes per row keeps those loads (and wmma's row-major store) aligned and
  // conflict-free.
  constexpr int LDS = TK + 16 / static_cast<int>(sizeof(T));
  constexpr int QS = TF32 ? TQ * (DK + 4) : TQ * Cfg<T>::DQ;
  constexpr int KS = TF32 ? TK * (DK + 4) : TK * Cfg<T>::DQ;  // CUDA cores: ranges of DQ entries (distance_tile_simt)
  constexpr int SK = TQ * LDS > KS ? TQ * LDS : KS;
  static_assert(!TF32 || (TQ == 64 && TK == 64), "the tf32 tiling is 64 x 64");
  static_assert(!(TF32 && PAIRED), "the paired machine runs on CUDA cores");
  static_assert(PARTS * TQ == kThreads && KPT * PARTS == TK, "epilogue mapping");
  static_assert((3 + CMAX) * kThreads <= TQ * LDS, "partial-state reduction reuses the distance tile");
  if (p.path != nullptr && (*p.path != 0) != TF32) return;  // the device chose the other path (uniform)

  // The distance tile and the key entries share one buffer: every path writes St after its last
  // read of Ks, behind a barrier, and the next tile reloads Ks after the epilogue's barrier.
  __shared__ __align__(128) T StKs[SK];
  __shared__ __align__(128) T Qs[QS];
  T* const St = StKs;
  T* const Ks = StKs;
  __shared__ T qn[TF32 ? TQ : 1], kn[TF32 ? TK : 1];
  __shared__ Meta<T, CMAX, TQ, TK> mt;
  __shared__ int64_t red_id[kThreads];

  const WorkItem wi = p.work[blockIdx.x];
  const GroupInfo g = p.groups[wi.group];
  const AxisPatch ar(p.P, p.H, p.boundary), ac(p.P, p.W, p.boundary);
  const AxisPatch ar2(PAIRED ? p.P2 : 1, p.H, p.boundary), ac2(PAIRED ? p.P2 : 1, p.W, p.boundary);
  const int row = threadIdx.x % TQ, part = threadIdx.x / TQ;
  const KeyIndex kx(g);
  const int64_t HW = static_cast<int64_t>(p.H) * p.W;
  static_assert(!PAIRED || (TQ + TK) * Cfg<T>::DP <= SK, "partner windows share the distance tile's buffer");

  load_queries(mt, p, g, wi.q0, ar, ac);
  State<T, CMAX> st;
  st.init();
  __syncthreads();
  const T scale = mt.q_scale[row];
  const bool q_resident = !TF32 && p.D <= Cfg<T>::DQ;
  if (q_resident) load_query_patches(Qs, mt, p, ar, ac);  // ordered before use by the tile's first barrier
  // (queries resident in their first SMALL_ROWS rows, and the rows that load_key_patch_small writes
  // after them inside Qs)
  const KeyEntryOffsets<TK> ko(p.doff, p.D, q_resident && p.D <= SMALL_ROWS &&
                                                SMALL_ROWS * TQ + 4 * kThreads <= QS);

  for (int64_t kstart = wi.k0; kstart < wi.k1; kstart += TK) {  // sass: tile=TQ*TK/THREADS
    load_keys(mt, p, kx, kstart, wi.k1, ar, ac);
    __syncthreads();
    if constexpr (TF32) {
      cross_tile_tf32<CMAX, LDS>(St, Qs, Ks, qn, kn, mt, p, ar, ac);  // only instantiated for float
    } else if constexpr (PAIRED) {
      T pt[TQ / 16][TK / 16];
      partner_tile<T, CMAX, TQ, TK>(pt, StKs, StKs + TQ * Cfg<T>::DP, mt, p, ar2, ac2);
      distance_tile_simt<T, CMAX, TQ, TK, DK, LDS, true, true, true>(St, Qs, Ks, mt, p, ar, ac, q_resident, nullptr,
                                                                     &pt[0][0]);
    } else {
      distance_tile_simt<T, CMAX, TQ, TK, DK, LDS, true, true>(St, Qs, Ks, mt, p, ar, ac, q_resident, &ko);
    }

    // Online softmax over this thread's KPT keys of the tile.
    if (!TF32 && p.logw == nullptr && kstart + TK <= wi.k1) {
      // A full tile without a log prior (sass_count's case): every logit is -dist * scale, so
      // the tile maximum is -min(dist) * scale (rounding is monotone: the same value as the
      // maximum of the rounded logits) and each weight is one fma, ex2(-dist * scale - m), with
      // one rounding instead of two (docs: csrc/cuda/NOTES.md, "Rounding of the base-2 logits").
      tile_softmax_plain<T, CMAX, KPT>(st, St + row * LDS, mt, part * KPT, scale, HW, p.W);  // sass: weight=PLAIN
    } else {
      tile_softmax_general<T, CMAX, KPT, TF32>(st, St + row * LDS, qn, kn, mt, p, ar, ac, row, part * KPT, scale, HW);  // sass: weight=1-PLAIN
    }
    __syncthreads();  // St, Qs, Ks and the key metadata are rewritten by the next tile
  }

  // Merge the PARTS states of each query row (in part order), write one partial entry.
  T* red = St;  // [3 + CMAX][kThreads]
  red[0 * kThreads + threadIdx.x] = st.m;
  red[1 * kThreads + threadIdx.x] = st.s;
  red[2 * kThreads + threadIdx.x] = st.best;
#pragma unroll
  for (int c = 0; c < CMAX; ++c) red[(3 + c) * kThreads + threadIdx.x] = st.acc[c];
  red_id[threadIdx.x] = st.id;
  __syncthreads();
  if (part == 0 && mt.q_b[row] >= 0) {
    for (int o = 1; o < PARTS; ++o) {
      const int t = o * TQ + row;
      T acc2[CMAX];
#pragma unroll
      for (int c = 0; c < CMAX; ++c) acc2[c] = red[(3 + c) * kThreads + t];
      st.merge(red[t], red[kThreads + t], acc2, red[2 * kThreads + t], red_id[t]);
    }
    const int64_t e = g.part + wi.split * g.nq + wi.q0 + row;
    p.pm[e] = st.m;
    p.ps[e] = st.s;
    p.pbest[e] = st.best;
    p.pid[e] = st.id;
#pragma unroll
    for (int c = 0; c < CMAX; ++c)
      if (c < p.C) p.pacc[e * p.C + c] = st.acc[c];
  }
}

// One thread per output pixel: merge the splits of its query in order, finalise.
template <typename T>
__global__ void merge_kernel(const PatchParams<T> p, T* x0, T* lse, int64_t* best) {
  constexpr int CMAX = 4;
  const int64_t HW = static_cast<int64_t>(p.H) * p.W;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.B * HW) return;
  const int b = static_cast<int>(idx / HW), pix = static_cast<int>(idx % HW);
  const int r = pix / p.W, c = pix % p.W;
  const GroupInfo g = p.groups[p.rowclass[r] * p.ncolclass + p.colclass[c]];
  const int64_t q = (b * g.nr + (r - g.r0)) * g.nc + (c - g.c0);
  State<T, CMAX> st;
  st.init();
  for (int64_t s = 0; s < g.nsplit; ++s) {
    const int64_t e = g.part + s * g.nq + q;
    T acc2[CMAX];
#pragma unroll
    for (int ch = 0; ch < CMAX; ++ch) acc2[ch] = ch < p.C ? p.pacc[e * p.C + ch] : T(0);
    st.merge(p.pm[e], p.ps[e], acc2, p.pbest[e], p.pid[e]);
  }
#pragma unroll
  for (int ch = 0; ch < CMAX; ++ch)
    if (ch < p.C) x0[(static_cast<int64_t>(b) * p.C + ch) * HW + pix] = st.acc[ch] / st.s;
  lse[idx] = st.m * LogitUnit<T>::kLn2 + log(st.s);  // the states' logits are in LogitUnit
  if (best != nullptr) best[idx] = st.id;
}

// ---------------------------------------------------------------------------------------
// Backward kernel: per query, A = sum_k a_k K_k and S = sum_k a_k with
// a_k = exp(l_k - lse) * (g . c_k - g . x0_hat).

template <typename T, int CMAX>
__global__ void __launch_bounds__(kThreads, 3) backward_kernel(const PatchParams<T> p) {
  constexpr int TQ = Cfg<T>::TQ, TK = Cfg<T>::TK, DK = Cfg<T>::DK;
  constexpr int PARTS = kThreads / TQ, KPT = TK / PARTS, LDS = TQ + 1;
  static_assert(DK % PARTS == 0, "A-pass mapping");

  __shared__ __align__(128) T St[TK * LDS];
  __shared__ __align__(128) T Qs[TQ * Cfg<T>::DQ];
  __shared__ __align__(128) T Ks[TK * DK];
  __shared__ Meta<T, CMAX, TQ, TK> mt;
  __shared__ T q_g[CMAX][TQ], q_gx0[TQ], q_lse[TQ];

  const WorkItem wi = p.work[blockIdx.x];
  const GroupInfo g = p.groups[wi.group];
  const AxisPatch ar(p.P, p.H, p.boundary), ac(p.P, p.W, p.boundary);
  const int row = threadIdx.x % TQ, part = threadIdx.x / TQ;
  const KeyIndex kx(g);
  const int64_t HW = static_cast<int64_t>(p.H) * p.W;

  load_queries(mt, p, g, wi.q0, ar, ac);
  __syncthreads();
  for (int i = threadIdx.x; i < TQ; i += blockDim.x) {
    const int b = mt.q_b[i];
    const int64_t pix = static_cast<int64_t>(mt.q_r[i]) * p.W + mt.q_c[i];
    const bool ok = b >= 0;
#pragma unroll
    for (int ch = 0; ch < CMAX; ++ch)
      q_g[ch][i] = ok && ch < p.C ? p.grad[(static_cast<int64_t>(b) * p.C + ch) * HW + pix] : T(0);
    q_gx0[i] = ok ? p.gx0[b * HW + pix] : T(0);
    q_lse[i] = ok ? p.lse[b * HW + pix] : neg_inf<T>();
  }
  __syncthreads();
  const T scale = mt.q_scale[row], lse_q = q_lse[row] * LogitUnit<T>::kPerNat, gx0_q = q_gx0[row];
  const bool live = mt.q_b[row] >= 0 && lse_q > neg_inf<T>();
  const bool q_resident = p.D <= Cfg<T>::DQ;
  if (q_resident) load_query_patches(Qs, mt, p, ar, ac);  // ordered before use by the tile's first barrier
  T gq[CMAX];
#pragma unroll
  for (int ch = 0; ch < CMAX; ++ch) gq[ch] = q_g[ch][row];
  const int64_t e = g.part + wi.split * g.nq + wi.q0 + row;
  T ssum = T(0);

  for (int64_t kstart = wi.k0; kstart < wi.k1; kstart += TK) {  // sass: tile=TQ*TK/THREADS
    load_keys(mt, p, kx, kstart, wi.k1, ar, ac);
    __syncthreads();
    distance_tile_simt<T, CMAX, TQ, TK, DK, LDS, false, false>(St, Qs, Ks, mt, p, ar, ac, q_resident);
    // Coefficients a_k, in place of the distances.
#pragma unroll
    for (int j = 0; j < KPT; ++j) {
      const int k = part * KPT + j;
      T a = T(0);
      if (live && mt.k_mu[k] >= 0) {
        const T l = -St[k * LDS + row] * scale + mt.k_logw[k];
        T sdot = -gx0_q;
#pragma unroll
        for (int ch = 0; ch < CMAX; ++ch) sdot = fma(gq[ch], mt.k_centre[ch][k], sdot);
        a = unit_exp(l - lse_q) * sdot;
      }
      St[k * LDS + row] = a;
      ssum += a;
    }
    __syncthreads();
    // A[q, d] += sum_k a[q, k] K[k, d] (unweighted key entries), chunk by chunk.
    for (int d0 = 0; d0 < p.D; d0 += DK) {  // sass: trips=NCHUNK
      load_chunk<T, CMAX, TQ, TK, DK, false>(Qs, Ks, TQ, TK, mt, p, ar, ac, d0, false, false);
      __syncthreads();
      // The thread's entries dd = part + PARTS * s of the chunk, s < NS, in registers: each
      // coefficient a[q, k] is loaded once for all of them (each sum still runs over k in order).
      constexpr int NS = DK / PARTS;
      if (d0 + DK <= p.D) {
        T o[NS];
#pragma unroll
        for (int s = 0; s < NS; ++s) o[s] = T(0);  // sass: weight=FULL/NCHUNK
#pragma unroll 4
        for (int k = 0; k < TK; ++k) {  // sass: trips=TK/4; weight=FULL/NCHUNK
          const T a = St[k * LDS + row];  // sass: weight=FULL/NCHUNK
#pragma unroll
          for (int s = 0; s < NS; ++s) o[s] = fma(a, Ks[(part + PARTS * s) * TK + k], o[s]);  // sass: weight=FULL/NCHUNK
        }
        if (mt.q_b[row] >= 0) {
#pragma unroll
          for (int s = 0; s < NS; ++s) p.pA[e * p.D + d0 + part + PARTS * s] += o[s];  // sass: weight=FULL/NCHUNK
        }
      } else {
#pragma unroll
        for (int s = 0; s < NS; ++s) {
          const int dd = part + PARTS * s;
          if (d0 + dd >= p.D) break;  // the last chunk's padding: nothing to write (uniform per warp)
          T o = T(0);  // sass: weight=PARTW
#pragma unroll 8
          for (int k = 0; k < TK; ++k)  // sass: trips=TK/8; weight=PARTW
            o = fma(St[k * LDS + row], Ks[dd * TK + k], o);  // sass: weight=PARTW
          if (mt.q_b[row] >= 0) p.pA[e * p.D + d0 + dd] += o;  // sass: weight=PARTW
        }
      }
      __syncthreads();
    }
  }
  // S: sum the PARTS partial sums of each row in part order.
  St[threadIdx.x] = ssum;
  __syncthreads();
  if (part == 0 && mt.q_b[row] >= 0) {
    T total = St[row];
    for (int o = 1; o < PARTS; ++o) total += St[o * TQ + row];
    p.pS[e] = total;
  }
}

// One thread per z pixel: grad_z(p) = sum over (query x, entry d) with source(x, d) = p of
// (mult_d / sigma^2) (A_x[d] - z(p) S_x), summed over the key splits of each query.
template <typename T>
__global__ void adjoint_kernel(const PatchParams<T> p, T* grad_z) {
  const int64_t HW = static_cast<int64_t>(p.H) * p.W;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.B * p.C * HW) return;
  const int b = static_cast<int>(idx / (p.C * HW));
  const int ch = static_cast<int>((idx / HW) % p.C);
  const int pix = static_cast<int>(idx % HW), pr = pix / p.W, pc = pix % p.W;
  const AxisPatch ar(p.P, p.H, p.boundary), ac(p.P, p.W, p.boundary);
  const bool circ = p.boundary == Boundary::Circular;
  const T zval = p.z[idx];
  T total = T(0);
  for (int i = 0; i < ar.count; ++i) {
    int xr = pr - ar.offset(i);
    if (circ) {
      xr = ((xr % p.H) + p.H) % p.H;
    } else if (xr < 0 || xr >= p.H) {
      continue;
    }
    for (int j = 0; j < ac.count; ++j) {
      int xc = pc - ac.offset(j);
      if (circ) {
        xc = ((xc % p.W) + p.W) % p.W;
      } else if (xc < 0 || xc >= p.W) {
        continue;
      }
      const GroupInfo g = p.groups[p.rowclass[xr] * p.ncolclass + p.colclass[xc]];
      const int64_t q = (b * g.nr + (xr - g.r0)) * g.nc + (xc - g.c0);
      const int64_t d = (static_cast<int64_t>(ch) * ar.count + i) * ac.count + j;
      T a = T(0), s = T(0);
      for (int64_t sp = 0; sp < g.nsplit; ++sp) {
        const int64_t e = g.part + sp * g.nq + q;
        a += p.pA[e * p.D + d];
        s += p.pS[e];
      }
      total += static_cast<T>(ar.weight(i) * ac.weight(j)) * (a - zval * s);
    }
  }
  grad_z[idx] = total * (T(2) * p.inv2s2[b]);
}

}  // namespace detail
}  // namespace cuda
}  // namespace creativity_fast
