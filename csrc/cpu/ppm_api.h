// Interface between the torch-facing CPU operator (patch_posterior.cpp) and the
// ISA-specific kernel builds (ppm_generic.cpp, ppm_avx2.cpp, ppm_avx512.cpp).
//
// The kernel translation units are compiled with `#pragma GCC target(...)` so that
// one binary carries a baseline, an AVX2+FMA and an AVX-512 build and picks one at
// run time. To keep them free of ODR hazards they include no torch header: this
// file is plain data and function pointers only.
#pragma once

#include <cstdint>

namespace creativity_fast {
namespace cpu {

// How Unit::distances (ppm_distances.h) computes patch distances; environment variable
// CREATIVITY_FAST_CPU_ALGO = auto | gw | direct.
enum class DistanceAlgo : int {
  Auto,    // streaming box filter with sliding double sums; patches with a whole-axis
           // part (circular P > size) take Gw, the only filter that handles them
  Gw,      // materialised box filter with Gil-Werman block prefix/suffix sums
  Direct,  // explicit O(P^2) patch distances, kept for measurement (forward only: the
           // backward pass takes Auto's choice)
};

// Work-decomposition and algorithm knobs, environment variables CREATIVITY_FAST_CPU_*
// (read by patch_posterior.cpp). tile_rows and prune change no result bit: every
// partial sum is anchored to absolute positions, whatever the tiling or the thread
// count. algo and slide_min change the order of the distance sums (rounding only).
struct PpmOptions {
  int tile_rows = 0;  // TILE_ROWS: query rows per work unit (0: auto)
  DistanceAlgo algo = DistanceAlgo::Auto;  // ALGO
  int prune = 1;      // PRUNE: skip keys whose weight provably underflows to 0 (exact)
  int slide_min = 4;  // SLIDE_MIN: window length from which box passes use O(1) sums
                      // (sliding or Gil-Werman) instead of direct window sums
};

// Everything the kernels need to know about one axis, computed once per call from
// dictionary.h (AxisPatch, admissible) by patch_posterior.cpp.
struct AxisTables {
  int size;
  int wrap;  // circular boundary: positions wrap; zeros: outside reads 0
  // Patch distance along this axis as a window sum (the reduction of AxisPatch):
  //   sum_i weight(i) v(x + first + i) = kfull * sum_all v + sum_{j<L} v(x + s + j)
  int s, L, kfull;
  // The same patch as offsets and multiplicity weights (direct algorithm).
  int first, count;
  const int* weight;
  // Displacements d (key position = position + d, wrapped when circular), the
  // admissible query positions of each (valid[id * size + pos]), the key position,
  // the hull [hull_lo, hull_hi] of the admissible positions (lo > hi: none), and
  // whether every position of the hull is admissible (hull_full: no per-position test).
  int nd;
  const int* disp;
  const uint8_t* valid;
  const int* keypos;
  const int* hull_lo;
  const int* hull_hi;
  const uint8_t* hull_full;
};

struct PpmProblem {
  // shapes
  int64_t B, C, H, W, N;
  int P;
  int mode, boundary, keys;  // creativity_fast::Mode / Boundary / Keys values
  bool has_logw, want_argmax;
  PpmOptions opt;
  AxisTables ax_r, ax_c;  // rows (H) and columns (W)
  int64_t n_row_blocks;  // work units are (b, row block): unit = b * n_row_blocks + block
  int64_t rows_per_block;
  // inputs: z [B,C,H,W], data [N,C,H,W], key_logw [N,H,W] or [N] (ideal), all of the
  // kernel's scalar type; sigma as double [B]
  const void* z;
  const void* data;
  const void* logw;
  const double* sigma;
  // forward outputs: x0 [B,C,H,W], lse [B,H,W] (scalar type), best [B,H,W] (or null)
  void* x0;
  void* lse;
  int64_t* best;
  // backward inputs: grad_x0 [B,C,H,W], x0 (forward output), lse (forward output)
  const void* grad;
  const void* x0_in;
  const void* lse_in;
  const void* grad_lse;  // [B,H,W] or null: upstream gradient of lse
  // backward output: one [C,H,W] double partial gradient per work unit (summed by
  // the caller in unit order)
  double* grad_partial;
  // Paired-patch machine (paired_patch_posterior.cpp, docs/theory.md §3.7): when `paired`,
  // every ELS logit also subtracts beta * |Pi2_q(x) z - Pi2_a(mu,u) phi^mu|^2 / (2 sigma^2),
  // the P2 x P2 partner windows read with the boundary's rule (zero or periodic);
  // qpartner [B,H,W] and kpartner [N,H,W] are flat locations, -1 reads the zero window.
  bool paired = false;
  int P2 = 1;
  double beta = 0;
  const int64_t* qpartner = nullptr;
  const int64_t* kpartner = nullptr;
};

using UnitFn = void (*)(const PpmProblem&, int64_t unit);

struct IsaKernels {
  const char* name;
  UnitFn forward_f32, forward_f64, backward_f32, backward_f64;
};

// Defined in ppm_generic.cpp / ppm_avx2.cpp / ppm_avx512.cpp. Each entry serves every
// mode; mode "ideal" goes to the one copy below.
extern const IsaKernels kKernelsGeneric;
extern const IsaKernels kKernelsAvx2;
extern const IsaKernels kKernelsAvx512;

// The ideal machine (whole-image softmax; unit = sample b), scalar and compiled once in
// ppm_ideal.cpp (instantiated for float and double).
template <class T>
void forward_ideal(const PpmProblem& pb, int64_t b);
template <class T>
void backward_ideal(const PpmProblem& pb, int64_t b);

}  // namespace cpu
}  // namespace creativity_fast
