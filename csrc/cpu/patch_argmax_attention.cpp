// CPU kernel of creativity_fast::patch_argmax_attention (docs/theory.md §3.4, §4); schema
// in csrc/ops.cpp, argument checks in csrc/op_args.h, reference twin in
// creativity_fast/reference.py.
//
// Score of a query pixel x and a key pixel y of one image, with zero-extended
// P x P patches Pi and the embedding e(Pi) = Pi - c:
//   s(x, y) = <Pi_x - c, Pi_y - c> = G(x, y) - a(x) - a(y) + |c|^2,
//   G(x, y) = <Pi_x, Pi_y>,  a(u) = <c, Pi_u>.
// For a fixed displacement d = y - x, G(x, x + d) is a box sum (over the P x P
// window around x) of the product image Q_d(u) = sum_ch img(u) img(u + d), so one
// prefix-sum table per displacement gives G for every x in O(1): the cost per image
// is O((2H-1)(2W-1) * H * W), independent of P. Everything is accumulated in double,
// so integer- or dyadic-valued inputs give exact scores and exact ties (lowest flat
// index y wins). Hard attention (tau <= 0) keeps the argmax per row; soft attention
// (tau > 0) makes one pass for the row log-normalisers and a second for the column
// sums of the row softmax. The float64 arithmetic of a score lives in
// attention_rules.h, shared with the CUDA kernel (same operations, same order).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention_rules.h"
#include "op_args.h"

namespace creativity_fast {
namespace {

class AttentionImage {
 public:
  AttentionImage(int C, int H, int W, int P, int exclude, const double* center)
      : C_(C), H_(H), W_(W), m_((P - 1) / 2), P_(P), exclude_(exclude), center_(center),
        img_(static_cast<size_t>(C) * H * W), a_(static_cast<size_t>(H) * W),
        prefix_(static_cast<size_t>(H + 1) * (W + 1)) {
    cc_ = 0.0;
    for (int i = 0; i < C * P * P; ++i) cc_ += attention_rules::mul(center[i], center[i]);
  }

  template <typename scalar_t>
  void load(const scalar_t* src) {
    for (size_t i = 0; i < img_.size(); ++i) img_[i] = static_cast<double>(src[i]);
    for (int r = 0; r < H_; ++r)
      for (int c = 0; c < W_; ++c) a_[r * W_ + c] = attention_rules::center_dot(img_.data(), center_, C_, H_, W_, P_, r, c);
  }

  // Calls f(x, y, s) for every admissible pair (x, y) of the loaded image. The score is
  // symmetric, so each displacement d > 0 (in flat order) serves both (x, x+d) and (x+d, x).
  template <typename F>
  void for_each_pair(F&& f) {
    if (exclude_ <= 0) {  // d = 0: every pixel may attend to itself
      for (int x = 0; x < H_ * W_; ++x) {
        const double g = attention_rules::self_window_dot(img_.data(), C_, H_, W_, m_, x / W_, x % W_);
        f(x, x, attention_rules::self_score(g, a_[x], cc_));
      }
    }
    for (int dr = 0; dr <= H_ - 1; ++dr) {
      for (int dc = dr == 0 ? 1 : -(W_ - 1); dc <= W_ - 1; ++dc) {
        if (attention_rules::excluded(dr, dc, exclude_)) continue;
        // Pixels u with u and u + d both inside: rows [r0, r1), cols [c0, c1). The same
        // range holds the queries x whose key x + d is inside the image.
        const int r0 = 0, r1 = H_ - dr;
        const int c0 = std::max(0, -dc), c1 = std::min(W_, W_ - dc);
        const int h = r1 - r0, w = c1 - c0;
        if (h <= 0 || w <= 0) continue;
        prefix(dr, dc, r0, c0, h, w);
        const double* S = prefix_.data();
        for (int i = 0; i < h; ++i) {
          const int xrow = (r0 + i) * W_ + c0;
          const int yrow = xrow + dr * W_ + dc;
          for (int j = 0; j < w; ++j) {
            const double g = attention_rules::window_sum(S, h, w, m_, i, j);
            const int x = xrow + j, y = yrow + j;
            const double s = attention_rules::pair_score(g, a_[x], a_[y], cc_);
            f(x, y, s);
            f(y, x, s);
          }
        }
      }
    }
  }

