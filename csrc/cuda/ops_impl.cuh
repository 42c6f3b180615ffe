// Host flows of the CUDA operators: input checks (the shared rules of csrc/op_args.h, then
// this backend's capability limits), plan upload, buffers, launches, and the
// small ATen reductions that finish the ideal machine. Written against a launch backend
// `L` so the same code drives the CUDA kernels (ops_cuda.cu) and, in development, the CPU
// emulator of the kernels (tests run it when no GPU is present). Host code only.
//
// Environment (read on every call):
//   CREATIVITY_FAST_CUDA_MATH = auto (default) | fp32 | tf32
//       auto: the cross term runs in tf32 on tensor cores when the proven logit-error bound
//       (plan.cuh: tf32_logit_bound) is at most the tolerance, the input is float32 and the
//       GPU is sm_80 or newer; fp32 otherwise. fp32 / tf32 force a path (tf32 still needs
//       float32 input and sm_80+). float64 is always exact.
//   CREATIVITY_FAST_TF32_TOL = e: the tolerance on the logit error (default: the share of
//       the float32 precision contract given to tf32, plan.cuh: tf32_default_tolerance).
//   CREATIVITY_FAST_CUDA_VERBOSE = 1: print the plan and the precision choice to stderr.
#pragma once

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <limits>
#include <mutex>
#include <vector>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "common.cuh"
#include "op_args.h"
#include "plan.cuh"

