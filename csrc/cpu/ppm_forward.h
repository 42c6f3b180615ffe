// Forward pass of the patch machines (modes "local" and "els", and the paired-patch
// machine, which adds a partner distance to every ELS pair): per work unit (sample,
// block of query rows) an online softmax over every admissible key, fed one group of
// V training images at a time by Unit::distances. Part of ppm_kernel.h: included
// inside an ISA build's namespace after ppm_distances.h.
#pragma once

template <class T>
struct FwdState {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  typedef typename VecT<T>::vd vd;
  vd* M;     // [nq] running max logit
  v* Sin;    // [nq] inner sum of exp(l - M)
  v* Win;    // [nq][C] inner weighted centres
  vd* Sout;  // [nq] outer (double) sums
  vd* Wout;  // [nq][C]
  vi* BG;    // [nq] group of the best key (-1: none)
  vi* BY;    // [nq] key pixel of the best key
};

// PAIRED: the paired-patch machine (ppm_paired.h): every distance of the row gets
// + beta * |query partner window - key partner window|^2 before the softmax.
template <class T, bool LOGW, bool ARGMAX, bool PAIRED>
void forward_group(Unit<T>& u, FwdState<T>& st, int g, const PairedTerm<T>& pt) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  typedef typename VecT<T>::vd vd;
  typedef typename VecT<T>::vdi vdi;
  const PpmProblem& pb = u.pb;
  const AxisTables& ar = pb.ax_r;
  const AxisTables& ac = pb.ax_c;
  const int W = u.W, C = u.C, r0 = u.r0, r1 = u.r1;
  const bool prune = pb.opt.prune != 0 && u.group_finite;  // see Unit::pack_group
  const double neg_inv2s2 = -u.inv2s2;
  const vd pruneLo = splat<vd>(prune_below<T>());
  const vi gvec = splat<vi>(g);

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
      const bool hull_full = ac.hull_full[icol] != 0;  // no per-column admissibility test
      // Passes 2 and 3 of a row update: exps of xbuf[0, n), then accumulation into the
      // queries of output row qrow at columns col(j), keys of key row kr.
      auto exp_accumulate = [&](int kr, size_t qrow, int n, auto col) {
        vexp_array<T>(reinterpret_cast<T*>(u.xbuf), n);
        const v* krow = u.ph + size_t(kr) * (W + 1) * C;
        if (C == 1) {
          for (int j = 0; j < n; ++j) {
            const int c = col(j);
            const v p = u.xbuf[j];
            st.Sin[qrow + c] = st.Sin[qrow + c] + p;
            st.Win[qrow + c] = st.Win[qrow + c] + p * krow[ckey[c]];
          }
        } else {
          for (int j = 0; j < n; ++j) {
            const int c = col(j);
            const size_t q = qrow + c;
            const v p = u.xbuf[j];
            const v* cen = krow + size_t(ckey[c]) * C;
            st.Sin[q] = st.Sin[q] + p;
            for (int ch = 0; ch < C; ++ch) st.Win[q * C + ch] = st.Win[q * C + ch] + p * cen[ch];
          }
        }
      };
      // Update of one output row, in three passes so that the exps (the bulk of the
      // work) run as one branch-free loop: 1. logits, pruning and the rare new
      // maxima; 2. exps of the surviving keys; 3. accumulation. Each query sees its
      // keys in the same order whatever the pass structure.
      auto update_row = [&](int r, const vd* drow) {
        if (!rvalid[r]) return;
        const int kr = rkey[r];
        const size_t qrow = size_t(r - r0) * W;
        if (hull_full) {
          // Fast path, branch-free: once the running maxima have settled (all but the
          // first few displacements) no key raises one, so logits go straight to the
          // exp. Keys that pruning would skip get exp() == +0 exactly (the pruning
          // contract), and adding +0 or +-0 * centre leaves every sum bit for bit as
          // the pruned path would; so this path is not a different result, only a
          // different instruction stream. A row where any key raises (or, with
          // ARGMAX, ties) a maximum falls through to the general path below, which
          // starts from the same untouched state.
          const int n = chi - clo + 1;
          vdi raise = vdi{};
          int live = 0;  // keys with some lane's weight not pruned
          const vd* lwrow = LOGW ? u.lw + size_t(kr) * W : nullptr;
          for (int j = 0; j < n; ++j) {
            const int c = clo + j;
            vd l = drow[j] * neg_inv2s2;
            if (LOGW) l = l + lwrow[ckey[c]];
            const vd m = st.M[qrow + c];
            raise = raise | (vdi)(ARGMAX ? (l >= m) : (l > m));
            const vd x = l - m;
            live += int(any_not_below(x, pruneLo));
            u.xbuf[j] = to_v<T>(x);
          }
          if (!any_nonzero(raise)) {
            if (prune && 2 * live < n) {
              // Peaked softmax (low noise): most keys would add exactly +0, so the
              // surviving ones are packed first and only they get exps. Same keys, same
              // order, same sums bit for bit; the pass pays off below half survivors.
              // NaN logits survive, so they reach the sums as on every other path.
              int k = 0;
              for (int j = 0; j < n; ++j) {
                const vd x = to_vd<T>(u.xbuf[j]);
                u.xbuf[k] = u.xbuf[j];
                u.cbuf[k] = clo + j;
                k += int(any_not_below(x, pruneLo));
              }
              exp_accumulate(kr, qrow, k, [&](int j) { return u.cbuf[j]; });
            } else {
              exp_accumulate(kr, qrow, n, [&](int j) { return clo + j; });
            }
            return;
          }
        }
        int n = 0;
        for (int c = clo; c <= chi; ++c) {
          if (!cvalid[c]) continue;
          const size_t q = qrow + c;
          vd l = drow[c - clo] * neg_inv2s2;
          if (LOGW) l = l + u.lw[size_t(kr) * W + ckey[c]];
          vd m = st.M[q];
          vd x = l - m;
          // every lane's weight is exactly 0 (a NaN logit is not provably below the cut-off: it
          // must reach the sums, as on the fast path and every other backend)
          if (prune && !any_not_below(x, pruneLo)) continue;
          if (ARGMAX ? any_ge(l, m) : any_gt(l, m)) {  // rare: a new max (or a tie)
            const vd mn = l > m ? l : m;
            const v sc = vexp(to_v<T>(m - mn));
            const vd scd = to_vd<T>(sc);
            st.Sin[q] = st.Sin[q] * sc;
            st.Sout[q] = st.Sout[q] * scd;
            for (int ch = 0; ch < C; ++ch) {
              st.Win[q * C + ch] = st.Win[q * C + ch] * sc;
              st.Wout[q * C + ch] = st.Wout[q * C + ch] * scd;
            }
            if (ARGMAX) {
              const vi y = splat<vi>(kr * W + ckey[c]);
              const vi gt = __builtin_convertvector(l > m, vi);
              const vi eq = __builtin_convertvector(l == m, vi);
              const vi upd = gt | (eq & (st.BG[q] == gvec) & (y < st.BY[q]));
              st.BG[q] = upd ? gvec : st.BG[q];
              st.BY[q] = upd ? y : st.BY[q];
            }
            st.M[q] = mn;
            x = l - mn;
          }
          u.xbuf[n] = to_v<T>(x);
          u.cbuf[n] = c;
          ++n;
        }
        if (n == 0) return;
        exp_accumulate(kr, qrow, n, [&](int j) { return u.cbuf[j]; });
      };
      if constexpr (PAIRED) {
        auto paired_row = [&](int r, const vd* drow) {
          if (!rvalid[r]) return;
          const int kr = rkey[r];
          const int D2 = pt.D2;
          const double* qrow = pt.qwin + size_t(r - r0) * W * D2;
          const typename VecT<T>::v* krow = pt.kwin + size_t(kr) * W * D2;
          const size_t qoff = size_t(r - r0) * W;
          const vd* lwrow = LOGW ? u.lw + size_t(kr) * W : nullptr;
          for (int c = clo; c <= chi; ++c) {
            if (!hull_full && !cvalid[c]) continue;
            if (prune) {
              // The partner term only lowers a logit: a key pruned on its ELS logit alone
              // has weight exactly 0 whatever the term, and raises no maximum, so it keeps
              // its ELS distance and the term is not computed (no bit changes).
              vd l = drow[c - clo] * neg_inv2s2;
              if (LOGW) l = l + lwrow[ckey[c]];
              if (!any_not_below(l - st.M[qoff + c], pruneLo)) {
                pt.row[c - clo] = drow[c - clo];
                continue;
              }
            }
            const vd d2 = pt.distance(qrow + size_t(c) * D2, krow + size_t(ckey[c]) * D2);
            pt.row[c - clo] = drow[c - clo] + pt.beta * d2;
          }
          update_row(r, pt.row);
        };
        u.template distances<false>(dr, dc, ar.hull_lo[ir], rlo, rhi, clo, chi, rvalid, paired_row);
      } else {
        u.template distances<false>(dr, dc, ar.hull_lo[ir], rlo, rhi, clo, chi, rvalid, update_row);
      }
    }
    // flush the inner accumulators of the rows this displacement row touched
    for (int r = rlo; r <= rhi; ++r) {
      if (!rvalid[r]) continue;
      const size_t qrow = size_t(r - r0) * W;
      for (int c = 0; c < W; ++c) {
        const size_t q = qrow + c;
        st.Sout[q] = st.Sout[q] + to_vd<T>(st.Sin[q]);
        st.Sin[q] = v{};
        for (int ch = 0; ch < C; ++ch) {
          st.Wout[q * C + ch] = st.Wout[q * C + ch] + to_vd<T>(st.Win[q * C + ch]);
          st.Win[q * C + ch] = v{};
        }
      }
    }
  }
}

