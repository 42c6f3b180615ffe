// Backward pass of the patch machines (docs/theory.md §4), the gradient of x0_hat and
// lse with respect to z. Part of ppm_kernel.h: included inside an ISA build's
// namespace after ppm_distances.h.
#pragma once

// Backward: grad z(p) = 1/sigma^2 sum_{delta, lanes} (phi(p + delta) - z(p)) * A(p),
// A = (adjoint) box filter of a(x) = w_k s_k over the queries, with the score
// s_k = g(x) . (c_k - x0_hat(x)) + g_lse(x) (upstream gradients of x0_hat and lse).
// The patch rules are symmetric, so the adjoint filter is the forward one. The
// (phi - z) form keeps the z term that cancels when g_lse = 0 (sum_k w_k s_k = 0).

template <class T, bool LOGW>
void backward_group(Unit<T>& u, int g, const double* gq, const double* gx0, const double* lseq,
                    typename VecT<T>::vd* abuf, typename VecT<T>::vd* Gin) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vd vd;
  const PpmProblem& pb = u.pb;
  const AxisTables& ar = pb.ax_r;
  const AxisTables& ac = pb.ax_c;
  const int H = u.H, W = u.W, C = u.C, r0 = u.r0, r1 = u.r1;
  const int64_t HW = u.HW;
  const bool prune = pb.opt.prune != 0 && u.group_finite;  // see Unit::pack_group
  const double neg_inv2s2 = -u.inv2s2;
  const vd pruneLo = splat<vd>(prune_below<T>());
  const AxisMap rm = u.rmap, cm = u.cmap;
  (void)g;

  for (int ir = 0; ir < ar.nd; ++ir) {
    const uint8_t* rvalid = ar.valid + size_t(ir) * ar.size;
    const int* rkey = ar.keypos + size_t(ir) * ar.size;
    int rlo, rhi;
    if (!admissible_rows(rvalid, r0, r1, &rlo, &rhi)) continue;
    const int dr = ar.disp[ir];
    for (int icol = 0; icol < ac.nd; ++icol) {
      const int clo = ac.hull_lo[icol], chi = ac.hull_hi[icol];
      if (clo > chi) continue;
      const uint8_t* cvalid = ac.valid + size_t(icol) * ac.size;
      const int* ckey = ac.keypos + size_t(icol) * ac.size;
      const int dc = ac.disp[icol];
      const int ncols = chi - clo + 1;
      bool any_a = false;
      // 1. a(x) for the valid queries of this displacement (abuf rows r - r0, cols c - clo)
      u.template distances<true>(dr, dc, ar.hull_lo[ir], rlo, rhi, clo, chi, rvalid, [&](int r, const vd* drow) {
        vd* arow = abuf + size_t(r - r0) * W;
        if (!rvalid[r]) {
          for (int c = 0; c < ncols; ++c) arow[c] = vd{};
          return;
        }
        const int kr = rkey[r];
        for (int c = clo; c <= chi; ++c) {
          vd a = vd{};
          const size_t q = size_t(r) * W + c;
          if (cvalid[c] && lseq[q] > -std::numeric_limits<double>::infinity()) {
            const int kc = ckey[c];
            vd l = drow[c - clo] * neg_inv2s2;
            if (LOGW) l = l + u.lw[size_t(kr) * W + kc];
            const vd x = l - lseq[q];
            if (!prune || any_not_below(x, pruneLo)) {
              const vd w = to_vd<T>(vexp(to_v<T>(x)));
              const v* cen = u.phi(kr, kc);
              vd s = splat<vd>(-gx0[q]);
              for (int ch = 0; ch < C; ++ch) s = s + gq[size_t(ch) * HW + q] * to_vd<T>(cen[ch]);
              a = w * s;
              any_a = true;
            }
          }
          arow[c - clo] = a;
        }
      });
      if (!any_a) continue;
      // 2. A = box filter of a (zero outside the valid queries), at every pixel p whose
      //    window meets the queries; accumulate (phi(p + delta) - z(p)) * A(p).
      int plo_r, phi_r, plo_c, phi_c;
      auto out_range = [](const AxisTables& ax, int lo, int hi, int* a, int* z) {
        int A = lo - ax.s - ax.L + 1, Z = hi - ax.s;
        if (ax.kfull > 0 || Z - A + 1 >= ax.size) {
          A = 0;
          Z = ax.size - 1;
        } else if (!ax.wrap) {
          A = imax(A, 0);
          Z = imin(Z, ax.size - 1);
        }
        *a = A;
        *z = Z;
      };
      out_range(ar, rlo, rhi, &plo_r, &phi_r);
      out_range(ac, clo, chi, &plo_c, &phi_c);
      const int npc = phi_c - plo_c + 1;
      // horizontal adjoint pass of the a rows (real rows rlo..rhi, zero outside the
      // valid queries), then the vertical pass reads them back (zero rows elsewhere)
      const int na = rhi - rlo + 1;
      for (int i = 0; i < na; ++i) {
        vd* er = u.erows + size_t(i) * (W + 1);
        const int r = rlo + i;
        for (int c = 0; c < W; ++c) er[c] = vd{};  // column W stays 0
        if (!rvalid[r]) continue;
        const vd* arow = abuf + size_t(r - r0) * W;
        for (int c = clo; c <= chi; ++c) er[c] = arow[c - clo];
      }
      u.hfilter_rows(u.erows, na, plo_c, phi_c, u.hreal);
      auto hrow = [&](int uu) -> const vd* {
        const int ai = rm(uu);
        if (ai >= H || ai < rlo || ai > rhi || !rvalid[ai]) return u.hzero;
        return u.hreal + size_t(ai - rlo) * W;
      };
      u.vfilter(plo_r, phi_r, npc, hrow, [&](int pr_u, const vd* Arow) {
        const int pr = rm(pr_u);
        const int kr = rm(pr + dr);
        const v* krow = u.ph + size_t(kr) * (W + 1) * C;
        for (int pc_u = plo_c; pc_u <= phi_c; ++pc_u) {
          const int pc = cm(pc_u);
          const int kc = cm(pc + dc);
          const vd A = Arow[pc_u - plo_c];
          for (int ch = 0; ch < C; ++ch) {
            const vd diff = to_vd<T>(krow[size_t(kc) * C + ch]) -
                            u.zd[size_t(ch) * HW + size_t(pr) * W + pc];
            vd& gacc = Gin[(size_t(ch) * H + pr) * W + pc];
            gacc = gacc + diff * A;
          }
        }
      });
    }
  }
}