namespace creativity_fast {
namespace cuda {
namespace impl {

using Options = op_args::PatchOptions;

struct DeviceInfo {
  int sms;                     // multiprocessors
  int major;                   // compute capability major
  int smem_optin = 48 * 1024;  // largest dynamic shared memory per block (opt-in)
};

inline Options parse_options(const char* op, int64_t P, c10::string_view mode, c10::string_view boundary,
                             c10::string_view keys) {
  return op_args::parse_patch_options(op, P, mode, boundary, keys);
}

// Capability limits of the CUDA kernels, not of the operator (the CPU kernel has its own,
// wider ones, beside its kernels), checked after the shared rules of op_args.h.
inline void check_cuda_limits(const char* op, const at::Tensor& z, const at::Tensor& data, const Options& o) {
  // 32-bit indices of the kernels.
  TORCH_CHECK(z.size(1) * z.size(2) * z.size(3) < (int64_t(1) << 31) && data.size(0) < (int64_t(1) << 31) &&
                  z.size(0) < (int64_t(1) << 31),
              op, ": the CUDA kernel supports C*H*W, B and N < 2^31 (32-bit indices); got z ", z.sizes(), ", data ",
              data.sizes());
  if (o.mode == Mode::Ideal) {
    // One grid row per sample (gridDim.y <= 65535).
    TORCH_CHECK(z.size(0) <= 65535, op, ": the CUDA kernel of mode 'ideal' supports B <= 65535 per call; got B=",
                z.size(0));
  } else {
    // Channels held in registers (cmax 1 or 4).
    TORCH_CHECK(z.size(1) <= 4, op, ": the CUDA kernel of modes 'local' and 'els' supports C <= 4 channels; got C=",
                z.size(1), " (use backend='reference')");
  }
}

// The shared checks of every patch_posterior_mean operator, then the CUDA limits.
inline void check_inputs(const char* op, const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma,
                         const std::optional<at::Tensor>& key_logw, const Options& o) {
  op_args::check_patch_inputs(op, z, data, sigma, key_logw, o);
  check_cuda_limits(op, z, data, o);
}

inline std::string env_string(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : std::string(fallback);
}

inline bool verbose() { return env_string("CREATIVITY_FAST_CUDA_VERBOSE", "0") == "1"; }

// ------------------------------------------------------------------------------------
// Precision policy (NOTES.md, "Precision policy"; derivation in docs/theory.md §4.4): tf32
// tensor cores for the cross term only where the proven logit-error bound
// (plan.cuh: tf32_logit_bound) is within the tolerance, exact fp32 otherwise.

// [size, size] float64: A[x][s] = sum of the multiplicities of the patch offsets i with
// source(x, i) = s on one axis (dictionary.h: AxisPatch), so that the squared weighted norm of
// every patch of an image u is (A_r (sum_c u_c^2) A_c^T)[r, c], a separable box filter.
inline at::Tensor axis_patch_matrix(int size, int P, Boundary boundary) {
  const AxisPatch ax(P, size, boundary);
  at::Tensor A = at::zeros({size, size}, at::TensorOptions().dtype(at::kDouble));
  double* a = A.data_ptr<double>();
  for (int x = 0; x < size; ++x)
    for (int i = 0; i < ax.count; ++i) {
      const int src = ax.source(x, i);
      if (src >= 0) a[int64_t(x) * size + src] += ax.weight(i);
    }
  return A;
}

// Largest squared weighted patch norm of each image: u [n, C, H, W] -> [n] float64 (on u's device).
inline at::Tensor max_patch_sq_norms(const at::Tensor& u, const at::Tensor& Ar, const at::Tensor& Ac) {
  const at::Tensor ud = u.to(at::kDouble);
  const at::Tensor sq = (ud * ud).sum(1);  // [n, H, W]
  return Ar.matmul(sq).matmul(Ac.t()).amax({1, 2});
}

// Decisions of the policy in this process, for tests and diagnostics (the emulator module
// exposes them; CREATIVITY_FAST_CUDA_VERBOSE=1 prints each decision). The automatic decision is
// made on the device (no host sync per call), so its counts and last values are kept as device
// tensors and read only when asked for (read_precision_stats).
struct PrecisionStats {
  int64_t tf32 = 0, fp32 = 0;  // automatic decisions (folded from `counts` when read)
  int64_t forced = 0;          // calls with CREATIVITY_FAST_CUDA_MATH=fp32|tf32 (or no choice: dtype, GPU)
  int64_t data_passes = 0;     // passes over the training set for its patch norms (cache misses)
  double last_bound = -1.0, last_tol = -1.0, last_knorm = -1.0, last_qnorm = -1.0;
  at::Tensor counts;              // int64 [2] on the device of the last automatic call: fp32, tf32 decisions
  at::Tensor last_bound_t, last_qnorm_t;  // float64 scalars of the last automatic call (undefined: none)
};
inline std::mutex& precision_mutex() {
  static std::mutex m;
  return m;
}
inline PrecisionStats& precision_stats() {
  static PrecisionStats s;
  return s;
}

// The stats with the device-side counts and last values folded in (a host sync: diagnostics only).
inline PrecisionStats read_precision_stats() {
  std::lock_guard<std::mutex> lock(precision_mutex());
  PrecisionStats& st = precision_stats();
  if (st.counts.defined()) {
    const at::Tensor c = st.counts.cpu();
    st.fp32 += c.data_ptr<int64_t>()[0];
    st.tf32 += c.data_ptr<int64_t>()[1];
    st.counts = at::Tensor();
  }
  if (st.last_bound_t.defined()) st.last_bound = st.last_bound_t.item<double>();
  if (st.last_qnorm_t.defined()) st.last_qnorm = st.last_qnorm_t.item<double>();
  return st;
}

// The training set's largest weighted patch norm and largest |value|, cached per (tensor,
// storage pointer, shape, strides, dtype, device, version, P, boundary): one pass over the data
// per data set and patch geometry, not per call. The version counter catches in-place writes, the
// pointer and shape a `.data =` or `set_` swap (which keep the TensorImpl); the cache holds weak
// references, so a freed tensor never matches a new one at the same address.
struct DataNorms {
  double knorm = 0, absmax = 0;
};
struct DataNormEntry {
  c10::weak_intrusive_ptr<c10::TensorImpl> impl;
  const void* ptr;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  at::Device device;
  int64_t version;
  int P;
  Boundary boundary;
  DataNorms norms;
  bool matches(const at::Tensor& t, int P_, Boundary b) const {
    const auto alive = impl.lock();
    return alive.get() == t.unsafeGetTensorImpl() && ptr == t.data_ptr() && t.sizes().vec() == sizes &&
           t.strides().vec() == strides && dtype == t.scalar_type() && device == t.device() &&
           version == t._version() && P == P_ && boundary == b;
  }
};
inline DataNorms data_patch_norms(const at::Tensor& data, int P, Boundary boundary) {
  static std::vector<DataNormEntry> cache;  // a few recent entries, guarded by precision_mutex()
  {
    std::lock_guard<std::mutex> lock(precision_mutex());
    for (const auto& e : cache)
      if (e.matches(data, P, boundary)) return e.norms;
  }
  const int64_t N = data.size(0), H = data.size(2), W = data.size(3);
  const at::Tensor Ar = axis_patch_matrix(H, P, boundary).to(data.device());
  const at::Tensor Ac = axis_patch_matrix(W, P, boundary).to(data.device());
  // about 2^22 values per chunk: float64 temporaries of ~32 MiB, whatever N
  const int64_t per_image = std::max<int64_t>(1, data.size(1) * data.size(2) * data.size(3));
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 22) / per_image);
  at::Tensor kn2 = at::zeros({1}, data.options().dtype(at::kDouble)), amax = kn2.clone();
  for (int64_t s = 0; s < N; s += chunk) {
    const at::Tensor part = data.narrow(0, s, std::min(chunk, N - s));
    kn2 = at::maximum(kn2, max_patch_sq_norms(part, Ar, Ac).amax().view({1}));
    amax = at::maximum(amax, part.abs().amax().to(at::kDouble).view({1}));
  }
  const at::Tensor host = at::cat({kn2.sqrt(), amax}).cpu();
  DataNorms out{host.data_ptr<double>()[0], host.data_ptr<double>()[1]};
  std::lock_guard<std::mutex> lock(precision_mutex());
  if (cache.size() >= 4) cache.erase(cache.begin());
  cache.push_back({c10::weak_intrusive_ptr<c10::TensorImpl>(data.getIntrusivePtr()), data.data_ptr(),
                   data.sizes().vec(), data.strides().vec(), data.scalar_type(), data.device(), data._version(), P,
                   boundary, out});
  ++precision_stats().data_passes;
  return out;
}

// axis_patch_matrix on a device, cached per (size, P, boundary, device): no host-to-device copy per call.
inline at::Tensor axis_patch_matrix_on(int size, int P, Boundary boundary, const at::Device& device) {
  struct Entry {
    int size, P;
    Boundary boundary;
    at::Device device;
    at::Tensor A;
  };
  static std::vector<Entry> cache;  // guarded by precision_mutex()
  std::lock_guard<std::mutex> lock(precision_mutex());
  for (const auto& e : cache)
    if (e.size == size && e.P == P && e.boundary == boundary && e.device == device) return e.A;
  at::Tensor A = axis_patch_matrix(size, P, boundary).to(device);
  if (cache.size() >= 16) cache.erase(cache.begin());
  cache.push_back({size, P, boundary, device, A});
  return A;
}

// tf32_logit_bound (plan.cuh) elementwise on float64 tensors qnorm [B] and sigma [B], for a scalar knorm.
inline at::Tensor tf32_logit_bound_t(int D, const at::Tensor& qnorm, double knorm, const at::Tensor& sigma) {
  const Tf32BoundCoefficients c = tf32_bound_coefficients(D);
  return (qnorm * (2 * c.cross * knorm) + (qnorm * qnorm + knorm * knorm) * c.norms) / (sigma * sigma * 2);
}

// The precision path of a float32 forward call: `tf32` when the host decides (forced, or no
// choice); otherwise `flag`, an int32 scalar on z's device, 1 where the proven bound is within the
// tolerance (tf32) and 0 where not (fp32), computed there without a host sync (the forward then
// launches both instantiations and each block of the one not chosen returns at once).
struct PathChoice {
  bool tf32 = false;
  at::Tensor flag;  // undefined: the host decided
};

inline PathChoice choose_tf32(const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma, const Options& o,
                              int D, const DeviceInfo& dev) {
  const std::string math = env_string("CREATIVITY_FAST_CUDA_MATH", "auto");
  TORCH_CHECK(math == "auto" || math == "fp32" || math == "tf32",
              "CREATIVITY_FAST_CUDA_MATH must be 'auto', 'fp32' or 'tf32'; got '", math, "'");
  if (math != "auto" || z.scalar_type() != at::kFloat || dev.major < 8) {
    std::lock_guard<std::mutex> lock(precision_mutex());
    ++precision_stats().forced;
    return {math == "tf32" && z.scalar_type() == at::kFloat && dev.major >= 8, at::Tensor()};
  }
  const DataNorms dn = data_patch_norms(data, o.P, o.boundary);  // cached per data set: no pass, no sync
  const int H = z.size(2), W = z.size(3);
  const at::Tensor Ar = axis_patch_matrix_on(H, o.P, o.boundary, z.device());
  const at::Tensor Ac = axis_patch_matrix_on(W, o.P, o.boundary, z.device());
  const at::Tensor qn = max_patch_sq_norms(z, Ar, Ac).sqrt();  // [B] float64, on the device
  const at::Tensor bound = tf32_logit_bound_t(D, qn, dn.knorm, sigma.to(at::kDouble)).amax();
  const std::string tol_env = env_string("CREATIVITY_FAST_TF32_TOL", "");
  const double tol = tol_env.empty() ? tf32_default_tolerance(dn.absmax) : std::strtod(tol_env.c_str(), nullptr);
  const at::Tensor flag = bound.le(tol).to(at::kInt);  // a NaN bound (NaN input) is no certificate: fp32
  {
    std::lock_guard<std::mutex> lock(precision_mutex());
    PrecisionStats& st = precision_stats();
    const at::Tensor one = flag.to(at::kLong);
    const at::Tensor inc = at::stack({1 - one, one});
    if (st.counts.defined() && st.counts.device() != z.device()) {  // another device: fold (rare)
      const at::Tensor c = st.counts.cpu();
      st.fp32 += c.data_ptr<int64_t>()[0];
      st.tf32 += c.data_ptr<int64_t>()[1];
      st.counts = at::Tensor();
    }
    st.counts = st.counts.defined() ? st.counts + inc : inc;
    st.last_bound_t = bound;
    st.last_qnorm_t = qn.amax();
    st.last_tol = tol;
    st.last_knorm = dn.knorm;
  }
  if (verbose())  // diagnostics: reads the device values (a sync)
    std::fprintf(stderr,
                 "[creativity_fast cuda] precision: max|q|_w=%g max|k|_w=%g max|data|=%g D=%d: tf32 logit error <= %.3g "
                 "(tol %.3g) -> %s\n",
                 qn.amax().item<double>(), dn.knorm, dn.absmax, D, bound.item<double>(), tol,
                 flag.item<int>() ? "tf32" : "fp32");
  return {false, flag};
}

// A plan with its tables on the device: int64 [groups | work items], int32 [dtab | rowclass | colclass | doff].
struct DevicePlan {
  HostPlan host;
  at::Tensor buf64, buf32;
};

// On a GPU the host tables are staged in pinned memory and copied without blocking the host (the
// caching host allocator keeps a staging buffer until its copy on the current stream is done);
// the emulator's "device" is the CPU.
inline DevicePlan upload_plan(HostPlan&& pl, const at::Device& device) {
  DevicePlan dp;
  const bool gpu = device.is_cuda();
  const int64_t n64 = int64_t(pl.groups.size()) * 12 + int64_t(pl.work.size()) * 6;
  at::Tensor h64 = at::empty({n64}, at::TensorOptions().dtype(at::kLong).pinned_memory(gpu));
  std::memcpy(h64.data_ptr<int64_t>(), pl.groups.data(), pl.groups.size() * sizeof(GroupInfo));
  std::memcpy(h64.data_ptr<int64_t>() + pl.groups.size() * 12, pl.work.data(), pl.work.size() * sizeof(WorkItem));
  const int64_t n32 = int64_t(pl.dtab.size() + pl.rowclass.size() + pl.colclass.size() + pl.doff.size());
  at::Tensor h32 = at::empty({n32}, at::TensorOptions().dtype(at::kInt).pinned_memory(gpu));
  int* p32 = h32.data_ptr<int>();
  std::memcpy(p32, pl.dtab.data(), pl.dtab.size() * sizeof(int));
  std::memcpy(p32 + pl.dtab.size(), pl.rowclass.data(), pl.rowclass.size() * sizeof(int));
  std::memcpy(p32 + pl.dtab.size() + pl.rowclass.size(), pl.colclass.data(), pl.colclass.size() * sizeof(int));
  std::memcpy(p32 + pl.dtab.size() + pl.rowclass.size() + pl.colclass.size(), pl.doff.data(),
              pl.doff.size() * sizeof(int));
  dp.buf64 = h64.to(device, /*non_blocking=*/gpu);
  dp.buf32 = h32.to(device, /*non_blocking=*/gpu);
  if (verbose())
    std::fprintf(stderr,
                 "[creativity_fast cuda] plan: %zu groups, %zu blocks, %lld key tiles per block, %lld partial entries, "
                 "D=%d\n",
                 pl.groups.size(), pl.work.size(), static_cast<long long>(pl.tiles_per_block),
                 static_cast<long long>(pl.entries), pl.D);
  dp.host = std::move(pl);
  return dp;
}

inline int64_t target_blocks(const DeviceInfo& dev) { return int64_t(dev.sms) * 8; }

// CREATIVITY_FAST_CUDA_TILES_PER_BLOCK = n > 0 fixes the key tiles per block (tests use 1 to
// force many key splits on small inputs); unset: chosen from the work and the GPU size.
inline int64_t fixed_tiles_per_block() {
  return std::max<int64_t>(0, std::strtoll(env_string("CREATIVITY_FAST_CUDA_TILES_PER_BLOCK", "0").c_str(), nullptr, 10));
}

template <typename T>
PatchParams<T> patch_params(const DevicePlan& dp, const at::Tensor& z, const at::Tensor& data, const at::Tensor& inv2s2,
                            const std::optional<at::Tensor>& key_logw, const Options& o) {
  const HostPlan& pl = dp.host;
  PatchParams<T> p;
  p.z = z.data_ptr<T>();
  p.data = data.data_ptr<T>();
  p.inv2s2 = inv2s2.data_ptr<T>();
  p.logw = key_logw.has_value() ? key_logw->data_ptr<T>() : nullptr;
  const int* b32 = dp.buf32.data_ptr<int>();
  p.dtab = b32;
  p.rowclass = b32 + pl.dtab.size();
  p.colclass = b32 + pl.dtab.size() + pl.rowclass.size();
  p.doff = b32 + pl.dtab.size() + pl.rowclass.size() + pl.colclass.size();
  p.ncolclass = pl.ncc;
  const int64_t* b64 = dp.buf64.data_ptr<int64_t>();
  p.groups = reinterpret_cast<const GroupInfo*>(b64);
  p.work = reinterpret_cast<const WorkItem*>(b64 + pl.groups.size() * 12);
  p.B = static_cast<int>(z.size(0));
  p.C = static_cast<int>(z.size(1));
  p.H = static_cast<int>(z.size(2));
  p.W = static_cast<int>(z.size(3));
  p.N = static_cast<int>(data.size(0));
  p.D = pl.D;
  p.P = o.P;
  p.boundary = o.boundary;
  return p;
}

// 1 / (2 sigma^2) per batch element.
inline at::Tensor inv_two_sigma_sq(const at::Tensor& sigma) { return (sigma * sigma * 2).reciprocal().contiguous(); }

// ------------------------------------------------------------------------------------
// Forward.

// The uploaded plan of a patch forward (ELS, local or paired): one definition of its tiles,
// block target and partial-state budget.
template <typename T>
DevicePlan forward_plan(int B, int C, int H, int W, int N, const Options& o, Mode mode, const DeviceInfo& dev,
                        const at::Device& device) {
  return upload_plan(build_plan(B, C, H, W, N, o.P, mode, o.boundary, o.keys, Cfg<T>::TQ, Cfg<T>::TK,
                                target_blocks(dev), int64_t(sizeof(T)) * (4 + C) + 8, 0, kPartialBudgetBytes,
                                fixed_tiles_per_block()),
                     device);
}

// The partial online-softmax states of a forward's E plan entries (max, sum, best logit,
// weighted centres, best key), attached to the kernel's parameters.
struct PartialStates {
  at::Tensor pm, ps, pbest, pacc, pid;
  PartialStates(int64_t E, int C, const at::TensorOptions& opts)
      : pm(at::empty({E}, opts)),
        ps(at::empty({E}, opts)),
        pbest(at::empty({E}, opts)),
        pacc(at::empty({E * C}, opts)),
        pid(at::empty({E}, opts.dtype(at::kLong))) {}
  template <typename T>
  void attach(PatchParams<T>& p) const {
    p.pm = pm.data_ptr<T>();
    p.ps = ps.data_ptr<T>();
    p.pbest = pbest.data_ptr<T>();
    p.pacc = pacc.data_ptr<T>();
    p.pid = pid.data_ptr<int64_t>();
  }
};

// Merge the partial states into the outputs (x0_hat [B, C, H, W], lse [B, H, W], best [B, H, W]
// or empty).
template <typename T, typename L>
std::tuple<at::Tensor, at::Tensor, at::Tensor> merged_outputs(const L& launch, const PatchParams<T>& p, int B, int C,
                                                              int H, int W, const at::TensorOptions& opts,
                                                              bool return_argmax) {
  at::Tensor x0 = at::empty({B, C, H, W}, opts), lse = at::empty({B, H, W}, opts);
  at::Tensor best = at::empty({return_argmax ? int64_t(B) * H * W : 0}, opts.dtype(at::kLong));
  launch.patch_merge(p, x0.data_ptr<T>(), lse.data_ptr<T>(), return_argmax ? best.data_ptr<int64_t>() : nullptr);
  if (return_argmax) best = best.view({B, H, W});
  return {x0, lse, best};
}

template <typename T, typename L>
std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_forward(const L& launch, const at::Tensor& z,
                                                             const at::Tensor& data, const at::Tensor& sigma,
                                                             const std::optional<at::Tensor>& key_logw,
                                                             const Options& o, bool return_argmax,
                                                             const DeviceInfo& dev) {
  const int B = z.size(0), C = z.size(1), H = z.size(2), W = z.size(3), N = data.size(0);
  const DevicePlan dp = forward_plan<T>(B, C, H, W, N, o, o.mode, dev, z.device());
  PathChoice path;
  if (std::is_same<T, float>::value) path = choose_tf32(z, data, sigma, o, dp.host.D, dev);
  const at::Tensor inv2s2 = inv_two_sigma_sq(sigma);
  const auto opts = z.options();
  const PartialStates states(dp.host.entries, C, opts);
  PatchParams<T> p = patch_params<T>(dp, z, data, inv2s2, key_logw, o);
  states.attach(p);
  if (path.flag.defined()) p.path = path.flag.data_ptr<int>();  // both paths launched, one runs
  launch.patch_forward(p, static_cast<int64_t>(dp.host.work.size()), path.tf32, C == 1 ? 1 : 4);
  return merged_outputs<T>(launch, p, B, C, H, W, opts, return_argmax);
}

template <typename T>
IdealParams<T> ideal_params(const at::Tensor& z, const at::Tensor& data, const at::Tensor& inv2s2,
                            const std::optional<at::Tensor>& key_logw, int64_t nsplit) {
  IdealParams<T> p;
  p.z = z.data_ptr<T>();
  p.data = data.data_ptr<T>();
  p.inv2s2 = inv2s2.data_ptr<T>();
  p.logw = key_logw.has_value() ? key_logw->data_ptr<T>() : nullptr;
  p.B = static_cast<int>(z.size(0));
  p.N = static_cast<int>(data.size(0));
  p.CHW = z.size(1) * z.size(2) * z.size(3);
  p.per = (p.N + nsplit - 1) / nsplit;
  p.nsplit = static_cast<int>((p.N + p.per - 1) / p.per);
  return p;
}

template <typename T, typename L>
std::tuple<at::Tensor, at::Tensor, at::Tensor> ideal_forward(const L& launch, const at::Tensor& z,
                                                             const at::Tensor& data, const at::Tensor& sigma,
                                                             const std::optional<at::Tensor>& key_logw,
                                                             bool return_argmax, const DeviceInfo& dev) {
  const int B = z.size(0), C = z.size(1), H = z.size(2), W = z.size(3), N = data.size(0);
  const int64_t HW = int64_t(H) * W, CHW = C * HW;
  const at::Tensor inv2s2 = inv_two_sigma_sq(sigma);
  IdealParams<T> p = ideal_params<T>(z, data, inv2s2, key_logw, ideal_splits(B, N, CHW, sizeof(T), dev.sms));
  const int64_t slots = int64_t(p.nsplit) * kIdealWarps;
  const auto opts = z.options();
  // Pass 0: per-warp softmax statistics, merged here (max, rescaled sum, best with lowest id).
  at::Tensor pm = at::empty({slots, B}, opts), ps = at::empty({slots, B}, opts), pbest = at::empty({slots, B}, opts);
  at::Tensor pid = at::empty({slots, B}, opts.dtype(at::kLong));
  p.pm = pm.data_ptr<T>();
  p.ps = ps.data_ptr<T>();
  p.pbest = pbest.data_ptr<T>();
  p.pid = pid.data_ptr<int64_t>();
  launch.ideal(p, 0);
  const at::Tensor M = pm.amax(0);
  const at::Tensor Mf = at::where(M.isfinite(), M, at::zeros_like(M));
  const at::Tensor lse_b = (Mf + (ps * (pm - Mf).exp()).sum(0).log()).contiguous();  // [B]
  const at::Tensor bestv = pbest.amax(0);
  const at::Tensor best_mu =
      at::where(pbest == bestv, pid, at::full_like(pid, std::numeric_limits<int64_t>::max())).amin(0);  // [B]
  // Pass 1: x0_hat = sum_mu exp(l_mu - lse) phi_mu.
  at::Tensor pacc = at::zeros({slots, B, CHW}, opts);
  p.lse = lse_b.data_ptr<T>();
  p.pacc = pacc.data_ptr<T>();
  launch.ideal(p, 1);
  at::Tensor x0 = pacc.sum(0).view({B, C, H, W});
  at::Tensor lse = lse_b.view({B, 1, 1}).expand({B, H, W}).contiguous();
  at::Tensor best = at::empty({0}, opts.dtype(at::kLong));
  if (return_argmax) {
    const at::Tensor ids = best_mu.view({B, 1}) * HW + at::arange(HW, opts.dtype(at::kLong)).view({1, HW});
    best = at::where(best_mu.view({B, 1}) < 0, at::full_like(ids, -1), ids).view({B, H, W});  // -1: no finite logit
  }
  return {x0, lse, best};
}

// ------------------------------------------------------------------------------------
// Backward.

template <typename T, typename L>
at::Tensor patch_backward(const L& launch, const at::Tensor& grad, const at::Tensor& z, const at::Tensor& data,
                          const at::Tensor& sigma, const std::optional<at::Tensor>& key_logw, const at::Tensor& x0,
                          const at::Tensor& lse, const at::Tensor* grad_lse, const Options& o,
                          const DeviceInfo& dev) {
  const int B = z.size(0), C = z.size(1), H = z.size(2), W = z.size(3), N = data.size(0);
  const DevicePlan dp = upload_plan(build_plan(B, C, H, W, N, o.P, o.mode, o.boundary, o.keys, Cfg<T>::TQ, Cfg<T>::TK,
                                               target_blocks(dev), int64_t(sizeof(T)), int64_t(sizeof(T)),
                                               kPartialBudgetBytes, fixed_tiles_per_block()),
                                    z.device());
  const int64_t E = dp.host.entries;
  const at::Tensor inv2s2 = inv_two_sigma_sq(sigma);
  // [B, H, W] g . x0_hat, minus grad_lse when lse is differentiated too (see backward()).
  const at::Tensor gx0 = grad_lse ? ((grad * x0).sum(1) - *grad_lse).contiguous() : (grad * x0).sum(1).contiguous();
  const auto opts = z.options();
  at::Tensor pA = at::zeros({E * dp.host.D}, opts), pS = at::empty({E}, opts);
  PatchParams<T> p = patch_params<T>(dp, z, data, inv2s2, key_logw, o);
  p.grad = grad.data_ptr<T>();
  p.gx0 = gx0.data_ptr<T>();
  p.lse = lse.data_ptr<T>();
  p.pA = pA.data_ptr<T>();
  p.pS = pS.data_ptr<T>();
  launch.patch_backward(p, static_cast<int64_t>(dp.host.work.size()), C == 1 ? 1 : 4);
  at::Tensor grad_z = at::empty_like(z);
  launch.patch_adjoint(p, grad_z.data_ptr<T>());
  return grad_z;
}

template <typename T, typename L>
at::Tensor ideal_backward(const L& launch, const at::Tensor& grad, const at::Tensor& z, const at::Tensor& data,
                          const at::Tensor& sigma, const std::optional<at::Tensor>& key_logw, const at::Tensor& x0,
                          const at::Tensor& lse, const at::Tensor* grad_lse, const DeviceInfo& dev) {
  const int B = z.size(0), N = data.size(0);
  const int64_t CHW = z.numel() / B;
  const at::Tensor inv2s2 = inv_two_sigma_sq(sigma);
  IdealParams<T> p = ideal_params<T>(z, data, inv2s2, key_logw, ideal_splits(B, N, CHW, sizeof(T), dev.sms));
  const int64_t slots = int64_t(p.nsplit) * kIdealWarps;
  const auto opts = z.options();
  const at::Tensor lse_b = lse.reshape({B, -1}).select(1, 0).contiguous();  // the same at every pixel
  // [B] <g, x0_hat>, minus the sum of grad_lse over the pixels (lse is one value per sample).
  const at::Tensor gx0 =
      grad_lse ? ((grad * x0).reshape({B, -1}).sum(1) - grad_lse->reshape({B, -1}).sum(1)).contiguous()
               : (grad * x0).reshape({B, -1}).sum(1).contiguous();
  at::Tensor pacc = at::zeros({slots, B, CHW}, opts), pS = at::empty({slots, B}, opts);
  p.lse = lse_b.data_ptr<T>();
  p.grad = grad.data_ptr<T>();
  p.gx0 = gx0.data_ptr<T>();
  p.pacc = pacc.data_ptr<T>();
  p.pS = pS.data_ptr<T>();
  launch.ideal(p, 2);
  const at::Tensor A = pacc.sum(0);             // [B, CHW]
  const at::Tensor S = pS.sum(0).view({B, 1});  // [B, 1]
  const at::Tensor g = (A - z.reshape({B, CHW}) * S) * (inv2s2 * 2).view({B, 1});
  return g.view(z.sizes()).contiguous();
}

// ------------------------------------------------------------------------------------
// Operator bodies: the shared checks (op_args.h, devices included), the CUDA limits, then the flows.

template <typename L>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const L& launch, const DeviceInfo& dev, const at::Tensor& z_in,
                                                       const at::Tensor& data_in, const at::Tensor& sigma_in,
                                                       const Options& o, const std::optional<at::Tensor>& key_logw_in,
                                                       bool return_argmax) {
  check_inputs(op_args::kPatchPosteriorMean, z_in, data_in, sigma_in, key_logw_in, o);
  const at::Tensor z = z_in.contiguous(), data = data_in.contiguous(), sigma = sigma_in.contiguous();
  std::optional<at::Tensor> key_logw;
  if (key_logw_in.has_value()) key_logw = key_logw_in->contiguous();
  if (z.scalar_type() == at::kFloat) {
    return o.mode == Mode::Ideal ? ideal_forward<float>(launch, z, data, sigma, key_logw, return_argmax, dev)
                                 : patch_forward<float>(launch, z, data, sigma, key_logw, o, return_argmax, dev);
  }
  return o.mode == Mode::Ideal ? ideal_forward<double>(launch, z, data, sigma, key_logw, return_argmax, dev)
                               : patch_forward<double>(launch, z, data, sigma, key_logw, o, return_argmax, dev);
}

