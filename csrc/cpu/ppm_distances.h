// The distance unit of the CPU kernels: per-work-unit scratch and packing (Unit), the
// separable box-filter passes (also the backward pass's adjoint filter), one
// product-row builder and the distance algorithms behind one dispatcher,
// Unit::distances (see DistanceAlgo in ppm_api.h). Part of ppm_kernel.h: included
// inside an ISA build's namespace after ppm_simd.h and ppm_window_sums.h.
#pragma once

// ---------------------------------------------------------------------------
// Scratch memory: one aligned block per work unit, carved in order.

struct Arena {
  char* base = nullptr;
  size_t used = 0, cap = 0;
  explicit Arena(size_t bytes) : cap(bytes) {
    base = static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64));
  }
  ~Arena() { std::free(base); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  template <class X>
  X* take(size_t count) {
    const size_t bytes = (count * sizeof(X) + 63) / 64 * 64;
    X* p = reinterpret_cast<X*>(base + used);
    used += bytes;
    return p;
  }
};

template <class X>
CF_AI size_t arena_bytes(size_t count) {
  return (count * sizeof(X) + 63) / 64 * 64;
}

// Index maps of one axis, valid for t in [-4 size, 5 size): the real position read at
// unwrapped position t (wrapped, or `size` = the zero sentinel outside the image).
struct AxisMap {
  int off;
  const int* m;
  CF_AI int operator()(int t) const { return m[t + off]; }
};

CF_AI void fill_axis_map(int* m, int size, bool wrap) {
  for (int t = -4 * size; t < 5 * size; ++t) {
    int r;
    if (wrap)
      r = ((t % size) + size) % size;
    else
      r = (t >= 0 && t < size) ? t : size;
    m[t + 4 * size] = r;
  }
}

// ---------------------------------------------------------------------------
// Per-unit context shared by the forward and backward kernels.

template <class T>
struct Unit {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vd vd;
  static constexpr int V = VecT<T>::V;

  const PpmProblem& pb;
  int H, W, C;
  int64_t N, HW, b;
  int r0, r1, nq;
  int G;  // groups of V training images
  double inv2s2;
  AxisMap rmap, cmap;
  int slide_min;  // PpmOptions::slide_min (at least 2: a window of 1 has nothing to slide)
  bool group_finite = true;  // every value of the packed group is finite (pack_group)

  // scratch
  Arena arena;
  int* rmap_buf;
  int* cmap_buf;
  v* ph;       // [(H+1)][(W+1)][C] packed group, zero row H and column W
  vd* phd;     // the same in double, read by the distance builders (T = double: ph itself),
               // so no product converts a key value
  vd* lw;      // [H][W] per-key log prior of the group (lanes past N: -inf)
  double* zd;  // [C][H][W] z[b] in double
  vd* erows;   // [H][W+1] product image rows (real columns), column W = 0
  vd* hreal;   // [H][W] horizontally filtered rows (output columns from offset 0)
  int* rowid;  // [H] slot of a real row in erows/hreal, -1 if not needed
  int* rowlist;  // [H] the needed real rows
  vd* hzero;   // [W] zeros
  vd* hsuf;    // [(2W+1) H] horizontal suffix scratch
  vd* hpre;    // [H]
  vd* hacc;    // [H]
  vd* htot;    // [H]
  vd* vsuf;    // [max(L_r,1)][W] vertical suffix rows
  vd* vpre;    // [W]
  vd* vacc;    // [W]
  vd* vtot;    // [W] sum of all rows (kfull)
  vd* dbuf;    // [W] distance row
  vd* ring;    // [(Lr+1)][W] streaming path: last Lr + 1 filtered rows
  const vd** ring_ptr;  // [Lr+1]
  vd* erow;    // [W+1] streaming path: one product-image row, erow[W] = 0
  vd* run;     // [W] streaming path: running vertical sums
  v* xbuf;     // [W] exponents of one output row's surviving keys
  int* cbuf;   // [W] their columns


