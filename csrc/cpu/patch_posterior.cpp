// CPU implementation of creativity_fast::patch_posterior_mean and its backward
// (schemas in csrc/ops.cpp; fake and autograd registrations in creativity_fast/ops.py).
//
// This file owns everything torch-facing: argument checks (the shared rules of
// op_args.h, then this backend's size limits), the per-axis tables
// derived from dictionary.h (the one definition of patch offsets, weights and
// admissible keys), the choice of instruction set, and the parallel loop over work
// units (sample, block of query rows) through torch's thread pool. The arithmetic
// lives in ppm_kernel.h and the headers it includes, compiled once per instruction set
// (ppm_generic.cpp, ppm_avx2.cpp, ppm_avx512.cpp; the ideal machine once, ppm_ideal.cpp).
//
// Tuning / diagnosis environment variables (read at every call; what each may change
// in the last bits is said in ppm_api.h):
//   CREATIVITY_FAST_CPU_ISA        auto | avx512 | avx2 | generic
//   CREATIVITY_FAST_CPU_TILE_ROWS  query rows per work unit (default: auto)
//   CREATIVITY_FAST_CPU_ALGO       auto | gw | direct  (see DistanceAlgo)
//   CREATIVITY_FAST_CPU_PRUNE      1 | 0   (skip keys whose weight underflows to 0)
//   CREATIVITY_FAST_CPU_SLIDE_MIN  window length from which box passes use O(1)
//                                  sliding / Gil-Werman sums (default 4)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/ppm_api.h"
#include "cpu/ppm_setup.h"
#include "dictionary.h"
#include "op_args.h"