// grad_lse == nullptr: patch_posterior_mean_backward, the gradient of <grad_x0, x0_hat>.
// Else patch_posterior_mean_backward_lse, the gradient of <grad_x0, x0_hat> + <grad_lse, lse>:
// d lse / d Pi_x z = E_w[K_k - Pi_x z] / sigma^2, so the lse term adds grad_lse to every
// key's coefficient a_k = w_k (g . c_k - g . x0_hat + grad_lse) of the same backward pass;
// the kernels read g . x0_hat - grad_lse in place of g . x0_hat (as the CPU kernel, which
// adds grad_lse to the same coefficient; ppm_kernel.h).
template <typename L>
at::Tensor backward(const L& launch, const DeviceInfo& dev, const at::Tensor& grad_in, const at::Tensor& z_in,
                    const at::Tensor& data_in, const at::Tensor& sigma_in, const Options& o,
                    const std::optional<at::Tensor>& key_logw_in, const at::Tensor& x0_in, const at::Tensor& lse_in,
                    const at::Tensor* grad_lse_in = nullptr) {
  const char* op = grad_lse_in ? op_args::kPatchPosteriorMeanBackwardLse : op_args::kPatchPosteriorMeanBackward;
  op_args::check_patch_inputs(op, z_in, data_in, sigma_in, key_logw_in, o);
  op_args::check_patch_backward_inputs(op, z_in, grad_in, x0_in, lse_in, grad_lse_in);
  check_cuda_limits(op, z_in, data_in, o);
  const at::Tensor z = z_in.contiguous(), data = data_in.contiguous(), sigma = sigma_in.contiguous();
  const at::Tensor grad = grad_in.contiguous(), x0 = x0_in.contiguous(), lse = lse_in.contiguous();
  at::Tensor gl;
  if (grad_lse_in) gl = grad_lse_in->contiguous();
  const at::Tensor* grad_lse = grad_lse_in ? &gl : nullptr;
  std::optional<at::Tensor> key_logw;
  if (key_logw_in.has_value()) key_logw = key_logw_in->contiguous();
  if (z.scalar_type() == at::kFloat) {
    return o.mode == Mode::Ideal
               ? ideal_backward<float>(launch, grad, z, data, sigma, key_logw, x0, lse, grad_lse, dev)
               : patch_backward<float>(launch, grad, z, data, sigma, key_logw, x0, lse, grad_lse, o, dev);
  }
  return o.mode == Mode::Ideal
             ? ideal_backward<double>(launch, grad, z, data, sigma, key_logw, x0, lse, grad_lse, dev)
             : patch_backward<double>(launch, grad, z, data, sigma, key_logw, x0, lse, grad_lse, o, dev);
}