  static size_t scratch_bytes(const PpmProblem& pb) {
    const size_t H = pb.H, W = pb.W, C = pb.C;
    const size_t Lr = pb.ax_r.L > 1 ? pb.ax_r.L : 1;
    size_t s = 0;
    s += arena_bytes<int>(9 * H) + arena_bytes<int>(9 * W);
    s += arena_bytes<v>((H + 1) * (W + 1) * C);
    if (!std::is_same<T, double>::value) s += arena_bytes<vd>((H + 1) * (W + 1) * C);
    s += arena_bytes<vd>(H * W);
    s += arena_bytes<double>(C * H * W);
    s += arena_bytes<vd>(H * (W + 1));
    s += arena_bytes<vd>(H * W);
    s += 2 * arena_bytes<int>(H);
    s += arena_bytes<vd>(W);
    s += arena_bytes<vd>((2 * W + 1) * H) + 3 * arena_bytes<vd>(H);
    s += arena_bytes<vd>(Lr * W);
    s += 4 * arena_bytes<vd>(W);
    s += arena_bytes<vd>((Lr + 1) * W) + arena_bytes<const vd*>(Lr + 1) + arena_bytes<vd>(W + 1) +
         arena_bytes<vd>(W);
    s += arena_bytes<v>(W) + arena_bytes<int>(W);
    return s;
  }

  Unit(const PpmProblem& p, int64_t unit, size_t extra_bytes)
      : pb(p),
        H(int(p.H)),
        W(int(p.W)),
        C(int(p.C)),
        N(p.N),
        HW(p.H * p.W),
        b(unit / p.n_row_blocks),
        arena(scratch_bytes(p) + extra_bytes) {
    const int64_t blk = unit % p.n_row_blocks;
    r0 = int(blk * p.rows_per_block);
    r1 = int(r0 + p.rows_per_block < p.H ? r0 + p.rows_per_block : p.H);
    if (r0 > H) r0 = H;
    nq = (r1 - r0) * W;
    G = int((N + V - 1) / V);
    const double sg = p.sigma[b];
    inv2s2 = 1.0 / (2.0 * sg * sg);
    slide_min = p.opt.slide_min < 2 ? 2 : p.opt.slide_min;

    rmap_buf = arena.take<int>(9 * H);
    cmap_buf = arena.take<int>(9 * W);
    fill_axis_map(rmap_buf, H, p.ax_r.wrap);
    fill_axis_map(cmap_buf, W, p.ax_c.wrap);
    rmap = AxisMap{4 * H, rmap_buf};
    cmap = AxisMap{4 * W, cmap_buf};
    ph = arena.take<v>(size_t(H + 1) * (W + 1) * C);
    for (size_t i = 0; i < size_t(H + 1) * (W + 1) * C; ++i) ph[i] = v{};
    if constexpr (std::is_same<T, double>::value) {
      phd = ph;
    } else {
      phd = arena.take<vd>(size_t(H + 1) * (W + 1) * C);
      for (size_t i = 0; i < size_t(H + 1) * (W + 1) * C; ++i) phd[i] = vd{};
    }
    lw = arena.take<vd>(size_t(H) * W);
    zd = arena.take<double>(size_t(C) * HW);
    const T* zb = static_cast<const T*>(p.z) + b * C * HW;
    for (int64_t i = 0; i < C * HW; ++i) zd[i] = double(zb[i]);
    erows = arena.take<vd>(size_t(H) * (W + 1));
    for (size_t i = 0; i < size_t(H) * (W + 1); ++i) erows[i] = vd{};
    hreal = arena.take<vd>(size_t(H) * W);
    rowid = arena.take<int>(H);
    rowlist = arena.take<int>(H);
    for (int i = 0; i < H; ++i) rowid[i] = -1;
    hzero = arena.take<vd>(W);
    for (int i = 0; i < W; ++i) hzero[i] = vd{};
    hsuf = arena.take<vd>(size_t(2 * W + 1) * H);
    hpre = arena.take<vd>(H);
    hacc = arena.take<vd>(H);
    htot = arena.take<vd>(H);
    vsuf = arena.take<vd>(size_t(p.ax_r.L > 1 ? p.ax_r.L : 1) * W);
    vpre = arena.take<vd>(W);
    vacc = arena.take<vd>(W);
    vtot = arena.take<vd>(W);
    dbuf = arena.take<vd>(W);
    const int Lr1 = (p.ax_r.L > 1 ? p.ax_r.L : 1) + 1;
    ring = arena.take<vd>(size_t(Lr1) * W);
    ring_ptr = arena.take<const vd*>(Lr1);
    erow = arena.take<vd>(W + 1);
    for (int i = 0; i <= W; ++i) erow[i] = vd{};
    run = arena.take<vd>(W);
    xbuf = arena.take<v>(W);
    cbuf = arena.take<int>(W);
  }

