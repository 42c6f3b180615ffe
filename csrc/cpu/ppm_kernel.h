// Fused CPU kernels of patch_posterior_mean (SPEC 4, 9), written once and compiled
// per instruction set: ppm_<isa>.cpp sets `#pragma GCC target`, defines
// CF_ISA_LEVEL (0 baseline, 1 AVX2+FMA, 2 AVX-512) and includes this file inside
// its own namespace. No torch header may be included here (see ppm_api.h).
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
// so a (query, key) pair costs O(C) plus a few adds whatever P (SPEC 9), and the
// [queries x keys] matrix never exists. Distances, logits and running maxima are in
// double, so the float32 kernel is as accurate as the float64 reference: the default
// path (distances_stream) slides its windows (add the new row, subtract the old;
// in double that loses ~1e-16 of the sums passed through) and restarts them with a
// direct sum every kAnchor rows counted from the displacement's first admissible
// row, so every distance is bitwise independent of the tiling and the thread count.
// Circular patches larger than the image (multiplicity weights: a whole-axis part)
// use distances_box: materialised rows with Gil-Werman block prefix/suffix sums
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

#define CF_AI inline __attribute__((always_inline))

#include "cpu/vexp_f.h"  // vexp_f: the float exp (in this ISA's namespace and target)

template <class T>
struct VecT;
// Lanes per group V = doubles per native vector (8 AVX-512, 4 AVX2, 2 baseline), so
// every type below is one native register: v data lanes (T), vi int lanes of v's
// width, vd the same lanes in double (distances, logits, running maxima, outer
// sums), vdi int64 lanes of vd.
#if CF_ISA_LEVEL >= 2
#define CF_VBYTES 64
#elif CF_ISA_LEVEL == 1
#define CF_VBYTES 32
#else
#define CF_VBYTES 16
#endif
template <>
struct VecT<float> {
  static constexpr int V = CF_VBYTES / 8;
  typedef float v __attribute__((vector_size(CF_VBYTES / 2)));
  typedef int32_t vi __attribute__((vector_size(CF_VBYTES / 2)));
  typedef double vd __attribute__((vector_size(CF_VBYTES)));
  typedef int64_t vdi __attribute__((vector_size(CF_VBYTES)));
  static constexpr float kExpLo = kVexpLoF;  // vexp_f.h: exp(-87) > FLT_MIN, no denormals
};
template <>
struct VecT<double> {
  static constexpr int V = CF_VBYTES / 8;
  typedef double v __attribute__((vector_size(CF_VBYTES)));
  typedef int64_t vi __attribute__((vector_size(CF_VBYTES)));
  typedef double vd __attribute__((vector_size(CF_VBYTES)));
  typedef int64_t vdi __attribute__((vector_size(CF_VBYTES)));
  static constexpr double kExpLo = -708.0;  // exp(-708) > DBL_MIN
};
// Keys are pruned when every lane's (double) exponent is below kExpLo - 0.5: after
// rounding to T such an exponent is still below kExpLo, so vexp would return exactly
// 0 for it. Pruning therefore never changes a bit of the result.
template <class T>
CF_AI double prune_below() {
  return double(VecT<T>::kExpLo) - 0.5;
}

template <class VV, class S>
CF_AI VV splat(S s) {
  return VV{} + s;
}

// ---------------------------------------------------------------------------
// exp for arguments <= 0 (all call sites: logit minus a running max or lse).
// Returns exactly 0 below kExpLo (that is the pruning contract) and exactly 1 at 0:
// vexp_f (float, vexp_f.h) and vexp_d (double).