// ------------------------------------------------------------------------------------
// paired_patch_posterior_mean (docs/theory.md §3.7): the ELS plan, partial states and merge,
// with forward_kernel's PAIRED instantiation (partner_tile, patch_kernels.cuh). Forward only:
// the autograd formula (creativity_fast/ops.py) differentiates the reference twin on the same
// device (NOTES.md, "Paired-patch machine").

// A partner map's entries lie in [-1, HW): checked on the device with one synchronisation (two
// scalars back); on failure the map is copied once for the shared message (op_args.h).
inline void check_partner_map(const char* op, const char* name, const at::Tensor& t, int64_t HW) {
  if (t.numel() == 0) return;
  const at::Tensor range = at::stack({t.amin(), t.amax()}).cpu();
  const int64_t* r = range.data_ptr<int64_t>();
  if (r[0] >= -1 && r[1] < HW) return;
  const at::Tensor host = t.cpu();
  op_args::check_partner_values(op, name, host.data_ptr<int64_t>(), host.numel(), HW);
}

template <typename T, typename L>
std::tuple<at::Tensor, at::Tensor, at::Tensor> paired_forward_impl(const L& launch, const at::Tensor& z,
                                                                   const at::Tensor& data, const at::Tensor& sigma,
                                                                   const at::Tensor& qpartner,
                                                                   const at::Tensor& kpartner, int P2, double beta,
                                                                   const Options& o, bool return_argmax,
                                                                   const DeviceInfo& dev) {
  const int B = z.size(0), C = z.size(1), H = z.size(2), W = z.size(3), N = data.size(0);
  const DevicePlan dp = forward_plan<T>(B, C, H, W, N, o, Mode::Els, dev, z.device());
  // The partner window's entry table (the AxisPatch rule of P2), as the plan's dtab.
  std::vector<int> dtab2, doff2;
  patch_entry_table(C, H, W, AxisPatch(P2, H, o.boundary), AxisPatch(P2, W, o.boundary), &dtab2, &doff2);
  at::Tensor dtab2_h = at::empty({int64_t(dtab2.size())}, at::TensorOptions().dtype(at::kInt));
  std::memcpy(dtab2_h.data_ptr<int>(), dtab2.data(), dtab2.size() * sizeof(int));
  const at::Tensor dtab2_d = dtab2_h.to(z.device());
  const at::Tensor inv2s2 = inv_two_sigma_sq(sigma);
  const auto opts = z.options();
  const PartialStates states(dp.host.entries, C, opts);
  const std::optional<at::Tensor> no_logw;
  PatchParams<T> p = patch_params<T>(dp, z, data, inv2s2, no_logw, o);
  states.attach(p);
  p.qpartner = qpartner.data_ptr<int64_t>();
  p.kpartner = kpartner.data_ptr<int64_t>();
  p.dtab2 = dtab2_d.data_ptr<int>();
  p.P2 = P2;
  p.D2 = static_cast<int>(dtab2.size() / 4);
  p.beta = static_cast<T>(beta);
  if (verbose())
    std::fprintf(stderr, "[creativity_fast cuda] paired: P=%d P2=%d D2=%d beta=%g (CUDA cores, %s)\n", o.P, P2, p.D2,
                 beta, std::is_same<T, float>::value ? "fp32" : "fp64");
  launch.paired_forward(p, static_cast<int64_t>(dp.host.work.size()), C == 1 ? 1 : 4);
  return merged_outputs<T>(launch, p, B, C, H, W, opts, return_argmax);
}