  // Pack training images g*V .. g*V+V-1 (lanes past N: zeros, log prior -inf).
  void pack_group(int g, bool with_lw) {
    T* phs = reinterpret_cast<T*>(ph);
    const T* data = static_cast<const T*>(pb.data);
    const T* logw = static_cast<const T*>(pb.logw);
    for (int lane = 0; lane < V; ++lane) {
      const int64_t mu = int64_t(g) * V + lane;
      const T* src = mu < N ? data + mu * C * HW : nullptr;
      for (int ch = 0; ch < C; ++ch)
        for (int r = 0; r < H; ++r)
          for (int c = 0; c < W; ++c)
            phs[((size_t(r) * (W + 1) + c) * C + ch) * V + lane] = src ? src[(size_t(ch) * H + r) * W + c] : T(0);
    }
    // A key of weight exactly 0 whose value is +-inf still makes 0 * inf = NaN in the
    // weighted sum (the non-finite rule of every backend, csrc/cuda/NOTES.md), so pruning
    // such a key would change the result: groups with a non-finite value are not pruned.
    // (Pruning decides per vector of V images, so otherwise the result would depend on
    // the instruction set's lane count.)
    group_finite = true;
    for (size_t i = 0, e = size_t(H + 1) * (W + 1) * C * V; i < e; ++i) group_finite &= std::isfinite(phs[i]);
    if constexpr (!std::is_same<T, double>::value) {
      // rows 0..H-1, columns 0..W-1 (the zero row and column stay zero)
      for (int r = 0; r < H; ++r)
        for (size_t i = size_t(r) * (W + 1) * C, e = i + size_t(W) * C; i < e; ++i) phd[i] = to_vd<T>(ph[i]);
    }
    if (with_lw) {
      double* lws = reinterpret_cast<double*>(lw);
      for (int lane = 0; lane < V; ++lane) {
        const int64_t mu = int64_t(g) * V + lane;
        for (int64_t y = 0; y < HW; ++y)
          lws[y * V + lane] = mu >= N ? -std::numeric_limits<double>::infinity()
                                      : (logw ? double(logw[mu * HW + y]) : 0.0);
      }
    }
  }

  CF_AI const v* phi(int row, int col) const { return ph + (size_t(row) * (W + 1) + col) * C; }

  // Horizontal pass of nr rows at once: rows i < nr hold real columns 0..W-1 of a
  // source (src + i * (W + 1)), with column W = 0; out + i * W receives, for
  // c in [clo, chi], kfull * sum_all + window sum at c (at offset c - clo).
  CF_AI void hfilter_rows(const vd* src, int nr, int clo, int chi, vd* out) {
    const AxisTables& ac = pb.ax_c;
    const AxisMap cm = cmap;
    const int pitch = W + 1;
    auto get = [&](int u) -> const vd* { return src + cm(u); };
    if (ac.kfull > 0) {
      for (int i = 0; i < nr; ++i) {
        const vd* row = src + size_t(i) * pitch;
        vd tot = row[0];
        for (int c = 1; c < W; ++c) tot = tot + row[c];
        htot[i] = double(ac.kfull) * tot;
      }
      window_sums<vd>(clo, chi, ac.s, ac.L, nr, pitch, slide_min, get, hsuf, hpre, hacc, [&](int c, const vd* x) {
        for (int i = 0; i < nr; ++i) out[size_t(i) * W + (c - clo)] = x[i] + htot[i];
      });
    } else {
      window_sums<vd>(clo, chi, ac.s, ac.L, nr, pitch, slide_min, get, hsuf, hpre, hacc, [&](int c, const vd* x) {
        for (int i = 0; i < nr; ++i) out[size_t(i) * W + (c - clo)] = x[i];
      });
    }
  }

  // The real rows read by the vertical windows of output rows [rlo, rhi] (all rows if
  // the row filter has a whole-axis part); fills rowlist/rowid, returns the count.
  CF_AI int needed_rows(int rlo, int rhi) {
    const AxisTables& ar = pb.ax_r;
    for (int i = 0; i < H; ++i) rowid[i] = -1;
    const int A = rlo + ar.s, Z = rhi + ar.s + ar.L - 1;
    if (ar.kfull > 0 || Z - A + 1 >= H) {
      for (int i = 0; i < H; ++i) rowid[i] = 1;
    } else {
      for (int u = A; u <= Z; ++u) {
        const int zr = rmap(u);
        if (zr < H) rowid[zr] = 1;
      }
    }
    int n = 0;
    for (int i = 0; i < H; ++i)
      if (rowid[i] >= 0) {
        rowid[i] = n;
        rowlist[n++] = i;
      }
    return n;
  }