template <class VD>
CF_AI VD vexp_d(VD x) {
  typedef int64_t VI __attribute__((vector_size(sizeof(VD))));
  const VD lo = splat<VD>(VecT<double>::kExpLo);
  const VD xc = x < lo ? lo : x;
  const VD magic = splat<VD>(6755399441055744.0);  // 1.5 * 2^52
  const VD t = xc * 1.4426950408889634074 + magic;
  const VD n = t - magic;
  const VI ni = (VI)t - (VI)magic;
  VD r = xc - n * 6.93145751953125E-1;
  r = r - n * 1.42860682030941723212E-6;
  // Taylor series to degree 13 on |r| <= ln2/2: truncation < 1e-17.
  VD y = splat<VD>(1.0 / 6227020800.0);
  y = y * r + 1.0 / 479001600.0;
  y = y * r + 1.0 / 39916800.0;
  y = y * r + 1.0 / 3628800.0;
  y = y * r + 1.0 / 362880.0;
  y = y * r + 1.0 / 40320.0;
  y = y * r + 1.0 / 5040.0;
  y = y * r + 1.0 / 720.0;
  y = y * r + 1.0 / 120.0;
  y = y * r + 1.0 / 24.0;
  y = y * r + 1.0 / 6.0;
  y = y * r + 0.5;
  y = y * r + 1.0;
  y = y * r + 1.0;
  const VI bits = (ni + 1023) << 52;
  const VD res = y * (VD)bits;
  return x < lo ? VD{} : res;
}

template <class W>
CF_AI W vexp_tag(W x, float) {
  return vexp_f(x);
}
template <class W>
CF_AI W vexp_tag(W x, double) {
  return vexp_d(x);
}
CF_AI VecT<float>::v vexp(VecT<float>::v x) { return vexp_f(x); }
CF_AI VecT<double>::v vexp(VecT<double>::v x) { return vexp_d(x); }

// Lane-wise conversions between v (T lanes) and vd (double lanes). GCC splits the
// 8 x float -> 8 x double convertvector into four instructions; AVX-512 has one.
template <class T>
CF_AI typename VecT<T>::vd to_vd(typename VecT<T>::v x) {
#if CF_ISA_LEVEL >= 2
  if constexpr (sizeof(T) == 4) return (typename VecT<T>::vd)_mm512_cvtps_pd((__m256)x);
#endif
  return __builtin_convertvector(x, typename VecT<T>::vd);
}
template <class T>
CF_AI typename VecT<T>::v to_v(typename VecT<T>::vd x) {
#if CF_ISA_LEVEL >= 2
  if constexpr (sizeof(T) == 4) return (typename VecT<T>::v)_mm512_cvtpd_ps((__m512d)x);
#endif
  return __builtin_convertvector(x, typename VecT<T>::v);
}

// In-place exp of n * V values of T (n vectors of V lanes), CF_VBYTES at a time.
template <class T>
CF_AI void vexp_array(T* x, int nvec) {
  typedef T w __attribute__((vector_size(CF_VBYTES)));
  constexpr int per = int(CF_VBYTES / sizeof(T)) / VecT<T>::V;  // vectors per wide vector
  int i = 0;
  for (; i + per <= nvec; i += per) {
    w* p = reinterpret_cast<w*>(x + size_t(i) * VecT<T>::V);
    *p = vexp_tag(*p, T(0));
  }
  for (; i < nvec; ++i) {
    typename VecT<T>::v* p = reinterpret_cast<typename VecT<T>::v*>(x + size_t(i) * VecT<T>::V);
    *p = vexp(*p);
  }
}

// ---------------------------------------------------------------------------
// "any lane" tests

#if CF_ISA_LEVEL >= 2
CF_AI bool any_gt(VecT<float>::v a, VecT<float>::v b) {
  return _mm256_cmp_ps_mask((__m256)a, (__m256)b, _CMP_GT_OQ) != 0;
}
CF_AI bool any_ge(VecT<float>::v a, VecT<float>::v b) {
  return _mm256_cmp_ps_mask((__m256)a, (__m256)b, _CMP_GE_OQ) != 0;
}
CF_AI bool any_gt(VecT<double>::v a, VecT<double>::v b) {
  return _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GT_OQ) != 0;
}
CF_AI bool any_ge(VecT<double>::v a, VecT<double>::v b) {
  return _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GE_OQ) != 0;
}
#else
template <class VI>
CF_AI bool any_true(VI m) {
  if constexpr (sizeof(VI) == 32) {
    union {
      VI v;
      __m256i h;
    } u;
    u.v = m;
    return !_mm256_testz_si256(u.h, u.h);
  } else if constexpr (sizeof(VI) == 16) {
    union {
      VI v;
      __m128i h;
    } u;
    u.v = m;
    return _mm_movemask_epi8(u.h) != 0;
  } else {
    static_assert(sizeof(VI) == 8, "unexpected vector size");
    union {
      VI v;
      uint64_t h;
    } u;
    u.v = m;
    return u.h != 0;
  }
}
template <class VV>
CF_AI bool any_gt(VV a, VV b) {
  return any_true(a > b);
}
template <class VV>
CF_AI bool any_ge(VV a, VV b) {
  return any_true(a >= b);
}
#endif

