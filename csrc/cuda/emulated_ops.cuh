// The CUDA operators run on the CPU emulator (cpu_emulation.cuh): the same host flows
// (ops_impl.cuh), plan and kernels as the CUDA build, on CPU tensors, with a chosen number
// of multiprocessors and compute capability. For tests on machines without a GPU
// (tests/test_cuda.py builds it with torch.utils.cpp_extension.load_inline); never part of
// the extension. Include after the torch headers, with CF_CUDA_EMULATION defined.
#pragma once

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_emulation.cuh"
#include "ideal_kernels.cuh"
#include "ops_impl.cuh"
#include "patch_argmax_attention.cuh"
#include "patch_kernels.cuh"

namespace cf_emu {
namespace cfc = creativity_fast::cuda;

// Launch backend of ops_impl.cuh: each kernel launch runs on the emulator.
struct EmuLaunch {
  template <typename T>
  void patch_forward(const cfc::PatchParams<T>& p, int64_t nwork, bool tf32, int cmax) const {
    const emu_dim3 grid{static_cast<unsigned>(nwork), 1, 1}, block{cfc::kThreads, 1, 1};
    if constexpr (std::is_same<T, float>::value) {
      if (tf32) {
        if (cmax == 1)
          cf_emu::launch(grid, block, [&] { cfc::detail::forward_kernel<float, 1, true>(p); });
        else
          cf_emu::launch(grid, block, [&] { cfc::detail::forward_kernel<float, 4, true>(p); });
        return;
      }
    }
    if (cmax == 1)
      cf_emu::launch(grid, block, [&] { cfc::detail::forward_kernel<T, 1, false>(p); });
    else
      cf_emu::launch(grid, block, [&] { cfc::detail::forward_kernel<T, 4, false>(p); });
  }
  template <typename T>
  void patch_merge(const cfc::PatchParams<T>& p, T* x0, T* lse, int64_t* best) const {
    const int64_t n = int64_t(p.B) * p.H * p.W;
    cf_emu::launch({static_cast<unsigned>((n + 255) / 256), 1, 1}, {256, 1, 1},
                   [&] { cfc::detail::merge_kernel<T>(p, x0, lse, best); });
  }
  template <typename T>
  void patch_backward(const cfc::PatchParams<T>& p, int64_t nwork, int cmax) const {
    const emu_dim3 grid{static_cast<unsigned>(nwork), 1, 1}, block{cfc::kThreads, 1, 1};
    if (cmax == 1)
      cf_emu::launch(grid, block, [&] { cfc::detail::backward_kernel<T, 1>(p); });
    else
      cf_emu::launch(grid, block, [&] { cfc::detail::backward_kernel<T, 4>(p); });
  }
  template <typename T>
  void patch_adjoint(const cfc::PatchParams<T>& p, T* grad_z) const {
    const int64_t n = int64_t(p.B) * p.C * p.H * p.W;
    cf_emu::launch({static_cast<unsigned>((n + 255) / 256), 1, 1}, {256, 1, 1},
                   [&] { cfc::detail::adjoint_kernel<T>(p, grad_z); });
  }
  template <typename T>
  void ideal(const cfc::IdealParams<T>& p, int phase) const {
    const emu_dim3 grid{static_cast<unsigned>(p.nsplit), static_cast<unsigned>(p.B), 1}, block{cfc::kThreads, 1, 1};
    if (phase == 0)
      cf_emu::launch(grid, block, [&] { cfc::detail::ideal_kernel<T, 0>(p); });
    else if (phase == 1)
      cf_emu::launch(grid, block, [&] { cfc::detail::ideal_kernel<T, 1>(p); });
    else
      cf_emu::launch(grid, block, [&] { cfc::detail::ideal_kernel<T, 2>(p); });
  }
  template <typename T>
  void attention(const cfc::AttentionParams<T>& p, int phase, int64_t nblocks, int64_t smem_bytes) const {
    const emu_dim3 grid{static_cast<unsigned>(nblocks), 1, 1}, block{cfc::kAttnThreads, 1, 1};
    const size_t smem = static_cast<size_t>(smem_bytes);
    if (phase == 0)
      cf_emu::launch(grid, block, smem, [&] { cfc::detail::attention_kernel<T, 0>(p); });
    else if (phase == 1)
      cf_emu::launch(grid, block, smem, [&] { cfc::detail::attention_kernel<T, 1>(p); });
    else
      cf_emu::launch(grid, block, smem, [&] { cfc::detail::attention_kernel<T, 2>(p); });
  }
};

// patch_posterior_mean / patch_posterior_mean_backward on the emulator; sms and major stand
// for the GPU's multiprocessor count and compute capability (plan size, tf32 eligibility).
inline std::vector<at::Tensor> forward(const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma, int64_t P,
                                       const std::string& mode, const std::string& boundary, const std::string& keys,
                                       const std::optional<at::Tensor>& key_logw, bool return_argmax, int64_t sms,
                                       int64_t major) {
  const auto o = cfc::impl::parse_options(P, mode, boundary, keys);
  const cfc::impl::DeviceInfo dev{static_cast<int>(sms), static_cast<int>(major)};
  auto r = cfc::impl::forward(EmuLaunch{}, dev, z, data, sigma, o, key_logw, return_argmax);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

inline at::Tensor backward(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& data,
                           const at::Tensor& sigma, int64_t P, const std::string& mode, const std::string& boundary,
                           const std::string& keys, const std::optional<at::Tensor>& key_logw, const at::Tensor& x0,
                           const at::Tensor& lse, int64_t sms, int64_t major) {
  const auto o = cfc::impl::parse_options(P, mode, boundary, keys);
  const cfc::impl::DeviceInfo dev{static_cast<int>(sms), static_cast<int>(major)};
  return cfc::impl::backward(EmuLaunch{}, dev, grad, z, data, sigma, o, key_logw, x0, lse);
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
