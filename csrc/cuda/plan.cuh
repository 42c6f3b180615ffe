// Host-side work plan of the CUDA kernels (plain C++; shared by ops_cuda.cu and the CPU
// emulator used to test the kernels without a GPU). See NOTES.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.cuh"
#include "dictionary.h"

namespace creativity_fast {
namespace cuda {

constexpr int64_t kPartialBudgetBytes = int64_t(1) << 30;  // cap on split partial buffers

struct AxisClass {
  int p0, np, lo, nk;  // positions [p0, p0+np) share the admissible key range [lo, lo+nk)
};

// Consecutive positions with the same admissible range (dictionary.h) form one class.
inline std::vector<AxisClass> axis_classes(int size, int P, Mode mode, Boundary boundary, Keys keys,
                                           std::vector<int>* classmap) {
  std::vector<AxisClass> out;
  classmap->assign(size, 0);
  for (int pos = 0; pos < size; ++pos) {
    int lo = 0, hi = -1;
    admissible_range(pos, size, P, mode, boundary, keys, &lo, &hi);
    if (hi < lo) throw std::runtime_error("creativity_fast CUDA plan: empty key range");
    if (!out.empty() && out.back().p0 + out.back().np == pos && out.back().lo == lo && out.back().nk == hi - lo + 1) {
      out.back().np += 1;
    } else {
      out.push_back({pos, 1, lo, hi - lo + 1});
    }
    (*classmap)[pos] = static_cast<int>(out.size()) - 1;
  }
  return out;
}

struct HostPlan {
  std::vector<GroupInfo> groups;  // row class major: group = rowclass * ncc + colclass
  std::vector<WorkItem> work;     // one per block
  std::vector<int> rowclass, colclass;
  std::vector<int> dtab;  // [D][4]: channel, row offset index, col offset index, multiplicity
  std::vector<int> doff;  // [D]: (channel * H + row offset index) * W + col offset index
  int ncc = 0, Kr = 0, Kc = 0, D = 0;
  double sumw = 0;  // sum of the multiplicities: the weighted patch dimension
  int64_t entries = 0, tiles_per_block = 0;
};

// Groups of query pixels sharing one key rectangle; each group's keys are cut into splits of
// tiles_per_block key tiles; one work item (block) per (group, split, query tile). The
// partial state of (split s, query q) of group g is entry g.part + s * g.nq + q.
// bytes per entry = bytes_fixed + bytes_per_d * D; the splits are coarsened until all
// entries fit in budget (or every group has one split).
// The entry table of a C x P x P patch along the axis patches ar, ac: dtab [D][4] = (channel,
// row offset index, col offset index, multiplicity) in the kernels' entry order d = (ch * Kr + i)
// * Kc + j, and doff [D] = (ch * H + i) * W + j. Returns the sum of the multiplicities.
inline double patch_entry_table(int C, int H, int W, const AxisPatch& ar, const AxisPatch& ac, std::vector<int>* dtab,
                                std::vector<int>* doff) {
  double sumw = 0;
  dtab->assign(static_cast<size_t>(C) * ar.count * ac.count * 4, 0);
  doff->clear();
  for (int ch = 0, d = 0; ch < C; ++ch)
    for (int i = 0; i < ar.count; ++i)
      for (int j = 0; j < ac.count; ++j, ++d) {
        const int mult = ar.weight(i) * ac.weight(j);
        (*dtab)[4 * d + 0] = ch;
        (*dtab)[4 * d + 1] = i;
        (*dtab)[4 * d + 2] = j;
        (*dtab)[4 * d + 3] = mult;
        doff->push_back((ch * H + i) * W + j);
        sumw += mult;
      }
  return sumw;
}

inline HostPlan build_plan(int B, int C, int H, int W, int N, int P, Mode mode, Boundary boundary, Keys keys, int TQ,
                           int TK, int64_t target_blocks, int64_t bytes_fixed, int64_t bytes_per_d,
                           int64_t budget = kPartialBudgetBytes, int64_t fixed_tiles_per_block = 0) {
  HostPlan pl;
  const AxisPatch ar(P, H, boundary), ac(P, W, boundary);
  pl.Kr = ar.count;
  pl.Kc = ac.count;
  pl.D = C * pl.Kr * pl.Kc;
  pl.sumw = patch_entry_table(C, H, W, ar, ac, &pl.dtab, &pl.doff);
  const auto rows = axis_classes(H, P, mode, boundary, keys, &pl.rowclass);
  const auto cols = axis_classes(W, P, mode, boundary, keys, &pl.colclass);
  pl.ncc = static_cast<int>(cols.size());

  std::vector<int64_t> qtiles, ktiles;
  int64_t total = 0;
  for (const auto& rc : rows)
    for (const auto& cc : cols) {
      GroupInfo g{};
      g.r0 = rc.p0;
      g.nr = rc.np;
      g.c0 = cc.p0;
      g.nc = cc.np;
      g.rlo = rc.lo;
      g.nrk = rc.nk;
      g.clo = cc.lo;
      g.nck = cc.nk;
      g.nq = int64_t(B) * g.nr * g.nc;
      g.nk = int64_t(N) * g.nrk * g.nck;
      pl.groups.push_back(g);
      qtiles.push_back((g.nq + TQ - 1) / TQ);
      ktiles.push_back((g.nk + TK - 1) / TK);
      total += qtiles.back() * ktiles.back();
    }
  const int64_t bytes_per_entry = bytes_fixed + bytes_per_d * pl.D;
  int64_t T = fixed_tiles_per_block > 0
                  ? fixed_tiles_per_block
                  : std::max<int64_t>(4, (total + target_blocks - 1) / std::max<int64_t>(1, target_blocks));
  for (;;) {
    int64_t entries = 0;
    bool all_single = true;
    for (size_t g = 0; g < pl.groups.size(); ++g) {
      const int64_t ns = (ktiles[g] + T - 1) / T;
      all_single = all_single && ns == 1;
      entries += ns * pl.groups[g].nq;
    }
    if (entries * bytes_per_entry <= budget || all_single) break;
    T *= 2;
  }
  pl.tiles_per_block = T;
  int64_t part = 0;
  for (size_t gi = 0; gi < pl.groups.size(); ++gi) {
    GroupInfo& g = pl.groups[gi];
    g.nsplit = (ktiles[gi] + T - 1) / T;
    g.part = part;
    part += g.nsplit * g.nq;
    for (int64_t s = 0; s < g.nsplit; ++s) {
      const int64_t k0 = s * T * TK, k1 = std::min(g.nk, k0 + T * TK);
      for (int64_t qt = 0; qt < qtiles[gi]; ++qt) pl.work.push_back({int64_t(gi), qt * TQ, k0, k1, s, 0});
    }
  }
  pl.entries = part;
  if (static_cast<int64_t>(pl.work.size()) >= (int64_t(1) << 31) - 1)
    throw std::runtime_error("creativity_fast CUDA plan: too many blocks");
  return pl;
}

// Proven bound on the error of one logit when the cross term <q, k> runs in tf32 (derivation:
// docs/theory.md §4.4 and NOTES.md, "Precision policy"). q, k are weighted patches
// (entries sqrt(multiplicity) * pixel) of norms at most qnorm and knorm, D entries each;
// the tf32 path evaluates dist = fl(fl(|q|^2 + |k|^2) - 2 c~) with c~ the tensor-core sum
// of tf32(q_d) tf32(k_d) and the norms summed in fp32:
//   |c~ - <q,k>|     <= (2u + u^2 + g (1 + 2u + u^2)) qnorm knorm   (Cauchy-Schwarz)
//   |norm errors|    <= g (qnorm^2 + knorm^2)
//   |final rounding| <= 3 * 2^-24 (1 + g) (qnorm^2 + knorm^2)
// with u = 2^-11 (tf32 rounding to nearest) and g = D 2^-23 / (1 - D 2^-23) (D fp32 additions,
// allowing truncation); the logit is -dist / (2 sigma^2).
// bound = (2 cross qnorm knorm + norms (qnorm^2 + knorm^2)) / (2 sigma^2) with these coefficients
// (ops_impl.cuh evaluates it on the device, per sample).
struct Tf32BoundCoefficients {
  double cross, norms;
};
inline Tf32BoundCoefficients tf32_bound_coefficients(int D) {
  const double u = std::ldexp(1.0, -11), e23 = std::ldexp(1.0, -23) * D, g = e23 / (1.0 - e23);
  return {2 * u + u * u + g * (1 + 2 * u + u * u), g + 3 * std::ldexp(1.0, -24) * (1 + g)};
}
inline double tf32_logit_bound(int D, double qnorm, double knorm, double sigma) {
  const Tf32BoundCoefficients c = tf32_bound_coefficients(D);
  return (2 * c.cross * qnorm * knorm + c.norms * (qnorm * qnorm + knorm * knorm)) / (2 * sigma * sigma);
}

// Logit-error budget of the tf32 path under the float32 precision contract (docs/theory.md
// §4.4): logit errors of at most e move x0_hat by at most R tanh(e / 2) <= R e / 2 (R the
// spread of the key centres, at most 2 max|data|); half of the contract's absolute budget
// 1e-5 max(1, max|data|) goes to tf32, the other half is left to fp32 rounding.
inline double tf32_default_tolerance(double data_absmax) {
  const double budget = 0.5e-5 * std::max(1.0, data_absmax);
  const double spread = 2.0 * data_absmax;
  if (!(spread > 0)) return 0.0;  // all-zero data: nothing to gain, stay exact
  return 2.0 * std::atanh(std::min(budget / spread, 0.5));
}

// Image splits of the ideal machine: about 4 blocks per multiprocessor, at most one split per
// kIdealWarps images, partial accumulators within the budget.
inline int64_t ideal_splits(int B, int N, int64_t CHW, int64_t elem, int sms, int64_t budget = kPartialBudgetBytes) {
  int64_t ns = (int64_t(sms) * 4 + B - 1) / B;
  ns = std::min<int64_t>(ns, (N + kIdealWarps - 1) / kIdealWarps);
  const int64_t per_split = int64_t(kIdealWarps) * B * CHW * elem;
  ns = std::min<int64_t>(ns, std::max<int64_t>(1, budget / std::max<int64_t>(1, per_split)));
  return std::max<int64_t>(1, ns);
}

}  // namespace cuda
}  // namespace creativity_fast
