// Fused CPU kernels of patch_posterior_mean (docs/theory.md §4, §9), written once and
// compiled per instruction set: ppm_<isa>.cpp sets `#pragma GCC target`, defines
// CF_ISA_LEVEL (0 baseline, 1 AVX2+FMA, 2 AVX-512) and includes this file inside its
// own namespace. No torch header may be included here (see ppm_api.h), nor any
// standard header: the ISA file includes those before its namespace.
//
// Parts, in inclusion order:
//   ppm_simd.h         vector types of this ISA, exps, lane conversions, lane tests
//   ppm_window_sums.h  anchored one-dimensional window sums (Gil-Werman)
//   ppm_distances.h    Unit: per-unit scratch, box-filter passes, distance algorithms
//   ppm_paired.h       the partner distance of the paired-patch machine
//   ppm_forward.h      online softmax of the patch machines
//   ppm_backward.h     their gradient
// The ideal machine is scalar and compiled once, in ppm_ideal.cpp.
//
// Layout: lanes are training images. A "group" packs V training images side by side
// ([row][col][channel][lane]; V = doubles per native vector: 8 AVX-512, 4 AVX2, 2
// baseline), so every pixel of the group is one SIMD vector and all the work below
// is vertical SIMD with scalar addressing: any image size, boundary or key set, no
// gathers.
//
// Forward, for one work unit (sample b, a block of query rows) and one group:
//   for every displacement delta = (dr, dc) with an admissible query in the block
//     e(p)  = sum_ch (z(p) - phi(p + delta))^2                 (one product image)
//     d(x)  = sum_o w(o) e(x + o)                              (separable box filter)
//     l     = -d / (2 sigma^2) + key_logw
//     online softmax per (query, lane): running max, sum, weighted centre
// so a (query, key) pair costs O(C) plus a few adds whatever P (docs/theory.md §9),
// and the [queries x keys] matrix never exists. Distances, logits and running maxima
// are in double, so the float32 kernel is as accurate as the float64 reference: the
// default path (distances_stream) slides its windows (add the new row, subtract the
// old; in double that loses ~1e-16 of the sums passed through) and restarts them with
// a direct sum every kAnchor rows counted from the displacement's first admissible
// row, so every distance is bitwise independent of the tiling and the thread count.
// Circular patches larger than the image (multiplicity weights: a whole-axis part)
// use distances_gw: materialised rows with Gil-Werman block prefix/suffix sums
// anchored to absolute positions. distances_direct (explicit O(P^2) patch distances)
// is kept for measurement.
//
// Exact pruning: exp() below flushes to exactly 0 for arguments under kExpLo, so a
// key whose logit is more than |kExpLo| (plus a rounding margin) under the running
// max contributes exactly 0; such keys are skipped without changing a bit.
//
// Accumulation: per (query, lane) the sum and weighted centre are accumulated in T
// over one row of displacements, then flushed into double accumulators; lanes are
// merged in double at the end, in a fixed order.

#ifndef CF_ISA_LEVEL
#error "define CF_ISA_LEVEL before including ppm_kernel.h"
#endif

#include "cpu/ppm_simd.h"
#include "cpu/ppm_window_sums.h"
#include "cpu/ppm_distances.h"
#include "cpu/ppm_paired.h"
#include "cpu/ppm_forward.h"
#include "cpu/ppm_backward.h"

// ---------------------------------------------------------------------------
// Entry points of this ISA build (IsaKernels in ppm_api.h); mode "ideal" runs the one
// scalar copy of ppm_ideal.cpp.

template <class T>
void forward_entry(const PpmProblem& pb, int64_t unit) {
  if (pb.mode == int(Mode::Ideal))
    forward_ideal<T>(pb, unit);
  else if (pb.paired)
    pb.want_argmax ? forward_patch<T, true, true>(pb, unit) : forward_patch<T, false, true>(pb, unit);
  else if (pb.want_argmax)
    forward_patch<T, true, false>(pb, unit);
  else
    forward_patch<T, false, false>(pb, unit);
}

template <class T>
void backward_entry(const PpmProblem& pb, int64_t unit) {
  if (pb.mode == int(Mode::Ideal))
    backward_ideal<T>(pb, unit);
  else
    backward_patch<T>(pb, unit);
}
