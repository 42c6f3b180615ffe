// The partner term of the paired-patch machine (docs/theory.md §3.7): per work unit the
// P2 x P2 partner window of every query pixel, per group the partner window of every
// training location of each of its V images, and their squared distance, which
// forward_group (ppm_forward.h) adds, times beta, to the ELS patch distance of every
// (query, key) pair it visits. Part of ppm_kernel.h: included inside an ISA build's
// namespace after ppm_distances.h.
//
// Cost per (query, key) pair: D2 = C * P2 * P2 subtractions and fused multiply-adds per
// lane (training image), on vectors gathered once per unit (queries, O(H*W*D2)) and once
// per group (keys, O(V*H*W*D2)); the ELS distance keeps its O(C) box filter. The partners
// are arbitrary locations, so the second distance has no shift structure to slide along.
// Everything is in double, as the first distance is, so a float32 call is as accurate as
// the float64 reference.
#pragma once

template <class T>
struct PairedTerm {
  typedef typename VecT<T>::v v;
  typedef typename VecT<T>::vd vd;
  static constexpr int V = VecT<T>::V;

  int D2 = 0;  // entries of one partner window: C * P2 * P2
  double beta = 0;
  double* qwin = nullptr;  // [nq][D2] partner windows of the unit's query pixels (z, double)
  v* kwin = nullptr;       // [H*W][D2] partner windows of the group's training locations, in T:
                           // exact (they are training values or 0), and half the memory
                           // traffic of double for float32 (the term's bottleneck)
  vd* row = nullptr;       // [W] ELS distance + beta * partner distance of one output row

  static int entries(const PpmProblem& pb) { return int(pb.C) * pb.P2 * pb.P2; }

  static size_t scratch_bytes(const PpmProblem& pb) {
    if (!pb.paired) return 0;
    const size_t D2 = entries(pb), nq = size_t(pb.rows_per_block) * pb.W;
    return arena_bytes<double>(nq * D2) + arena_bytes<v>(size_t(pb.H) * pb.W * D2) + arena_bytes<vd>(pb.W);
  }

  // Index along one axis of a window entry at pos + d: wrapped (circular) or -1 outside (zeros).
  static CF_AI int read_index(int p, int size, bool wrap) {
    if (wrap) return ((p % size) + size) % size;
    return (p < 0 || p >= size) ? -1 : p;
  }

  // The window of `img` ([C][H][W] with channel stride HW) centred at flat location
  // `partner` (-1: zeros) into out[d * stride + lane], d = (ch * P2 + i) * P2 + j.
  template <class Src, class Dst>
  static CF_AI void window(const PpmProblem& pb, const Src* img, int64_t partner, Dst* out, int stride, int lane) {
    const int H = int(pb.H), W = int(pb.W), C = int(pb.C), P2 = pb.P2, m = (P2 - 1) / 2;
    const bool wrap = pb.boundary == int(Boundary::Circular);
    const int64_t HW = pb.H * pb.W;
    int d = 0;
    for (int ch = 0; ch < C; ++ch)
      for (int i = 0; i < P2; ++i)
        for (int j = 0; j < P2; ++j, ++d) {
          double x = 0;
          if (partner >= 0) {
            const int r = read_index(int(partner / W) + i - m, H, wrap);
            const int c = read_index(int(partner % W) + j - m, W, wrap);
            if (r >= 0 && c >= 0) x = double(img[ch * HW + int64_t(r) * W + c]);
          }
          out[size_t(d) * stride + lane] = Dst(x);
        }
  }

  void init(Unit<T>& u) {
    const PpmProblem& pb = u.pb;
    D2 = entries(pb);
    beta = pb.beta;
    qwin = u.arena.template take<double>(size_t(u.nq) * D2);
    kwin = u.arena.template take<v>(size_t(u.HW) * D2);
    row = u.arena.template take<vd>(u.W);
    const int64_t* qp = pb.qpartner + u.b * u.HW + int64_t(u.r0) * u.W;
    for (int q = 0; q < u.nq; ++q) window(pb, u.zd, qp[q], qwin + size_t(q) * D2, 1, 0);
  }

  // Partner windows of training images g*V .. g*V+V-1 (lanes past N: zeros; their logit
  // is -inf through the group's log prior, see Unit::pack_group).
  void pack_group(Unit<T>& u, int g) {
    const PpmProblem& pb = u.pb;
    const T* data = static_cast<const T*>(pb.data);
    T* kw = reinterpret_cast<T*>(kwin);
    for (int lane = 0; lane < V; ++lane) {
      const int64_t mu = int64_t(g) * V + lane;
      for (int64_t y = 0; y < u.HW; ++y) {
        T* out = kw + size_t(y) * D2 * V;
        if (mu >= u.N) {
          for (int d = 0; d < D2; ++d) out[size_t(d) * V + lane] = T(0);
        } else {
          window(pb, data + mu * u.C * u.HW, pb.kpartner[mu * u.HW + y], out, V, lane);
        }
      }
    }
  }

  // |query window - key window|^2 per lane. Four independent accumulators: one chain waits
  // a multiply-add latency per entry (measured ~1.6x slower at P2 = 15, bench/PELS.md).
  CF_AI vd distance(const double* qw, const v* kw) const {
    vd a0 = vd{}, a1 = vd{}, a2 = vd{}, a3 = vd{};
    int d = 0;
    for (; d + 4 <= D2; d += 4) {
      const vd e0 = qw[d] - to_vd<T>(kw[d]), e1 = qw[d + 1] - to_vd<T>(kw[d + 1]);
      const vd e2 = qw[d + 2] - to_vd<T>(kw[d + 2]), e3 = qw[d + 3] - to_vd<T>(kw[d + 3]);
      a0 = a0 + e0 * e0;
      a1 = a1 + e1 * e1;
      a2 = a2 + e2 * e2;
      a3 = a3 + e3 * e3;
    }
    for (; d < D2; ++d) {
      const vd e = qw[d] - to_vd<T>(kw[d]);
      a0 = a0 + e * e;
    }
    return (a0 + a1) + (a2 + a3);
  }
};