  // Range of real columns whose values the horizontal windows of [clo, chi] read.
  CF_AI void needed_cols(int clo, int chi, int* a, int* z) const {
    const AxisTables& ac = pb.ax_c;
    int lo = clo + ac.s, hi = chi + ac.s + ac.L - 1;
    if (ac.kfull > 0 || (ac.wrap && (lo < 0 || hi > W - 1)) || hi - lo + 1 >= W) {
      *a = 0;
      *z = W - 1;
    } else {
      *a = imax(lo, 0);
      *z = imin(hi, W - 1);
    }
  }

  // Vertical pass over rows provided by hrow(u) (u unwrapped; ncols vectors each),
  // output rows [olo, ohi]; emit(r, drow).
  template <class HRow, class Emit>
  CF_AI void vfilter(int olo, int ohi, int ncols, HRow&& hrow, Emit&& emit) {
    const AxisTables& ar = pb.ax_r;
    if (ar.kfull > 0) {
      for (int c = 0; c < ncols; ++c) vtot[c] = vd{};
      for (int u = 0; u < H; ++u) {
        const vd* x = hrow(u);
        for (int c = 0; c < ncols; ++c) vtot[c] = vtot[c] + x[c];
      }
      const double kf = double(ar.kfull);
      window_sums<vd>(olo, ohi, ar.s, ar.L, ncols, 1, slide_min, hrow, vsuf, vpre, vacc, [&](int r, const vd* x) {
        for (int c = 0; c < ncols; ++c) dbuf[c] = x[c] + kf * vtot[c];
        emit(r, dbuf);
      });
    } else {
      window_sums<vd>(olo, ohi, ar.s, ar.L, ncols, 1, slide_min, hrow, vsuf, vpre, vacc, emit);
    }
  }

  // The product-image row e(p) = sum_ch (z(p) - phi(p + delta))^2 of real query row zr
  // at columns [ca, cz], in double, into out[c] (the one builder of both box filters).
  CF_AI void product_row(int zr, int dr, int dc, int ca, int cz, vd* out) const {
    const AxisMap rm = rmap, cm = cmap;
    const int kr = rm(zr + dr);  // H: zero row
    const vd* krow = phd + size_t(kr) * (W + 1) * C;
    const double* zrow = zd + size_t(zr) * W;
    if (C == 1) {
      // key columns c + dc inside the image need no index map (the common case)
      const int ia = imax(ca, -dc), iz = imin(cz, W - 1 - dc);
      for (int c = ca; c <= cz; ++c) {
        if (c == ia && ia <= iz) {
          const vd* kp = krow + dc;
          for (; c <= iz; ++c) {
            const vd diff = zrow[c] - kp[c];
            out[c] = diff * diff;
          }
          if (c > cz) break;
        }
        const vd diff = zrow[c] - krow[cm(c + dc)];
        out[c] = diff * diff;
      }
    } else {
      for (int c = ca; c <= cz; ++c) {
        const vd* kp = krow + size_t(cm(c + dc)) * C;
        vd acc = vd{};
        for (int ch = 0; ch < C; ++ch) {
          const vd diff = zrow[size_t(ch) * HW + c] - kp[ch];
          acc = acc + diff * diff;
        }
        out[c] = acc;
      }
    }
  }

  // Materialised box filter (DistanceAlgo::Gw, and every patch with a whole-axis part):
  // the product rows the windows read, a horizontal pass, then a vertical pass, both
  // with Gil-Werman sums anchored to absolute positions. Distances d(x, x + delta) of
  // the current group for query rows [rlo, rhi] and columns [clo, chi]; emit(r, drow)
  // with drow[c - clo].
  template <class Emit>
  void distances_gw(int dr, int dc, int rlo, int rhi, int clo, int chi, Emit&& emit) {
    const int ncols = chi - clo + 1;
    int ca, cz;
    needed_cols(clo, chi, &ca, &cz);
    const int nr = needed_rows(rlo, rhi);
    const AxisMap rm = rmap;
    for (int i = 0; i < nr; ++i) product_row(rowlist[i], dr, dc, ca, cz, erows + size_t(i) * (W + 1));
    hfilter_rows(erows, nr, clo, chi, hreal);
    auto hrow = [&](int u) -> const vd* {
      const int zr = rm(u);
      return zr >= H ? hzero : hreal + size_t(rowid[zr]) * W;
    };
    vfilter(rlo, rhi, ncols, hrow, emit);
  }