template <class T>
void backward_patch(const PpmProblem& pb, int64_t unit) {
  typedef typename VecT<T>::vd vd;
  constexpr int V = VecT<T>::V;
  const size_t HW = size_t(pb.H) * pb.W;
  const size_t C = pb.C;
  const size_t extra = arena_bytes<vd>(size_t(pb.rows_per_block) * pb.W) + arena_bytes<vd>(C * HW) + arena_bytes<double>(C * HW) + 2 * arena_bytes<double>(HW);
  Unit<T> u(pb, unit, extra);
  double* Gp = pb.grad_partial + unit * int64_t(C * HW);
  if (u.nq <= 0) return;
  vd* abuf = u.arena.template take<vd>(size_t(pb.rows_per_block) * pb.W);
  vd* Gin = u.arena.template take<vd>(C * HW);
  double* gq = u.arena.template take<double>(C * HW);
  double* gx0 = u.arena.template take<double>(HW);
  double* lseq = u.arena.template take<double>(HW);
  for (size_t i = 0; i < C * HW; ++i) Gin[i] = vd{};
  const T* gsrc = static_cast<const T*>(pb.grad) + u.b * int64_t(C * HW);
  const T* x0 = static_cast<const T*>(pb.x0_in) + u.b * int64_t(C * HW);
  const T* lse = static_cast<const T*>(pb.lse_in) + u.b * int64_t(HW);
  for (size_t i = 0; i < C * HW; ++i) gq[i] = double(gsrc[i]);
  const T* glse = static_cast<const T*>(pb.grad_lse);
  for (size_t q = 0; q < HW; ++q) {
    // score of key k at query q: s_k = g . c_k - (g . x0_hat - g_lse), see backward_group
    double acc = 0;
    for (size_t ch = 0; ch < C; ++ch) acc += gq[ch * HW + q] * double(x0[ch * HW + q]);
    if (glse) acc -= double(glse[u.b * int64_t(HW) + int64_t(q)]);
    gx0[q] = acc;
    lseq[q] = double(lse[q]);
  }
  const bool logw = pb.has_logw;
  for (int g = 0; g < u.G; ++g) {
    const bool partial = int64_t(g + 1) * V > u.N;
    const bool with_lw = logw || partial;
    u.pack_group(g, with_lw);
    if (with_lw)
      backward_group<T, true>(u, g, gq, gx0, lseq, abuf, Gin);
    else
      backward_group<T, false>(u, g, gq, gx0, lseq, abuf, Gin);
  }
  const double sg = pb.sigma[u.b];
  const double inv_s2 = 1.0 / (sg * sg);
  for (size_t i = 0; i < C * HW; ++i) {  // lanes summed in a fixed order
    double acc = 0;
    for (int l = 0; l < V; ++l) acc += Gin[i][l];
    Gp[i] = acc * inv_s2;
  }
}