 private:
  // prefix_: 2-D prefix sums of Q_d(u) = sum_ch img(u) img(u + d) over the valid rectangle.
  void prefix(int dr, int dc, int r0, int c0, int h, int w) {
    const int pw = w + 1;
    double* S = prefix_.data();
    std::fill(S, S + pw, 0.0);
    for (int i = 0; i < h; ++i) {
      double row = 0.0;
      S[(i + 1) * pw] = 0.0;
      const int r = r0 + i;
      for (int j = 0; j < w; ++j) {
        const int u = r * W_ + (c0 + j);
        row += attention_rules::displaced_product(img_.data(), C_, H_ * W_, u, u + dr * W_ + dc);
        S[(i + 1) * pw + (j + 1)] = S[i * pw + (j + 1)] + row;
      }
    }
  }

  int C_, H_, W_, m_, P_, exclude_;
  const double* center_;
  double cc_;
  std::vector<double> img_, a_, prefix_;
};

template <typename scalar_t>
void attention_kernel(const scalar_t* images, const double* center, int64_t M, int C, int H, int W, int P,
                      int exclude, double tau, int64_t* y_star, scalar_t* in_degree) {
  const int HW = H * W;
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    AttentionImage att(C, H, W, P, exclude, center);
    std::vector<double> best(HW), rmax(HW), rsum(HW), col(HW);
    std::vector<int64_t> arg(HW);
    const double ninf = -std::numeric_limits<double>::infinity();
    for (int64_t i = begin; i < end; ++i) {
      att.load(images + i * C * HW);
      std::fill(best.begin(), best.end(), ninf);
      std::fill(arg.begin(), arg.end(), -1);
      if (tau > 0) {
        std::fill(rmax.begin(), rmax.end(), ninf);
        std::fill(rsum.begin(), rsum.end(), 0.0);
      }
      att.for_each_pair([&](int x, int y, double s) {
        if (attention_rules::takes_over(s, y, best[x], arg[x])) {
          best[x] = s;
          arg[x] = y;
        }
        if (tau > 0) attention_rules::lse_push(s / tau, rmax[x], rsum[x]);  // row log-normaliser
      });
      std::fill(col.begin(), col.end(), 0.0);
      if (tau > 0) {
        for (int x = 0; x < HW; ++x) rmax[x] += std::log(rsum[x]);  // row lse (-inf if empty)
        att.for_each_pair([&](int x, int y, double s) { col[y] += attention_rules::soft_weight(s, tau, rmax[x]); });
      } else {
        for (int x = 0; x < HW; ++x)
          if (arg[x] >= 0) col[arg[x]] += 1.0;
      }
      for (int x = 0; x < HW; ++x) {
        y_star[i * HW + x] = arg[x];
        in_degree[i * HW + x] = static_cast<scalar_t>(col[x]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> patch_argmax_attention_cpu(const at::Tensor& images_in, const at::Tensor& center_in,
                                                              int64_t P, int64_t exclude, double tau) {
  op_args::check_attention_inputs(op_args::kPatchArgmaxAttention, images_in, center_in, P, exclude);
  const int64_t M = images_in.size(0), C = images_in.size(1), H = images_in.size(2), W = images_in.size(3);
  auto images = images_in.contiguous();
  auto center = center_in.to(at::kDouble).contiguous();
  auto y_star = at::empty({M, H, W}, images.options().dtype(at::kLong));
  auto in_degree = at::empty({M, H, W}, images.options());
  const int excl = static_cast<int>(std::min<int64_t>(exclude, std::max(H, W) + 1));
  AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "patch_argmax_attention_cpu", [&] {
    attention_kernel<scalar_t>(images.data_ptr<scalar_t>(), center.data_ptr<double>(), M, static_cast<int>(C),
                               static_cast<int>(H), static_cast<int>(W), static_cast<int>(P), excl, tau,
                               y_star.data_ptr<int64_t>(), in_degree.data_ptr<scalar_t>());
  });
  return {y_star, in_degree};
}

}  // namespace

TORCH_LIBRARY_IMPL(creativity_fast, CPU, m) {
  m.impl("patch_argmax_attention", &patch_argmax_attention_cpu);
}

}  // namespace creativity_fast