  // Streaming box filter (DistanceAlgo::Auto for patches without a whole-axis part,
  // i.e. all but circular P > size): output rows in order, one new product-image row
  // per output row, a ring of the last Lr + 1 horizontally filtered rows, and running
  // vertical sums.
  // Sums are in double, so sliding (add the new row, subtract the old) keeps every
  // distance accurate to ~1e-16 of the window sums it passed through. The running
  // sums restart with a direct sum every kAnchor rows counted from the displacement's
  // first admissible row `hull_lo`, so a distance does not depend on where a work unit
  // starts (tiling and thread count change no bit).
  static constexpr int kAnchor = 8;
  static constexpr int kMaxDirect = 64;
  template <class Emit>
  void distances_stream(int dr, int dc, int hull_lo, int rlo, int rhi, int clo, int chi, Emit&& emit) {
    const AxisTables& ar = pb.ax_r;
    const AxisTables& ac = pb.ax_c;
    const int Lr = ar.L, sr = ar.s, Lc = ac.L, sc = ac.s;
    const int ncols = chi - clo + 1;
    int ca, cz;
    needed_cols(clo, chi, &ca, &cz);
    const AxisMap rm = rmap, cm = cmap;
    const int R = Lr + 1;
    auto make_row = [&](int u) {
      const int k = ((u % R) + R) % R;
      const int zr = rm(u);
      if (zr >= H) {
        ring_ptr[k] = hzero;
        return;
      }
      product_row(zr, dr, dc, ca, cz, erow);
      vd* out = ring + size_t(k) * W;
      if (Lc < slide_min) {
        // windows inside the image read erow directly (same sums, same order)
        const int ia = imax(clo, -sc), iz = imin(chi, W - sc - Lc);
        for (int c = clo; c <= chi; ++c) {
          if (c == ia && ia <= iz) {
            // the common windows (P = 3 and 1) with their length known to the compiler
            if (Lc == 3) {
              for (; c <= iz; ++c) {
                const vd* e = erow + c + sc;
                out[c - clo] = (e[0] + e[1]) + e[2];
              }
            } else {
              for (; c <= iz; ++c) {
                const vd* e = erow + c + sc;
                vd acc = e[0];
                for (int j = 1; j < Lc; ++j) acc = acc + e[j];
                out[c - clo] = acc;
              }
            }
            if (c > chi) break;
          }
          vd acc = erow[cm(c + sc)];
          for (int j = 1; j < Lc; ++j) acc = acc + erow[cm(c + sc + j)];
          out[c - clo] = acc;
        }
      } else {
        vd acc = erow[cm(clo + sc)];
        for (int j = 1; j < Lc; ++j) acc = acc + erow[cm(clo + sc + j)];
        out[0] = acc;
        for (int c = clo + 1; c <= chi; ++c) {
          acc = acc + (erow[cm(c + sc + Lc - 1)] - erow[cm(c + sc - 1)]);
          out[c - clo] = acc;
        }
      }
      ring_ptr[k] = out;
    };
    auto row = [&](int u) -> const vd* { return ring_ptr[((u % R) + R) % R]; };
    const int a = hull_lo + floordiv(rlo - hull_lo, kAnchor) * kAnchor;
    for (int u = a + sr; u < a + sr + Lr - 1; ++u) make_row(u);
    for (int i = a; i <= rhi; ++i) {
      make_row(i + sr + Lr - 1);
      if (Lr < slide_min || i == a || (i - hull_lo) % kAnchor == 0) {
        // direct sum, column-outer: one store per output (the row-outer form stored
        // every partial sum and was bound on stores); same addition order
        const vd* xs[kMaxDirect];
        if (Lr <= kMaxDirect) {
          for (int j = 0; j < Lr; ++j) xs[j] = row(i + sr + j);
          // four columns per pass over the rows: four independent sums share each row
          // pointer and the loop overhead (same addition order per column)
          int c = 0;
          for (; c + 4 <= ncols; c += 4) {
            vd a0 = xs[0][c], a1 = xs[0][c + 1], a2 = xs[0][c + 2], a3 = xs[0][c + 3];
            for (int j = 1; j < Lr; ++j) {
              const vd* x = xs[j] + c;
              a0 = a0 + x[0];
              a1 = a1 + x[1];
              a2 = a2 + x[2];
              a3 = a3 + x[3];
            }
            run[c] = a0;
            run[c + 1] = a1;
            run[c + 2] = a2;
            run[c + 3] = a3;
          }
          for (; c < ncols; ++c) {
            vd acc = xs[0][c];
            for (int j = 1; j < Lr; ++j) acc = acc + xs[j][c];
            run[c] = acc;
          }
        } else {
          const vd* x0 = row(i + sr);
          for (int c = 0; c < ncols; ++c) run[c] = x0[c];
          for (int j = 1; j < Lr; ++j) {
            const vd* x = row(i + sr + j);
            for (int c = 0; c < ncols; ++c) run[c] = run[c] + x[c];
          }
        }
      } else {
        const vd* nw = row(i + sr + Lr - 1);
        const vd* od = row(i + sr - 1);
        for (int c = 0; c < ncols; ++c) run[c] = run[c] + (nw[c] - od[c]);
      }
      if (i >= rlo) emit(i, run);
    }
  }

