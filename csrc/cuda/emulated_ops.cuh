// The CUDA operators run on the CPU emulator (cpu_emulation.cuh): the same host flows
// (ops_impl.cuh), plan and kernels as the CUDA build, on CPU tensors, with a chosen number
// of multiprocessors and compute capability. For tests on machines without a GPU
// (tests/cuda_backends.py builds it with torch.utils.cpp_extension.load_inline); never part of
// the extension. Include after the torch headers, with CF_CUDA_EMULATION defined.
#pragma once

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_emulation.cuh"
#include "launch_ladder.cuh"
#include "ops_impl.cuh"

namespace cf_emu {
namespace cfc = creativity_fast::cuda;

// Launcher of launch_ladder.cuh: runs the chosen kernel instantiation on the emulator.
struct EmuLauncher {
  template <typename... KernelArgs, typename... Args>
  cudaError_t operator()(void (*kernel)(KernelArgs...), const cfc::ladder::LaunchDims& d, Args&&... args) const {
    cf_emu::launch({d.grid_x, d.grid_y, 1}, {d.block, 1, 1}, d.smem_bytes, [&] { kernel(args...); });
    return cudaSuccess;
  }
};

// Launch backend of ops_impl.cuh: each kernel launch runs on the emulator, through the same
// ladder as the CUDA launchers (patch_kernels.cu, ideal_kernels.cu, patch_argmax_attention.cu).
struct EmuLaunch {
  template <typename T>
  void patch_forward(const cfc::PatchParams<T>& p, int64_t nwork, bool tf32, int cmax) const {
    cfc::ladder::patch_forward<T>(EmuLauncher{}, p, nwork, tf32, cmax);
  }
  template <typename T>
  void paired_forward(const cfc::PatchParams<T>& p, int64_t nwork, int cmax) const {
    cfc::ladder::paired_forward<T>(EmuLauncher{}, p, nwork, cmax);
  }
  template <typename T>
  void patch_merge(const cfc::PatchParams<T>& p, T* x0, T* lse, int64_t* best) const {
    cfc::ladder::patch_merge<T>(EmuLauncher{}, p, x0, lse, best);
  }
  template <typename T>
  void patch_backward(const cfc::PatchParams<T>& p, int64_t nwork, int cmax) const {
    cfc::ladder::patch_backward<T>(EmuLauncher{}, p, nwork, cmax);
  }
  template <typename T>
  void patch_adjoint(const cfc::PatchParams<T>& p, T* grad_z) const {
    cfc::ladder::patch_adjoint<T>(EmuLauncher{}, p, grad_z);
  }
  template <typename T>
  void ideal(const cfc::IdealParams<T>& p, int phase) const {
    cfc::ladder::ideal<T>(EmuLauncher{}, p, phase);
  }
  template <typename T>
  void attention(const cfc::AttentionParams<T>& p, int phase, int64_t nblocks, int64_t smem_bytes) const {
    cfc::ladder::attention<T>(EmuLauncher{}, p, phase, nblocks, smem_bytes);
  }
};

// patch_posterior_mean / patch_posterior_mean_backward / patch_posterior_mean_backward_lse
// on the emulator; sms and major stand for the GPU's multiprocessor count and compute
// capability (plan size, tf32 eligibility). Argument names and checks as the operators'.
inline std::vector<at::Tensor> forward(const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma, int64_t P,
                                       const std::string& mode, const std::string& boundary, const std::string& keys,
                                       const std::optional<at::Tensor>& key_logw, bool return_argmax, int64_t sms,
                                       int64_t major) {
  const auto o = cfc::impl::parse_options(creativity_fast::op_args::kPatchPosteriorMean, P, mode, boundary, keys);
  const cfc::impl::DeviceInfo dev{static_cast<int>(sms), static_cast<int>(major)};
  auto r = cfc::impl::forward(EmuLaunch{}, dev, z, data, sigma, o, key_logw, return_argmax);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

inline at::Tensor backward(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& data,
                           const at::Tensor& sigma, int64_t P, const std::string& mode, const std::string& boundary,
                           const std::string& keys, const std::optional<at::Tensor>& key_logw, const at::Tensor& x0,
                           const at::Tensor& lse, int64_t sms, int64_t major) {
  const auto o =
      cfc::impl::parse_options(creativity_fast::op_args::kPatchPosteriorMeanBackward, P, mode, boundary, keys);
  const cfc::impl::DeviceInfo dev{static_cast<int>(sms), static_cast<int>(major)};
  return cfc::impl::backward(EmuLaunch{}, dev, grad, z, data, sigma, o, key_logw, x0, lse);
}

inline at::Tensor backward_lse(const at::Tensor& grad, const at::Tensor& grad_lse, const at::Tensor& z,
                               const at::Tensor& data, const at::Tensor& sigma, int64_t P, const std::string& mode,
                               const std::string& boundary, const std::string& keys,
                               const std::optional<at::Tensor>& key_logw, const at::Tensor& x0, const at::Tensor& lse,
                               int64_t sms, int64_t major) {
  const auto o =
      cfc::impl::parse_options(creativity_fast::op_args::kPatchPosteriorMeanBackwardLse, P, mode, boundary, keys);
  const cfc::impl::DeviceInfo dev{static_cast<int>(sms), static_cast<int>(major)};
  return cfc::impl::backward(EmuLaunch{}, dev, grad, z, data, sigma, o, key_logw, x0, lse, &grad_lse);
}

// paired_patch_posterior_mean on the emulator (argument order of the operator), sms and major as above.
inline std::vector<at::Tensor> paired_forward(const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma,
                                              int64_t P, int64_t P2, const at::Tensor& query_partner,
                                              const at::Tensor& key_partner, double beta, const std::string& boundary,
                                              const std::string& keys, bool return_argmax, int64_t sms,
                                              int64_t major) {
  const cfc::impl::DeviceInfo dev{static_cast<int>(sms), static_cast<int>(major)};
  auto r = cfc::impl::paired_forward(EmuLaunch{}, dev, z, data, sigma, P, P2, query_partner, key_partner, beta,
                                     boundary, keys, return_argmax);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

// The precision policy's decisions so far (ops_impl.cuh: PrecisionStats), as
// {tf32, fp32, forced, data_passes, last_bound, last_tol, last_knorm, last_qnorm}.
inline std::vector<double> precision_stats() {
  const auto s = cfc::impl::read_precision_stats();
  return {double(s.tf32), double(s.fp32), double(s.forced), double(s.data_passes),
          s.last_bound, s.last_tol, s.last_knorm, s.last_qnorm};
}

// patch_argmax_attention on the emulator; smem_optin stands for the GPU's shared memory per
// block (0 forces the global-memory scratch).
inline std::vector<at::Tensor> attention(const at::Tensor& images, const at::Tensor& center, int64_t P, int64_t exclude,
                                         double tau, int64_t sms, int64_t major, int64_t smem_optin) {
  const cfc::impl::DeviceInfo dev{static_cast<int>(sms), static_cast<int>(major), static_cast<int>(smem_optin)};
  auto r = cfc::impl::attention(EmuLaunch{}, dev, images, center, P, exclude, tau);
  return {std::get<0>(r), std::get<1>(r)};
}

}  // namespace cf_emu