// The operator body: the shared checks of op_args.h (those of the CPU operator, in its order),
// the CUDA limits, the partner values; beta = 0 runs the ELS forward itself (the partner term
// is not formed), as the CPU operator does, so it equals patch_posterior_mean bit for bit.
template <typename L>
std::tuple<at::Tensor, at::Tensor, at::Tensor> paired_forward(const L& launch, const DeviceInfo& dev,
                                                              const at::Tensor& z_in, const at::Tensor& data_in,
                                                              const at::Tensor& sigma_in, int64_t P, int64_t P2,
                                                              const at::Tensor& qpartner_in,
                                                              const at::Tensor& kpartner_in, double beta,
                                                              c10::string_view boundary, c10::string_view keys,
                                                              bool return_argmax) {
  const char* op = op_args::kPairedPatchPosteriorMean;
  const Options o = op_args::parse_patch_options(op, P, "els", boundary, keys);
  const std::optional<at::Tensor> no_logw;
  op_args::check_patch_inputs(op, z_in, data_in, sigma_in, no_logw, o);
  const int p2 = op_args::check_paired_inputs(op, z_in, data_in, P2, beta, qpartner_in, kpartner_in);
  check_cuda_limits(op, z_in, data_in, o);
  const at::Tensor z = z_in.contiguous(), data = data_in.contiguous(), sigma = sigma_in.contiguous();
  const at::Tensor qpartner = qpartner_in.contiguous(), kpartner = kpartner_in.contiguous();
  const int64_t HW = z.size(2) * z.size(3);
  // The kernel indexes with the partners: out-of-range entries would read outside the images.
  check_partner_map(op, "query_partner", qpartner, HW);
  check_partner_map(op, "key_partner", kpartner, HW);
  if (beta == 0) {
    return z.scalar_type() == at::kFloat ? patch_forward<float>(launch, z, data, sigma, no_logw, o, return_argmax, dev)
                                         : patch_forward<double>(launch, z, data, sigma, no_logw, o, return_argmax, dev);
  }
  if (z.scalar_type() == at::kFloat)
    return paired_forward_impl<float>(launch, z, data, sigma, qpartner, kpartner, p2, beta, o, return_argmax, dev);
  return paired_forward_impl<double>(launch, z, data, sigma, qpartner, kpartner, p2, beta, o, return_argmax, dev);
}