namespace creativity_fast {
namespace cpu {
namespace {

std::string env_str(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

int env_int(const char* name, int fallback) {
  const std::string s = env_str(name);
  if (s.empty()) return fallback;
  try {
    return std::stoi(s);
  } catch (...) {
    TORCH_CHECK(false, name, " must be an integer; got '", s, "'");
  }
  return fallback;
}

bool cpu_has(const char* feature) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (!std::strcmp(feature, "avx512"))
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  if (!std::strcmp(feature, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  (void)feature;
  return false;
}

}  // namespace

const IsaKernels& select_isa() {
  const std::string want = env_str("CREATIVITY_FAST_CPU_ISA");
  if (want == "generic") return kKernelsGeneric;
  if (want == "avx2") {
    TORCH_CHECK(cpu_has("avx2"), "CREATIVITY_FAST_CPU_ISA=avx2 but this CPU lacks AVX2/FMA");
    return kKernelsAvx2;
  }
  if (want == "avx512") {
    TORCH_CHECK(cpu_has("avx512"), "CREATIVITY_FAST_CPU_ISA=avx512 but this CPU lacks AVX-512");
    return kKernelsAvx512;
  }
  TORCH_CHECK(want.empty() || want == "auto", "CREATIVITY_FAST_CPU_ISA must be auto, avx512, avx2 or generic; got '",
              want, "'");
  if (cpu_has("avx512")) return kKernelsAvx512;
  if (cpu_has("avx2")) return kKernelsAvx2;
  return kKernelsGeneric;
}

namespace {

void build_axis(AxisStore& st, int size, int P, Mode mode, Boundary boundary, Keys keys) {
  const AxisPatch ap(P, size, boundary);
  AxisTables& t = st.t;
  t.size = size;
  t.wrap = boundary == Boundary::Circular;
  t.first = ap.first;
  t.count = ap.count;
  st.weight.resize(ap.count);
  for (int i = 0; i < ap.count; ++i) st.weight[i] = ap.weight(i);
  // The patch as a window sum: weights are all 1 on a contiguous run of offsets,
  // except for circular patches larger than the image, whose residues carry
  // multiplicities k or k + 1 with the k + 1 ones on a cyclic run.
  const bool multiplicity = std::any_of(st.weight.begin(), st.weight.end(), [](int w) { return w != 1; });
  if (!multiplicity) {
    t.s = ap.first;
    t.L = ap.count;
    t.kfull = 0;
  } else {
    TORCH_CHECK(t.wrap && ap.first == 0 && ap.count == size, "unexpected patch reduction from dictionary.h");
    const int k = *std::min_element(st.weight.begin(), st.weight.end());
    int L = 0, start = -1;
    for (int i = 0; i < size; ++i) {
      TORCH_CHECK(st.weight[i] == k || st.weight[i] == k + 1, "unexpected multiplicities from dictionary.h");
      if (st.weight[i] == k + 1) {
        ++L;
        if (st.weight[(i - 1 + size) % size] == k) start = i;
      }
    }
    TORCH_CHECK(L == 0 || start >= 0, "unexpected multiplicities from dictionary.h");
    for (int j = 0; j < L; ++j)  // the extra ones must be one cyclic run
      TORCH_CHECK(st.weight[(start + j) % size] == k + 1, "multiplicities are not one cyclic run");
    t.s = L ? start : 0;
    t.L = L;
    t.kfull = k;
  }
  // Displacements: circular d in [0, size) (key = (pos + d) mod size), zeros d in
  // (-size, size) (key = pos + d inside the image).
  const int dlo = t.wrap ? 0 : -(size - 1);
  const int dhi = size - 1;
  for (int d = dlo; d <= dhi; ++d) {
    int lo = size, hi = -1;
    std::vector<uint8_t> v(size, 0);
    std::vector<int> kp(size, 0);
    for (int pos = 0; pos < size; ++pos) {
      int key = pos + d;
      if (t.wrap)
        key %= size;
      else if (key < 0 || key >= size)
        continue;
      if (!admissible(pos, key, size, P, mode, boundary, keys)) continue;
      v[pos] = 1;
      kp[pos] = key;
      lo = std::min(lo, pos);
      hi = std::max(hi, pos);
      if (!t.wrap) {
        // The box filter treats the product image as 0 outside the query image; that
        // is exact only if, along every patch offset, the query and key positions
        // leave the image together (true for the zero-boundary rules of docs/theory.md §3.3).
        for (int i = 0; i < ap.count; ++i) {
          const bool qin = ap.source(pos, i) >= 0, kin = ap.source(key, i) >= 0;
          TORCH_CHECK(qin == kin, "zero-boundary admissible pair leaves the image on one side only");
        }
      }
    }
    if (hi < 0) continue;
    st.disp.push_back(d);
    st.valid.insert(st.valid.end(), v.begin(), v.end());
    st.keypos.insert(st.keypos.end(), kp.begin(), kp.end());
    st.hull_lo.push_back(lo);
    st.hull_hi.push_back(hi);
    st.hull_full.push_back(std::all_of(v.begin() + lo, v.begin() + hi + 1, [](uint8_t a) { return a != 0; }));
  }
  t.nd = int(st.disp.size());
  t.weight = st.weight.data();
  t.disp = st.disp.data();
  t.valid = st.valid.data();
  t.keypos = st.keypos.data();
  t.hull_lo = st.hull_lo.data();
  t.hull_hi = st.hull_hi.data();
  t.hull_full = st.hull_full.data();
}

PpmOptions read_options() {
  PpmOptions o;
  o.tile_rows = env_int("CREATIVITY_FAST_CPU_TILE_ROWS", 0);
  const std::string algo = env_str("CREATIVITY_FAST_CPU_ALGO");
  if (algo.empty() || algo == "auto")
    o.algo = DistanceAlgo::Auto;
  else if (algo == "gw")
    o.algo = DistanceAlgo::Gw;
  else if (algo == "direct")
    o.algo = DistanceAlgo::Direct;
  else
    TORCH_CHECK(false, "CREATIVITY_FAST_CPU_ALGO must be auto, gw or direct; got '", algo, "'");
  o.prune = env_int("CREATIVITY_FAST_CPU_PRUNE", 1);
  o.slide_min = env_int("CREATIVITY_FAST_CPU_SLIDE_MIN", 4);
  return o;
}

}  // namespace

// Tables of a checked call (op_args.h: parse_patch_options, check_patch_inputs);
// `ideal` units are samples, patch units are (sample, row block). `op` names the operator
// in error messages.
void setup(Setup& S, const char* op, const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma,
           const op_args::PatchOptions& o, const std::optional<at::Tensor>& key_logw) {
  const int P = o.P;
  const Mode mode = o.mode;
  const Boundary boundary = o.boundary;
  const Keys keys = o.keys;
  // Limits of this CPU backend (index arithmetic), beyond the shared rules of op_args.h.
  TORCH_CHECK(z.size(2) < (1 << 20) && z.size(3) < (1 << 20), op, ": the CPU kernel supports H, W < 2^20; got ",
              z.sizes());
  PpmProblem& pb = S.pb;
  pb.B = z.size(0);
  pb.C = z.size(1);
  pb.H = z.size(2);
  pb.W = z.size(3);
  pb.N = data.size(0);
  pb.P = o.P;
  pb.mode = int(mode);
  pb.boundary = int(boundary);
  pb.keys = int(keys);
  TORCH_CHECK(pb.N * pb.H * pb.W < (int64_t(1) << 62), op, ": the CPU kernel supports N*H*W < 2^62; got data ",
              data.sizes());
  TORCH_CHECK((pb.N + 15) / 16 < (int64_t(1) << 30), op, ": the CPU kernel supports N < 2^34 training images; got N=",
              pb.N);
  pb.has_logw = key_logw.has_value();
  pb.opt = read_options();
  S.sigma.resize(pb.B);
  const at::Tensor sg = sigma.to(at::kDouble).contiguous();
  for (int64_t b = 0; b < pb.B; ++b) S.sigma[b] = sg.data_ptr<double>()[b];
  pb.sigma = S.sigma.data();
  if (mode == Mode::Ideal) {
    pb.n_row_blocks = 1;
    pb.rows_per_block = pb.H;
    S.units = pb.B;
    return;
  }
  build_axis(S.rows, int(pb.H), P, mode, boundary, keys);
  build_axis(S.cols, int(pb.W), P, mode, boundary, keys);
  pb.ax_r = S.rows.t;
  pb.ax_c = S.cols.t;
  int64_t rows = pb.opt.tile_rows;
  if (rows <= 0) {
    // Enough units to keep every thread busy; fewer, taller blocks recompute fewer
    // halo rows. The tiling never changes a result bit.
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t blocks = std::min<int64_t>(pb.H, (2 * threads + pb.B - 1) / pb.B);
    rows = (pb.H + std::max<int64_t>(blocks, 1) - 1) / std::max<int64_t>(blocks, 1);
    if (pb.B >= threads) rows = pb.H;
  }
  rows = std::min<int64_t>(std::max<int64_t>(rows, 1), pb.H);
  pb.rows_per_block = rows;
  pb.n_row_blocks = (pb.H + rows - 1) / rows;
  S.units = pb.B * pb.n_row_blocks;
}

void run_units(int64_t units, const PpmProblem& pb, UnitFn fn) {
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) fn(pb, u);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(Setup& S, const at::Tensor& z, const at::Tensor& data,
                                                           const std::optional<at::Tensor>& key_logw,
                                                           bool return_argmax) {
  PpmProblem& pb = S.pb;
  pb.want_argmax = return_argmax;
  at::Tensor x0 = at::empty_like(z);
  at::Tensor lse = at::empty({pb.B, pb.H, pb.W}, z.options());
  at::Tensor best = return_argmax ? at::empty({pb.B, pb.H, pb.W}, z.options().dtype(at::kLong))
                                  : at::empty({0}, z.options().dtype(at::kLong));
  pb.z = z.data_ptr();
  pb.data = data.data_ptr();
  pb.logw = key_logw.has_value() ? key_logw->data_ptr() : nullptr;
  pb.x0 = x0.data_ptr();
  pb.lse = lse.data_ptr();
  pb.best = return_argmax ? best.data_ptr<int64_t>() : nullptr;
  const IsaKernels& k = select_isa();
  run_units(S.units, pb, z.scalar_type() == at::kFloat ? k.forward_f32 : k.forward_f64);
  return {x0, lse, best};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_posterior_mean_cpu(
    const at::Tensor& z_in, const at::Tensor& data_in, const at::Tensor& sigma, int64_t P, c10::string_view mode,
    c10::string_view boundary, c10::string_view keys, const std::optional<at::Tensor>& key_logw_in,
    bool return_argmax) {
  const char* op = op_args::kPatchPosteriorMean;
  const op_args::PatchOptions o = op_args::parse_patch_options(op, P, mode, boundary, keys);
  op_args::check_patch_inputs(op, z_in, data_in, sigma, key_logw_in, o);
  const at::Tensor z = z_in.contiguous();
  const at::Tensor data = data_in.contiguous();
  std::optional<at::Tensor> key_logw;
  if (key_logw_in.has_value()) key_logw = key_logw_in->contiguous();
  Setup S;
  setup(S, op, z, data, sigma, o, key_logw);
  return run_forward(S, z, data, key_logw, return_argmax);
}

at::Tensor backward_impl(const char* op, const at::Tensor& grad_in, const at::Tensor* grad_lse_in,
                         const at::Tensor& z_in, const at::Tensor& data_in, const at::Tensor& sigma, int64_t P,
                         c10::string_view mode, c10::string_view boundary, c10::string_view keys,
                         const std::optional<at::Tensor>& key_logw_in, const at::Tensor& x0_in,
                         const at::Tensor& lse_in) {
  const op_args::PatchOptions o = op_args::parse_patch_options(op, P, mode, boundary, keys);
  op_args::check_patch_inputs(op, z_in, data_in, sigma, key_logw_in, o);
  op_args::check_patch_backward_inputs(op, z_in, grad_in, x0_in, lse_in, grad_lse_in);
  const at::Tensor z = z_in.contiguous();
  const at::Tensor data = data_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor x0 = x0_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  std::optional<at::Tensor> key_logw;
  if (key_logw_in.has_value()) key_logw = key_logw_in->contiguous();
  at::Tensor grad_lse;
  if (grad_lse_in) grad_lse = grad_lse_in->contiguous();
  Setup S;
  setup(S, op, z, data, sigma, o, key_logw);
  PpmProblem& pb = S.pb;
  pb.want_argmax = false;
  pb.z = z.data_ptr();
  pb.data = data.data_ptr();
  pb.logw = key_logw.has_value() ? key_logw->data_ptr() : nullptr;
  pb.grad = grad.data_ptr();
  pb.x0_in = x0.data_ptr();
  pb.lse_in = lse.data_ptr();
  pb.grad_lse = grad_lse_in ? grad_lse.data_ptr() : nullptr;
  // One double partial gradient per unit, summed in unit order: deterministic
  // whatever the thread count. Memory O(units * C*H*W), independent of N.
  at::Tensor partial = at::zeros({S.units, pb.C, pb.H, pb.W}, z.options().dtype(at::kDouble));
  pb.grad_partial = partial.data_ptr<double>();
  const IsaKernels& k = select_isa();
  run_units(S.units, pb, z.scalar_type() == at::kFloat ? k.backward_f32 : k.backward_f64);
  at::Tensor g = partial.view({pb.B, S.units / pb.B, pb.C, pb.H, pb.W});
  at::Tensor out = g.select(1, 0).clone();
  for (int64_t i = 1; i < g.size(1); ++i) out.add_(g.select(1, i));
  return out.to(z.scalar_type());
}

at::Tensor patch_posterior_mean_backward_cpu(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& data,
                                             const at::Tensor& sigma, int64_t P, c10::string_view mode,
                                             c10::string_view boundary, c10::string_view keys,
                                             const std::optional<at::Tensor>& key_logw, const at::Tensor& x0,
                                             const at::Tensor& lse) {
  return backward_impl(op_args::kPatchPosteriorMeanBackward, grad, nullptr, z, data, sigma, P, mode, boundary, keys,
                       key_logw, x0, lse);
}

at::Tensor patch_posterior_mean_backward_lse_cpu(const at::Tensor& grad, const at::Tensor& grad_lse,
                                                 const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma,
                                                 int64_t P, c10::string_view mode, c10::string_view boundary,
                                                 c10::string_view keys, const std::optional<at::Tensor>& key_logw,
                                                 const at::Tensor& x0, const at::Tensor& lse) {
  return backward_impl(op_args::kPatchPosteriorMeanBackwardLse, grad, &grad_lse, z, data, sigma, P, mode, boundary,
                       keys, key_logw, x0, lse);
}

}  // namespace

}  // namespace cpu
}  // namespace creativity_fast

TORCH_LIBRARY_IMPL(creativity_fast, CPU, m) {
  m.impl("patch_posterior_mean", &creativity_fast::cpu::patch_posterior_mean_cpu);
  m.impl("patch_posterior_mean_backward", &creativity_fast::cpu::patch_posterior_mean_backward_cpu);
  m.impl("patch_posterior_mean_backward_lse", &creativity_fast::cpu::patch_posterior_mean_backward_lse_cpu);
}
