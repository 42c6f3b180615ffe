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
  int ncc = 0, Kr = 0, Kc = 0, D = 0;
  double sumw = 0;  // sum of the multiplicities: the weighted patch dimension
  int64_t entries = 0, tiles_per_block = 0;
};

// Groups of query pixels sharing one key rectangle; each group's keys are cut into splits of
// tiles_per_block key tiles; one work item (block) per (group, split, query tile). The
// partial state of (split s, query q) of group g is entry g.part + s * g.nq + q.
// bytes per entry = bytes_fixed + bytes_per_d * D; the splits are coarsened until all
// entries fit in budget (or every group has one split).
inline HostPlan build_plan(int B, int C, int H, int W, int N, int P, Mode mode, Boundary boundary, Keys keys, int TQ,
                           int TK, int64_t target_blocks, int64_t bytes_fixed, int64_t bytes_per_d,
                           int64_t budget = kPartialBudgetBytes, int64_t fixed_tiles_per_block = 0) {
  HostPlan pl;
  const AxisPatch ar(P, H, boundary), ac(P, W, boundary);
  pl.Kr = ar.count;
  pl.Kc = ac.count;
  pl.D = C * pl.Kr * pl.Kc;
  pl.dtab.resize(static_cast<size_t>(pl.D) * 4);
  for (int ch = 0, d = 0; ch < C; ++ch)
    for (int i = 0; i < pl.Kr; ++i)
      for (int j = 0; j < pl.Kc; ++j, ++d) {
        const int mult = ar.weight(i) * ac.weight(j);
        pl.dtab[4 * d + 0] = ch;
        pl.dtab[4 * d + 1] = i;
        pl.dtab[4 * d + 2] = j;
        pl.dtab[4 * d + 3] = mult;
        pl.sumw += mult;
      }
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

// Estimated error of one logit when the cross term <q, k> runs in tf32 (NOTES.md,
// "Precision policy"): operands rounded to 10 mantissa bits (relative 2^-11 each, 2^-10 per
// product), the errors of the products adding like a random walk, |d cross| ~ 2^-10
// sqrt(sumw) qmax kmax; the logit is -(|q|^2 + |k|^2 - 2 cross) / (2 sigma^2), so
// |d logit| ~ 2^-10 sqrt(sumw) qmax kmax / sigma^2; plus the fp32 cancellation of the
// expanded form, 2^-24 sumw (qmax^2 + kmax^2) / (2 sigma^2).
inline double tf32_logit_error(double sumw, double qmax, double kmax, double sigma_min) {
  const double s2 = sigma_min * sigma_min;
  return (std::ldexp(1.0, -10) * std::sqrt(sumw) * qmax * kmax +
          std::ldexp(1.0, -25) * sumw * (qmax * qmax + kmax * kmax)) /
         s2;
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