// ------------------------------------------------------------------------------------
// patch_argmax_attention (docs/theory.md §3.4): kernel patch_argmax_attention.cuh, NOTES.md.
//
// Environment (read on every call; tests use them to force the rarer paths):
//   CREATIVITY_FAST_CUDA_ATTENTION_SPLITS = n > 0: displacement splits per image (default:
//       enough work items to fill the GPU when there are few images);
//   CREATIVITY_FAST_CUDA_ATTENTION_SCRATCH = global: block scratch in global memory even
//       when it fits in shared memory.

constexpr int64_t kAttnSmemTarget = 64 * 1024;  // per block: 3 blocks per SM on sm_90

// The admissible displacements of one half plane (d > 0 in flat order), in the CPU kernel's order.
inline std::vector<int> attention_displacements(int H, int W, int exclude) {
  std::vector<int> disp;
  for (int dr = 0; dr <= H - 1; ++dr)
    for (int dc = dr == 0 ? 1 : -(W - 1); dc <= W - 1; ++dc)
      if (std::max(dr, std::abs(dc)) >= exclude) {
        disp.push_back(dr);
        disp.push_back(dc);
      }
  return disp;
}

template <typename T, typename L>
std::tuple<at::Tensor, at::Tensor> attention_impl(const L& launch, const DeviceInfo& dev, const at::Tensor& images,
                                                  const at::Tensor& center, int P, int exclude, double tau) {
  const int M = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t HW = int64_t(H) * W;
  const bool soft = tau > 0;
  const auto opts = images.options();
  const auto dopts = opts.dtype(at::kDouble), lopts = opts.dtype(at::kLong);
  if (M == 0) return {at::empty({0, H, W}, lopts), at::empty({0, H, W}, opts)};

  AttentionParams<T> p;
  p.images = images.data_ptr<T>();
  p.center = center.data_ptr<double>();
  p.M = M;
  p.C = C;
  p.H = H;
  p.W = W;
  p.P = P;
  p.tau = tau;
  p.self = exclude <= 0;
  const std::vector<int> disp = attention_displacements(H, W, exclude);
  p.ndisp = static_cast<int>(disp.size() / 2);
  at::Tensor disp_t = at::empty({std::max<int64_t>(1, int64_t(disp.size()))}, at::TensorOptions().dtype(at::kInt));
  if (!disp.empty()) std::memcpy(disp_t.data_ptr<int>(), disp.data(), disp.size() * sizeof(int));
  disp_t = disp_t.to(images.device());
  p.disp = disp_t.data_ptr<int>();

  // Splits: enough work items for ~4 blocks per SM, at least 16 displacements per split.
  const int64_t fixed = std::strtoll(env_string("CREATIVITY_FAST_CUDA_ATTENTION_SPLITS", "0").c_str(), nullptr, 10);
  int64_t nsplit = fixed > 0 ? fixed : std::min<int64_t>((int64_t(dev.sms) * 4 + M - 1) / M, p.ndisp / 16);
  nsplit = std::max<int64_t>(1, std::min<int64_t>(nsplit, p.ndisp));
  p.per = static_cast<int>((p.ndisp + nsplit - 1) / nsplit);
  p.nsplit = p.per > 0 ? static_cast<int>((p.ndisp + p.per - 1) / p.per) : 1;

  // Scratch: shared memory with the most tables that stay within the target (or the
  // device limit when even one table does not), else global memory.
  const bool force_global = env_string("CREATIVITY_FAST_CUDA_ATTENTION_SCRATCH", "shared") == "global";
  const int kmax = std::max(1, std::min(kAttnMaxK, p.per));
  int K = 0;
  for (int k = kmax; k >= 1 && !force_global; --k) {
    const int64_t bytes = attention_scratch_doubles(C, H, W, soft, k) * 8;
    if (bytes <= std::min<int64_t>(dev.smem_optin, kAttnSmemTarget) || (k == 1 && bytes <= dev.smem_optin)) {
      K = k;
      break;
    }
  }
  const int64_t items = int64_t(M) * p.nsplit;
  int64_t nblocks = items, smem = 0;
  at::Tensor scratch;
  if (K > 0) {
    p.K = K;
    smem = attention_scratch_doubles(C, H, W, soft, K) * 8;
  } else {
    p.K = kmax;
    p.scratch_stride = attention_scratch_doubles(C, H, W, soft, p.K);
    nblocks = std::min<int64_t>(items, std::max<int64_t>(1, std::min<int64_t>(int64_t(dev.sms) * 8,
                                                                                kPartialBudgetBytes / (8 * p.scratch_stride))));
    scratch = at::empty({nblocks * p.scratch_stride}, dopts);
    p.scratch = scratch.data_ptr<double>();
  }
  nblocks = std::min<int64_t>(nblocks, std::numeric_limits<int>::max());
  if (verbose())
    std::fprintf(stderr,
                 "[creativity_fast cuda] attention: M=%d %dx%dx%d P=%d exclude=%d tau=%g: %d displacements, %d splits, "
                 "K=%d, %lld blocks, scratch %s (%lld bytes per block)\n",
                 M, C, H, W, P, exclude, tau, p.ndisp, p.nsplit, p.K, static_cast<long long>(nblocks),
                 K > 0 ? "shared" : "global",
                 static_cast<long long>(K > 0 ? smem : p.scratch_stride * 8));

  at::Tensor pbest = at::empty({p.nsplit, M, HW}, dopts), parg = at::empty({p.nsplit, M, HW}, lopts);
  at::Tensor pmax, psum;
  p.pbest = pbest.data_ptr<double>();
  p.parg = parg.data_ptr<int64_t>();
  if (soft) {
    pmax = at::empty({p.nsplit, M, HW}, dopts);
    psum = at::empty({p.nsplit, M, HW}, dopts);
    p.pmax = pmax.data_ptr<double>();
    p.psum = psum.data_ptr<double>();
  }
  launch.attention(p, soft ? 1 : 0, nblocks, smem);

  // y*: the largest score over the splits, the lowest key among equal scores (-1: none).
  at::Tensor y_star;
  if (p.nsplit == 1) {
    y_star = parg[0];
  } else {
    const at::Tensor bestv = pbest.amax(0, true);
    y_star = at::where(pbest == bestv, parg, at::full_like(parg, std::numeric_limits<int64_t>::max())).amin(0);
  }
  at::Tensor in_degree;
  if (!soft) {
    at::Tensor counts = at::zeros({M, HW + 1}, dopts);
    counts.scatter_add_(1, at::where(y_star < 0, at::full_like(y_star, HW), y_star), at::ones({M, HW}, dopts));
    in_degree = counts.narrow(1, 0, HW);
  } else {
    const at::Tensor mx = pmax.amax(0, true);
    const at::Tensor mf = at::where(mx.isfinite(), mx, at::zeros_like(mx));
    const at::Tensor lse = (mf + (psum * (pmax - mf).exp()).sum(0, true).log()).squeeze(0).contiguous();  // [M, HW]
    at::Tensor pcol = at::empty({p.nsplit, M, HW}, dopts);
    p.lse = lse.data_ptr<double>();
    p.pcol = pcol.data_ptr<double>();
    launch.attention(p, 2, nblocks, smem);
    in_degree = p.nsplit == 1 ? pcol[0] : pcol.sum(0);
  }
  return {y_star.reshape({M, H, W}).contiguous(), in_degree.to(images.scalar_type()).reshape({M, H, W}).contiguous()};
}