// Any lane of an integer (comparison-mask) vector non-zero.
template <class VI>
CF_AI bool any_nonzero(VI m) {
  VI acc = m;
  bool r = false;
  for (size_t i = 0; i < sizeof(VI) / sizeof(acc[0]); ++i) r = r || acc[i] != 0;
  return r;
}

CF_AI int imin(int a, int b) { return a < b ? a : b; }
CF_AI int imax(int a, int b) { return a > b ? a : b; }
CF_AI int floordiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

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
// One-dimensional window sums, out[i] = sum_{j=0}^{L-1} src(i + s + j) for output
// positions i in [lo, hi], anchored: blocks of L outputs start at multiples of L.
// Element u (unwrapped) is `width` vectors get(u)[k * stride], k < width; the
// width dimension is independent work (rows or columns processed side by side), so
// the prefix/suffix recurrences run as `width` interleaved chains. emit(i, acc) gets
// the window sums of element i as `width` contiguous vectors.

template <class v, class Get, class Emit>
CF_AI void window_sums(int lo, int hi, int s, int L, int width, int stride, int gw_min_len, Get&& get, v* suf,
                       v* pre, v* acc, Emit&& emit) {
  if (L == 0) {
    for (int i = lo; i <= hi; ++i) {
      for (int c = 0; c < width; ++c) acc[c] = v{};
      emit(i, acc);
    }
    return;
  }
  if (L < gw_min_len) {
    for (int i = lo; i <= hi; ++i) {
      const v* a = get(i + s);
      for (int c = 0; c < width; ++c) acc[c] = a[c * stride];
      for (int j = 1; j < L; ++j) {
        const v* b = get(i + s + j);
        for (int c = 0; c < width; ++c) acc[c] = acc[c] + b[c * stride];
      }
      emit(i, acc);
    }
    return;
  }
  // Gil-Werman / van Herk: window = suffix of its block + prefix of the next block.
  int i = lo;
  while (i <= hi) {
    const int k = floordiv(i, L);
    const int bs = k * L + s, be = bs + L - 1;  // unwrapped element range of block k
    const int seg_end = imin(hi, k * L + L - 1);
    const int t0 = i + s;
    {  // suffix sums for t in [t0, be], stored at suf[(t - bs) * width]
      const v* a = get(be);
      v* dst = suf + (be - bs) * width;
      for (int c = 0; c < width; ++c) dst[c] = a[c * stride];
      for (int t = be - 1; t >= t0; --t) {
        const v* x = get(t);
        v* d = suf + (t - bs) * width;
        const v* nx = d + width;
        for (int c = 0; c < width; ++c) d[c] = x[c * stride] + nx[c];
      }
    }
    for (int c = 0; c < width; ++c) pre[c] = v{};
    int u = be + 1;
    for (; i <= seg_end; ++i) {
      const int t = i + s;
      const v* sf = suf + (t - bs) * width;
      if (t == bs) {
        emit(i, sf);
      } else {
        for (; u <= t + L - 1; ++u) {
          const v* x = get(u);
          for (int c = 0; c < width; ++c) pre[c] = pre[c] + x[c * stride];
        }
        for (int c = 0; c < width; ++c) acc[c] = sf[c] + pre[c];
        emit(i, acc);
      }
    }
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
  int gw_min;

  // scratch
  Arena arena;
  int* rmap_buf;
  int* cmap_buf;
  v* ph;       // [(H+1)][(W+1)][C] packed group, zero row H and column W
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
    gw_min = p.opt.gw_min_len < 2 ? 2 : p.opt.gw_min_len;

    rmap_buf = arena.take<int>(9 * H);
    cmap_buf = arena.take<int>(9 * W);
    fill_axis_map(rmap_buf, H, p.ax_r.wrap);
    fill_axis_map(cmap_buf, W, p.ax_c.wrap);
    rmap = AxisMap{4 * H, rmap_buf};
    cmap = AxisMap{4 * W, cmap_buf};
    ph = arena.take<v>(size_t(H + 1) * (W + 1) * C);
    for (size_t i = 0; i < size_t(H + 1) * (W + 1) * C; ++i) ph[i] = v{};
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
      window_sums<vd>(clo, chi, ac.s, ac.L, nr, pitch, gw_min, get, hsuf, hpre, hacc, [&](int c, const vd* x) {
        for (int i = 0; i < nr; ++i) out[size_t(i) * W + (c - clo)] = x[i] + htot[i];
      });
    } else {
      window_sums<vd>(clo, chi, ac.s, ac.L, nr, pitch, gw_min, get, hsuf, hpre, hacc, [&](int c, const vd* x) {
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
      window_sums<vd>(olo, ohi, ar.s, ar.L, ncols, 1, gw_min, hrow, vsuf, vpre, vacc, [&](int r, const vd* x) {
        for (int c = 0; c < ncols; ++c) dbuf[c] = x[c] + kf * vtot[c];
        emit(r, dbuf);
      });
    } else {
      window_sums<vd>(olo, ohi, ar.s, ar.L, ncols, 1, gw_min, hrow, vsuf, vpre, vacc, emit);
    }
  }

  // Distances d(x, x + delta) of the current group for query rows [rlo, rhi] and
  // columns [clo, chi]; emit(r, drow) with drow[c - clo].
  template <class Emit>
  void distances_box(int dr, int dc, int rlo, int rhi, int clo, int chi, Emit&& emit) {
    const int ncols = chi - clo + 1;
    int ca, cz;
    needed_cols(clo, chi, &ca, &cz);
    const int nr = needed_rows(rlo, rhi);
    const AxisMap rm = rmap, cm = cmap;
    // product image rows e(p) = sum_ch (z(p) - phi(p + delta))^2, in double
    for (int i = 0; i < nr; ++i) {
      const int zr = rowlist[i];
      const int kr = rm(zr + dr);  // H: zero row
      const v* krow = ph + size_t(kr) * (W + 1) * C;
      const double* zrow = zd + size_t(zr) * W;
      vd* er = erows + size_t(i) * (W + 1);
      if (C == 1) {
        for (int c = ca; c <= cz; ++c) {
          const vd diff = zrow[c] - to_vd<T>(krow[cm(c + dc)]);
          er[c] = diff * diff;
        }
      } else {
        for (int c = ca; c <= cz; ++c) {
          const v* kp = krow + size_t(cm(c + dc)) * C;
          vd acc = vd{};
          for (int ch = 0; ch < C; ++ch) {
            const vd diff = zrow[size_t(ch) * HW + c] - to_vd<T>(kp[ch]);
            acc = acc + diff * diff;
          }
          er[c] = acc;
        }
      }
    }
    hfilter_rows(erows, nr, clo, chi, hreal);
    auto hrow = [&](int u) -> const vd* {
      const int zr = rm(u);
      return zr >= H ? hzero : hreal + size_t(rowid[zr]) * W;
    };
    vfilter(rlo, rhi, ncols, hrow, emit);
  }

  // Streaming box filter (patches without a whole-axis part, i.e. all but circular
  // P > size): output rows in order, one new product-image row per output row, a
  // ring of the last Lr + 1 horizontally filtered rows, and running vertical sums.
  // Sums are in double, so sliding (add the new row, subtract the old) keeps every
  // distance accurate to ~1e-16 of the window sums it passed through. The running
  // sums restart with a direct sum every kAnchor rows counted from the displacement's
  // first admissible row `ghl`, so a distance does not depend on where a work unit
  // starts (tiling and thread count change no bit).
  static constexpr int kAnchor = 8;
  static constexpr int kMaxDirect = 64;
  template <class Emit>
  void distances_stream(int dr, int dc, int ghl, int rlo, int rhi, int clo, int chi, Emit&& emit) {
    const AxisTables& ar = pb.ax_r;
    const AxisTables& ac = pb.ax_c;
    const int Lr = ar.L, sr = ar.s, Lc = ac.L, sc = ac.s;
    const int ncols = chi - clo + 1;
    const int slide = gw_min;  // window length from which sums slide
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
      const int kr = rm(zr + dr);  // H: zero row
      const v* krow = ph + size_t(kr) * (W + 1) * C;
      const double* zrow = zd + size_t(zr) * W;
      if (C == 1) {
        // key columns c + dc inside the image need no index map (the common case)
        const int ia = imax(ca, -dc), iz = imin(cz, W - 1 - dc);
        for (int c = ca; c <= cz; ++c) {
          if (c == ia && ia <= iz) {
            const v* kp = krow + dc;
            for (; c <= iz; ++c) {
              const vd diff = zrow[c] - to_vd<T>(kp[c]);
              erow[c] = diff * diff;
            }
            if (c > cz) break;
          }
          const vd diff = zrow[c] - to_vd<T>(krow[cm(c + dc)]);
          erow[c] = diff * diff;
        }
      } else {
        for (int c = ca; c <= cz; ++c) {
          const v* kp = krow + size_t(cm(c + dc)) * C;
          vd acc = vd{};
          for (int ch = 0; ch < C; ++ch) {
            const vd diff = zrow[size_t(ch) * HW + c] - to_vd<T>(kp[ch]);
            acc = acc + diff * diff;
          }
          erow[c] = acc;
        }
      }
      vd* out = ring + size_t(k) * W;
      if (Lc < slide) {
        // windows inside the image read erow directly (same sums, same order)
        const int ia = imax(clo, -sc), iz = imin(chi, W - sc - Lc);
        for (int c = clo; c <= chi; ++c) {
          if (c == ia && ia <= iz) {
            for (; c <= iz; ++c) {
              const vd* e = erow + c + sc;
              vd acc = e[0];
              for (int j = 1; j < Lc; ++j) acc = acc + e[j];
              out[c - clo] = acc;
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
    const int a = ghl + floordiv(rlo - ghl, kAnchor) * kAnchor;
    for (int u = a + sr; u < a + sr + Lr - 1; ++u) make_row(u);
    for (int i = a; i <= rhi; ++i) {
      make_row(i + sr + Lr - 1);
      if (Lr < slide || i == a || (i - ghl) % kAnchor == 0) {
        // direct sum, column-outer: one store per output (the row-outer form stored
        // every partial sum and was bound on stores); same addition order
        const vd* xs[kMaxDirect];
        if (Lr <= kMaxDirect) {
          for (int j = 0; j < Lr; ++j) xs[j] = row(i + sr + j);
          for (int c = 0; c < ncols; ++c) {
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

  // Backward: every row of [rlo, rhi] must be emitted (invalid ones too).
  template <class Emit>
  CF_AI void distances_box_or_stream(int dr, int dc, int ghl, int rlo, int rhi, int clo, int chi, Emit&& emit) {
    if (pb.opt.algo == 3 || pb.ax_r.kfull > 0 || pb.ax_c.kfull > 0 || pb.ax_r.L == 0 || pb.ax_c.L == 0)
      distances_box(dr, dc, rlo, rhi, clo, chi, emit);
    else
      distances_stream(dr, dc, ghl, rlo, rhi, clo, chi, emit);
  }

  // Distances by the algorithm the options select (see PpmOptions::algo).
  template <class Emit>
  CF_AI void distances(int dr, int dc, int ghl, int rlo, int rhi, int clo, int chi, const uint8_t* rvalid,
                       Emit&& emit) {
    const int algo = pb.opt.algo;
    if (algo == 2)
      distances_direct(dr, dc, rlo, rhi, clo, chi, rvalid, emit);
    else if (algo == 3 || pb.ax_r.kfull > 0 || pb.ax_c.kfull > 0 || pb.ax_r.L == 0 || pb.ax_c.L == 0)
      distances_box(dr, dc, rlo, rhi, clo, chi, emit);
    else
      distances_stream(dr, dc, ghl, rlo, rhi, clo, chi, emit);
  }

  // Direct method (explicit weighted patch distances), for measurement and dispatch.
  // Same zero-extension convention as the box filter (see patch_posterior.cpp).
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
        const v* krow = ph + size_t(kr) * (W + 1) * C;
        const double wr = ar.weight[i];
        for (int c = clo; c <= chi; ++c) {
          vd acc = vd{};
          for (int j = 0; j < ac.count; ++j) {
            const int zc = cm(c + ac.first + j);
            if (zc >= W) continue;
            const v* kp = krow + size_t(cm(c + dc + ac.first + j)) * C;
            vd part = vd{};
            for (int ch = 0; ch < C; ++ch) {
              const vd diff = zrow[size_t(ch) * HW + zc] - to_vd<T>(kp[ch]);
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

// ---------------------------------------------------------------------------
// Forward

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

template <class T, bool LOGW, bool ARGMAX>
void forward_group(Unit<T>& u, FwdState<T>& st, int g) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  typedef typename VecT<T>::vd vd;
  typedef typename VecT<T>::vdi vdi;
  const PpmProblem& pb = u.pb;
  const AxisTables& ar = pb.ax_r;
  const AxisTables& ac = pb.ax_c;
  const int W = u.W, C = u.C, r0 = u.r0, r1 = u.r1;
  const bool prune = pb.opt.prune != 0;
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
          const vd* lwrow = LOGW ? u.lw + size_t(kr) * W : nullptr;
          for (int j = 0; j < n; ++j) {
            const int c = clo + j;
            vd l = drow[j] * neg_inv2s2;
            if (LOGW) l = l + lwrow[ckey[c]];
            const vd m = st.M[qrow + c];
            raise = raise | (vdi)(ARGMAX ? (l >= m) : (l > m));
            u.xbuf[j] = to_v<T>(l - m);
          }
          if (!any_nonzero(raise)) {
            exp_accumulate(kr, qrow, n, [&](int j) { return clo + j; });
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
          if (prune && !any_ge(x, pruneLo)) continue;  // every lane's weight is exactly 0
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
      u.distances(dr, dc, ar.hull_lo[ir], rlo, rhi, clo, chi, rvalid, update_row);
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

template <class T, bool ARGMAX>
void forward_patch(const PpmProblem& pb, int64_t unit) {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vi vi;
  typedef typename VecT<T>::vd vd;
  constexpr int V = VecT<T>::V;
  const size_t nq_max = size_t(pb.rows_per_block) * pb.W;
  const size_t extra = arena_bytes<vd>(nq_max) + arena_bytes<v>(nq_max) + arena_bytes<v>(nq_max * pb.C) +
                       arena_bytes<vd>(nq_max) + arena_bytes<vd>(nq_max * pb.C) + 2 * arena_bytes<vi>(nq_max);
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
  const bool logw = pb.has_logw;
  for (int g = 0; g < u.G; ++g) {
    const bool partial = int64_t(g + 1) * V > u.N;
    const bool with_lw = logw || partial;
    u.pack_group(g, with_lw);
    if (with_lw)
      forward_group<T, true, ARGMAX>(u, st, g);
    else
      forward_group<T, false, ARGMAX>(u, st, g);
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

// ---------------------------------------------------------------------------
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
  const bool prune = pb.opt.prune != 0;
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
      u.distances_box_or_stream(dr, dc, ar.hull_lo[ir], rlo, rhi, clo, chi, [&](int r, const vd* drow) {
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
            if (!prune || any_ge(x, pruneLo)) {
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

// ---------------------------------------------------------------------------
// Ideal machine (SPEC 3.1): one softmax over whole images per sample; unit = b.

template <class T>
void forward_ideal(const PpmProblem& pb, int64_t b) {
  const int64_t C = pb.C, HW = pb.H * pb.W, D = C * HW, N = pb.N;
  const T* zb = static_cast<const T*>(pb.z) + b * D;
  const T* data = static_cast<const T*>(pb.data);
  const T* logw = static_cast<const T*>(pb.logw);
  const double sg = pb.sigma[b];
  const double inv2s2 = 1.0 / (2.0 * sg * sg);
  double* acc = static_cast<double*>(std::aligned_alloc(64, (D * sizeof(double) + 63) / 64 * 64));
  for (int64_t i = 0; i < D; ++i) acc[i] = 0;
  double m = -std::numeric_limits<double>::infinity(), S = 0;
  int64_t best = -1;
  for (int64_t mu = 0; mu < N; ++mu) {
    const T* ph = data + mu * D;
    double d = 0;
    for (int64_t i = 0; i < D; ++i) {
      const double diff = double(zb[i]) - double(ph[i]);
      d += diff * diff;
    }
    double l = -d * inv2s2;
    if (logw) l += double(logw[mu]);
    if (l == -std::numeric_limits<double>::infinity()) continue;
    if (l > m) {
      const double sc = std::exp(m - l);
      S *= sc;
      for (int64_t i = 0; i < D; ++i) acc[i] *= sc;
      m = l;
      best = mu;
    }
    const double p = std::exp(l - m);
    S += p;
    for (int64_t i = 0; i < D; ++i) acc[i] += p * double(ph[i]);
  }
  T* x0 = static_cast<T*>(pb.x0) + b * D;
  for (int64_t i = 0; i < D; ++i) x0[i] = T(acc[i] / S);
  T* lse = static_cast<T*>(pb.lse) + b * HW;
  const T lv = T(m + std::log(S));
  for (int64_t i = 0; i < HW; ++i) lse[i] = lv;
  if (pb.best)
    for (int64_t i = 0; i < HW; ++i) pb.best[b * HW + i] = best < 0 ? -1 : best * HW + i;
  std::free(acc);
}

template <class T>
void backward_ideal(const PpmProblem& pb, int64_t b) {
  const int64_t C = pb.C, HW = pb.H * pb.W, D = C * HW, N = pb.N;
  const T* zb = static_cast<const T*>(pb.z) + b * D;
  const T* gq = static_cast<const T*>(pb.grad) + b * D;
  const T* x0 = static_cast<const T*>(pb.x0_in) + b * D;
  const T* data = static_cast<const T*>(pb.data);
  const T* logw = static_cast<const T*>(pb.logw);
  const double lse = double(static_cast<const T*>(pb.lse_in)[b * HW]);
  const double sg = pb.sigma[b];
  const double inv2s2 = 1.0 / (2.0 * sg * sg);
  double* Gp = pb.grad_partial + b * D;
  if (!(lse > -std::numeric_limits<double>::infinity())) return;
  double gx0 = 0;
  for (int64_t i = 0; i < D; ++i) gx0 += double(gq[i]) * double(x0[i]);
  if (pb.grad_lse)  // every pixel's lse is the sample's log-normaliser
    for (int64_t i = 0; i < HW; ++i) gx0 -= double(static_cast<const T*>(pb.grad_lse)[b * HW + i]);
  for (int64_t mu = 0; mu < N; ++mu) {
    const T* ph = data + mu * D;
    double d = 0, gc = 0;
    for (int64_t i = 0; i < D; ++i) {
      const double diff = double(zb[i]) - double(ph[i]);
      d += diff * diff;
      gc += double(gq[i]) * double(ph[i]);
    }
    double l = -d * inv2s2;
    if (logw) l += double(logw[mu]);
    const double w = std::exp(l - lse);
    if (w == 0) continue;
    const double a = w * (gc - gx0);
    for (int64_t i = 0; i < D; ++i) Gp[i] += a * (double(ph[i]) - double(zb[i]));
  }
  for (int64_t i = 0; i < D; ++i) Gp[i] /= sg * sg;
}

// ---------------------------------------------------------------------------
// Entry points of this ISA build

template <class T>
void forward_entry(const PpmProblem& pb, int64_t unit) {
  if (pb.mode == int(Mode::Ideal))
    forward_ideal<T>(pb, unit);
  else if (pb.want_argmax)
    forward_patch<T, true>(pb, unit);
  else
    forward_patch<T, false>(pb, unit);
}

template <class T>
void backward_entry(const PpmProblem& pb, int64_t unit) {
  if (pb.mode == int(Mode::Ideal))
    backward_ideal<T>(pb, unit);
  else
    backward_patch<T>(pb, unit);
}