  // The one distance dispatcher (see DistanceAlgo): distances of the current group for
  // query rows [rlo, rhi] (rvalid: admissible rows) and columns [clo, chi], emit(r, drow)
  // with drow[c - clo]. EVERY_ROW: emit every row of [rlo, rhi], inadmissible ones too,
  // as the backward pass needs; the direct method emits admissible rows only, so it
  // serves the forward pass and the backward pass takes the automatic choice. Patches
  // with a whole-axis part (circular P > size; L may then be 0) always take the
  // materialised filter, the only one that handles them.
  template <bool EVERY_ROW, class Emit>
  CF_AI void distances(int dr, int dc, int hull_lo, int rlo, int rhi, int clo, int chi, const uint8_t* rvalid,
                       Emit&& emit) {
    const DistanceAlgo algo = pb.opt.algo;
    if constexpr (!EVERY_ROW) {
      if (algo == DistanceAlgo::Direct) {
        distances_direct(dr, dc, rlo, rhi, clo, chi, rvalid, emit);
        return;
      }
    }
    if (algo == DistanceAlgo::Gw || pb.ax_r.kfull > 0 || pb.ax_c.kfull > 0 || pb.ax_r.L == 0 ||
        pb.ax_c.L == 0)
      distances_gw(dr, dc, rlo, rhi, clo, chi, emit);
    else
      distances_stream(dr, dc, hull_lo, rlo, rhi, clo, chi, emit);
  }

  // Direct method (DistanceAlgo::Direct: explicit weighted O(P^2) patch distances),
  // kept for measurement; admissible rows only. Same zero-extension convention as the
  // box filter (see patch_posterior.cpp).
  template <class Emit>
  void distances_direct(int dr, int dc, int rlo, int rhi, int clo, int chi, const uint8_t* rvalid,
                        Emit&& emit) {
    const AxisTables& ar = pb.ax_r;
    const AxisTables& ac = pb.ax_c;
    const AxisMap rm = rmap, cm = cmap;
    const int ncols = chi - clo + 1;
    for (int r = rlo; r <= rhi; ++r) {
      if (!rvalid[r]) continue;
      for (int c = 0; c < ncols; ++c) dbuf[c] = vd{};
      for (int i = 0; i < ar.count; ++i) {
        const int zr = rm(r + ar.first + i);
        if (zr >= H) continue;
        const int kr = rm(r + dr + ar.first + i);
        const double* zrow = zd + size_t(zr) * W;
        const vd* krow = phd + size_t(kr) * (W + 1) * C;
        const double wr = ar.weight[i];
        for (int c = clo; c <= chi; ++c) {
          vd acc = vd{};
          for (int j = 0; j < ac.count; ++j) {
            const int zc = cm(c + ac.first + j);
            if (zc >= W) continue;
            const vd* kp = krow + size_t(cm(c + dc + ac.first + j)) * C;
            vd part = vd{};
            for (int ch = 0; ch < C; ++ch) {
              const vd diff = zrow[size_t(ch) * HW + zc] - kp[ch];
              part = part + diff * diff;
            }
            acc = acc + double(ac.weight[j]) * part;
          }
          dbuf[c - clo] = dbuf[c - clo] + wr * acc;
        }
      }
      emit(r, dbuf);
    }
  }
};

// The first and last admissible query rows of [r0, r1) for one row displacement
// (rvalid: admissibility per row); false when there is none.
CF_AI bool admissible_rows(const uint8_t* rvalid, int r0, int r1, int* rlo, int* rhi) {
  *rlo = r1;
  *rhi = r0 - 1;
  for (int r = r0; r < r1; ++r)
    if (rvalid[r]) {
      *rlo = imin(*rlo, r);
      *rhi = r;
    }
  return *rlo <= *rhi;
}
