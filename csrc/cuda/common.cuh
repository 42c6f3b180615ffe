// Shared declarations of the CUDA kernels of creativity_fast (docs/theory.md §4, §9).
//
// The kernels (patch_kernels.cu, ideal_kernels.cu, patch_argmax_attention.cu) include only
// CUDA headers and csrc/dictionary.h, and take raw pointers; the torch glue (ops_cuda.cu)
// checks the inputs, builds the work plan, allocates and launches. See NOTES.md for the design.
#pragma once

#if !defined(CF_CUDA_EMULATION)
#include <cuda_runtime.h>  // cudaError_t, cudaStream_t (the CPU emulator defines its own)
#endif

#include <cstdint>

#include "dictionary.h"

namespace creativity_fast {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of every tiled kernel

// Tile shape per scalar type: TQ query pixels x TK keys per tile, DK patch entries per
// shared-memory chunk; query patches of at most DQ entries stay in shared memory for the whole
// block (gathered once, not per key tile). double halves TK so that static shared memory
// stays < 48 KiB.
template <typename T>
struct Cfg;
template <>
struct Cfg<float> {
  static constexpr int TQ = 64, TK = 64, DK = 16, DQ = 64;
  static constexpr int DP = 32;  // partner-window entries per range (paired machine; fits the distance tile)
};
template <>
struct Cfg<double> {
  static constexpr int TQ = 64, TK = 32, DK = 8, DQ = 16;
  static constexpr int DP = 16;
};

// Query pixels are split into groups with one shared key rectangle (dictionary.h:
// the admissible centres of a position form a range that depends only on the
// position's class). All fields int64 so the host packs groups into one buffer.
struct GroupInfo {
  int64_t r0, nr, c0, nc;      // query rows [r0, r0+nr), query cols [c0, c0+nc)
  int64_t rlo, nrk, clo, nck;  // key centre rows [rlo, rlo+nrk), cols [clo, clo+nck)
  int64_t nq;                  // queries  B * nr * nc   (q = (b*nr + r-r0)*nc + c-c0)
  int64_t nk;                  // keys     N * nrk * nck (k = (mu*nrk + r'-rlo)*nck + c'-clo)
  int64_t nsplit;              // key ranges; each gives one partial softmax state per query
  int64_t part;                // partial entry of (split s, query q) = part + s*nq + q
};
static_assert(sizeof(GroupInfo) == 12 * sizeof(int64_t), "GroupInfo is packed as int64");

// One block: queries [q0, q0+TQ) of a group against its keys [k0, k1).
struct WorkItem {
  int64_t group, q0, k0, k1, split, pad;
};
static_assert(sizeof(WorkItem) == 6 * sizeof(int64_t), "WorkItem is packed as int64");

// Arguments of the patch kernels (modes local and els).
template <typename T>
struct PatchParams {
  const T* z = nullptr;       // [B, C, H, W]
  const T* data = nullptr;    // [N, C, H, W]
  const T* inv2s2 = nullptr;  // [B] 1 / (2 sigma^2)
  const T* logw = nullptr;    // [N, H, W] log prior per key, or nullptr
  const int* dtab = nullptr;  // [D][4] patch entry d -> (channel, row offset i, col offset j, multiplicity)
  const int* doff = nullptr;  // [D] (channel * H + i) * W + j: entry d's offset from a patch's first entry
  const GroupInfo* groups = nullptr;
  const WorkItem* work = nullptr;
  const int* rowclass = nullptr;  // [H] row class of a query row
  const int* colclass = nullptr;  // [W]
  int ncolclass = 0;              // group of pixel (r, c) = rowclass[r] * ncolclass + colclass[c]
  // forward, automatic precision decided on the device (ops_impl.cuh: choose_tf32): 1 tf32, 0
  // fp32; both instantiations are launched and the blocks of the other one return at once.
  // nullptr: the launched instantiation runs.
  const int* path = nullptr;
  int B = 0, C = 0, H = 0, W = 0, N = 0, D = 0, P = 0;
  Boundary boundary = Boundary::Zeros;
  // forward partial states, entry e: m, s, acc[e*C + c], best logit, best key id
  T* pm = nullptr;
  T* ps = nullptr;
  T* pacc = nullptr;
  T* pbest = nullptr;
  int64_t* pid = nullptr;
  // backward: upstream gradient, g.x0_hat per pixel [B,H,W], lse [B,H,W];
  // partial sums pA[e*D + d] = sum_k a_k K_k[d] and pS[e] = sum_k a_k
  const T* grad = nullptr;
  const T* gx0 = nullptr;
  const T* lse = nullptr;
  T* pA = nullptr;
  T* pS = nullptr;
  // paired-patch machine (docs/theory.md §3.7; forward only): partner maps of flat locations
  // (-1: none, the zero window), the P2 x P2 window's entry table (as dtab), D2 entries, beta
  const int64_t* qpartner = nullptr;  // [B, H, W]
  const int64_t* kpartner = nullptr;  // [N, H, W]
  const int* dtab2 = nullptr;         // [D2][4]
  int P2 = 0, D2 = 0;
  T beta = T(0);
};

// Arguments of the ideal-machine kernels (whole images).
template <typename T>
struct IdealParams {
  const T* z = nullptr;       // [B, CHW]
  const T* data = nullptr;    // [N, CHW]
  const T* inv2s2 = nullptr;  // [B]
  const T* logw = nullptr;    // [N] or nullptr
  const T* lse = nullptr;     // [B] (accumulation passes)
  const T* grad = nullptr;    // [B, CHW] (backward)
  const T* gx0 = nullptr;     // [B] <grad, x0_hat> (backward)
  int B = 0, N = 0;
  int64_t CHW = 0;
  int nsplit = 0;        // images [s*per, (s+1)*per) per split
  int64_t per = 0;
  // partial slot = split * kIdealWarps + warp; arrays [slots, B] (and [slots, B, CHW])
  T* pm = nullptr;
  T* ps = nullptr;
  T* pbest = nullptr;
  int64_t* pid = nullptr;
  T* pacc = nullptr;
  T* pS = nullptr;
};
constexpr int kIdealWarps = kThreads / 32;

// Arguments of the argmax attention kernel (patch_argmax_attention.cuh; docs/theory.md §3.4). Scores,
// partial states and the centre are float64 whatever the image dtype (as in the CPU kernel).
constexpr int kAttnThreads = 256;  // threads per block of the attention kernel
constexpr int kAttnMaxK = 8;       // displacement tables built and consumed per block barrier round

template <typename T>
struct AttentionParams {
  const T* images = nullptr;       // [M, C, H, W]
  const double* center = nullptr;  // [C, P, P]
  const int* disp = nullptr;       // [ndisp][2] displacements (dr, dc) of one half plane, admissible, CPU order
  int M = 0, C = 0, H = 0, W = 0, P = 0;
  int ndisp = 0;
  int nsplit = 1;  // work item (image i, split s): the displacements [s*per, (s+1)*per); split 0 also d = 0
  int per = 0;
  int K = 1;             // tables per round (<= kAttnMaxK)
  bool self = false;     // exclude <= 0: the pair (x, x) is admissible
  double tau = -1.0;     // > 0: soft attention
  double* scratch = nullptr;   // per-block scratch in global memory (nullptr: dynamic shared memory)
  int64_t scratch_stride = 0;  // doubles per block of `scratch`
  // partial states per (split, image, pixel): index (s * M + i) * HW + x
  double* pbest = nullptr;     // best score (phases 0, 1)
  int64_t* parg = nullptr;     // its key y, -1 if none (phases 0, 1)
  double* pmax = nullptr;      // running max of s / tau (phase 1)
  double* psum = nullptr;      // sum of exp(s / tau - max) (phase 1)
  const double* lse = nullptr; // [M, HW] row log-normaliser (phase 2)
  double* pcol = nullptr;      // column sums of the row softmax (phase 2)
};

// Scratch of one attention block, in doubles (followed by HW int32): the image, a(u), the
// per-pixel states (1 hard, 3 soft) and K prefix-sum tables of (H+1) x (W+1).
inline int64_t attention_scratch_doubles(int C, int H, int W, bool soft, int K) {
  const int64_t HW = int64_t(H) * W;
  return int64_t(C) * HW + HW * (soft ? 4 : 2) + int64_t(K) * (H + 1) * (W + 1) + (HW + 1) / 2;
}

// Launchers: return cudaGetLastError() of the launch. cmax is 1 or 4 (channels held in
// registers; the glue checks C <= 4 for the patch modes).
template <typename T>
cudaError_t launch_patch_forward(const PatchParams<T>& p, int64_t nwork, bool tf32, int cmax, cudaStream_t stream);
// The paired-patch machine's forward (forward_kernel with PAIRED; paired_kernels.cu): the
// same plan, partial states and merge as the ELS forward, fp32 / fp64 CUDA cores only.
template <typename T>
cudaError_t launch_paired_forward(const PatchParams<T>& p, int64_t nwork, int cmax, cudaStream_t stream);
template <typename T>
cudaError_t launch_patch_merge(const PatchParams<T>& p, T* x0, T* lse, int64_t* best, cudaStream_t stream);
template <typename T>
cudaError_t launch_patch_backward(const PatchParams<T>& p, int64_t nwork, int cmax, cudaStream_t stream);
template <typename T>
cudaError_t launch_patch_adjoint(const PatchParams<T>& p, T* grad_z, cudaStream_t stream);

// phase 0: softmax statistics (max, sum, best); 1: x0 accumulation sum_mu w_mu phi_mu with
// known lse; 2: backward accumulation sum_mu w_mu s_mu phi_mu and sum_mu w_mu s_mu.
template <typename T>
cudaError_t launch_ideal(const IdealParams<T>& p, int phase, cudaStream_t stream);

// phase 0: hard argmax; 1: argmax and the row max / sum of exp(s / tau); 2: column sums of
// the row softmax (p.lse set). nblocks blocks loop over the M * nsplit work items; smem_bytes
// of dynamic shared memory (0 when p.scratch is used).
template <typename T>
cudaError_t launch_attention(const AttentionParams<T>& p, int phase, int64_t nblocks, int64_t smem_bytes,
                             cudaStream_t stream);

}  // namespace cuda
}  // namespace creativity_fast