inline std::tuple<at::Tensor, at::Tensor> attention_checked(const at::Tensor& images_in, const at::Tensor& center_in,
                                                            int64_t P, int64_t exclude) {
  const char* op = op_args::kPatchArgmaxAttention;
  op_args::check_attention_inputs(op, images_in, center_in, P, exclude);
  const int64_t C = images_in.size(1), H = images_in.size(2), W = images_in.size(3);
  // Capability limit of the CUDA kernel (32-bit indices), not of the operator.
  TORCH_CHECK(C * H * W < (int64_t(1) << 31) && images_in.size(0) < (int64_t(1) << 31) && C * P * P < (int64_t(1) << 31),
              op, ": the CUDA kernel supports C*H*W, M and C*P*P < 2^31 (32-bit indices); got images ",
              images_in.sizes(), ", P=", P);
  return {images_in.contiguous(), center_in.to(at::kDouble).contiguous()};
}

template <typename L>
std::tuple<at::Tensor, at::Tensor> attention(const L& launch, const DeviceInfo& dev, const at::Tensor& images_in,
                                             const at::Tensor& center_in, int64_t P, int64_t exclude, double tau) {
  at::Tensor images, center;
  std::tie(images, center) = attention_checked(images_in, center_in, P, exclude);
  const int64_t H = images.size(2), W = images.size(3);
  const int excl = static_cast<int>(std::min<int64_t>(exclude, std::max(H, W) + 1));  // as the CPU kernel
  if (images.scalar_type() == at::kFloat)
    return attention_impl<float>(launch, dev, images, center, static_cast<int>(P), excl, tau);
  return attention_impl<double>(launch, dev, images, center, static_cast<int>(P), excl, tau);
}

}  // namespace impl
}  // namespace cuda
}  // namespace creativity_fast