template <class T, bool ARGMAX, bool PAIRED>
void forward_patch(const PpmProblem& pb, int64_t unit) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  typedef typename VecT<T>::vd vd;
  constexpr int V = VecT<T>::V;
  const size_t nq_max = size_t(pb.rows_per_block) * pb.W;
  const size_t extra = arena_bytes<vd>(nq_max) + arena_bytes<v>(nq_max) + arena_bytes<v>(nq_max * pb.C) +
                       arena_bytes<vd>(nq_max) + arena_bytes<vd>(nq_max * pb.C) + 2 * arena_bytes<vi>(nq_max) +
                       PairedTerm<T>::scratch_bytes(pb);
  Unit<T> u(pb, unit, extra);
  if (u.nq <= 0) return;
  const int nq = u.nq, C = u.C, W = u.W;
  FwdState<T> st;
  st.M = u.arena.template take<vd>(nq);
  st.Sin = u.arena.template take<v>(nq);
  st.Win = u.arena.template take<v>(size_t(nq) * C);
  st.Sout = u.arena.template take<vd>(nq);
  st.Wout = u.arena.template take<vd>(size_t(nq) * C);
  st.BG = u.arena.template take<vi>(nq);
  st.BY = u.arena.template take<vi>(nq);
  for (int q = 0; q < nq; ++q) {
    st.M[q] = splat<vd>(std::numeric_limits<double>::lowest());
    st.Sin[q] = v{};
    st.Sout[q] = vd{};
    st.BG[q] = splat<vi>(-1);
    st.BY[q] = vi{};
    for (int ch = 0; ch < C; ++ch) {
      st.Win[size_t(q) * C + ch] = v{};
      st.Wout[size_t(q) * C + ch] = vd{};
    }
  }
  PairedTerm<T> pt;
  if (PAIRED) pt.init(u);
  const bool logw = pb.has_logw;
  for (int g = 0; g < u.G; ++g) {
    const bool partial = int64_t(g + 1) * V > u.N;
    const bool with_lw = logw || partial;
    u.pack_group(g, with_lw);
    if (PAIRED) pt.pack_group(u, g);
    if (with_lw)
      forward_group<T, true, ARGMAX, PAIRED>(u, st, g, pt);
    else
      forward_group<T, false, ARGMAX, PAIRED>(u, st, g, pt);
  }
  // merge lanes (double, fixed order) and write this unit's query pixels
  T* x0 = static_cast<T*>(pb.x0) + u.b * C * u.HW;
  T* lse = static_cast<T*>(pb.lse) + u.b * u.HW;
  int64_t* best = pb.best ? pb.best + u.b * u.HW : nullptr;
  for (int q = 0; q < nq; ++q) {
    const int64_t pix = int64_t(u.r0) * W + q;
    double M = -std::numeric_limits<double>::infinity();
    for (int l = 0; l < V; ++l) M = st.M[q][l] > M ? st.M[q][l] : M;
    double S = 0;
    double scale[VecT<T>::V];
    for (int l = 0; l < V; ++l) {
      scale[l] = std::exp(st.M[q][l] - M);
      S += st.Sout[q][l] * scale[l];
    }
    for (int ch = 0; ch < C; ++ch) {
      double acc = 0;
      for (int l = 0; l < V; ++l) acc += st.Wout[size_t(q) * C + ch][l] * scale[l];
      x0[size_t(ch) * u.HW + pix] = T(acc / S);
    }
    lse[pix] = T(M + std::log(S));
    if (ARGMAX && best) {
      int64_t bk = -1;
      for (int l = 0; l < V; ++l) {
        if (st.BG[q][l] < 0 || st.M[q][l] != M) continue;
        const int64_t key = (int64_t(st.BG[q][l]) * V + l) * u.HW + int64_t(st.BY[q][l]);
        if (bk < 0 || key < bk) bk = key;
      }
      best[pix] = bk;
    }
  }
}
