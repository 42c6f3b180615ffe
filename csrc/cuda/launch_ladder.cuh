// The launch ladder of the CUDA kernels: which template instantiation of a kernel a launch
// runs (scalar type, channels in registers, tf32, phase), and its grid, block and dynamic
// shared memory. One definition used by both executions of the kernels:
//   - the CUDA launchers (patch_kernels.cu, paired_kernels.cu, ideal_kernels.cu,
//     patch_argmax_attention.cu)
//     pass StreamLauncher, which launches on a CUDA stream;
//   - the CPU emulator (emulated_ops.cuh) passes its own launcher, which runs the kernel
//     on cpu_emulation.cuh.
// A launcher is a callable
//     cudaError_t launcher(void (*kernel)(KernelArgs...), const LaunchDims& dims, Args&&... args)
// that runs `kernel` on dims.grid_x x dims.grid_y blocks of dims.block threads with
// dims.smem_bytes of dynamic shared memory; each ladder function returns its result
// (cudaSuccess when there is nothing to launch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "common.cuh"
#include "ideal_kernels.cuh"
#include "patch_argmax_attention.cuh"
#include "patch_kernels.cuh"

namespace creativity_fast {
namespace cuda {
namespace ladder {

struct LaunchDims {
  unsigned grid_x = 1, grid_y = 1;  // blocks
  unsigned block = 1;               // threads per block (1-D)
  size_t smem_bytes = 0;            // dynamic shared memory per block
};

// forward_kernel<T, CMAX, TF32>: one block per work item; cmax is 1 or 4 (channels held in
// registers); tf32 only for float; p.path set (float): both fp32 and tf32, one of them runs.
template <typename T, typename Launcher>
cudaError_t patch_forward(Launcher&& launch, const PatchParams<T>& p, int64_t nwork, bool tf32, int cmax) {
  if (nwork <= 0) return cudaSuccess;
  const LaunchDims d{static_cast<unsigned>(nwork), 1, static_cast<unsigned>(kThreads), 0};
  if constexpr (std::is_same<T, float>::value) {
    if (p.path != nullptr) {  // decided on the device: both, the one not chosen returns at once
      const cudaError_t e = cmax == 1 ? launch(detail::forward_kernel<float, 1, false>, d, p)
                                      : launch(detail::forward_kernel<float, 4, false>, d, p);
      if (e != cudaSuccess) return e;
      tf32 = true;
    }
    if (tf32) {
      if (cmax == 1) return launch(detail::forward_kernel<float, 1, true>, d, p);
      return launch(detail::forward_kernel<float, 4, true>, d, p);
    }
  }
  if (cmax == 1) return launch(detail::forward_kernel<T, 1, false>, d, p);
  return launch(detail::forward_kernel<T, 4, false>, d, p);
}

// forward_kernel<T, CMAX, false, true>: the paired-patch machine, one block per work item.
template <typename T, typename Launcher>
cudaError_t paired_forward(Launcher&& launch, const PatchParams<T>& p, int64_t nwork, int cmax) {
  if (nwork <= 0) return cudaSuccess;
  const LaunchDims d{static_cast<unsigned>(nwork), 1, static_cast<unsigned>(kThreads), 0};
  if (cmax == 1) return launch(detail::forward_kernel<T, 1, false, true>, d, p);
  return launch(detail::forward_kernel<T, 4, false, true>, d, p);
}

// merge_kernel<T>: one thread per (sample, pixel).
template <typename T, typename Launcher>
cudaError_t patch_merge(Launcher&& launch, const PatchParams<T>& p, T* x0, T* lse, int64_t* best) {
  const int64_t n = static_cast<int64_t>(p.B) * p.H * p.W;
  if (n == 0) return cudaSuccess;
  const LaunchDims d{static_cast<unsigned>((n + 255) / 256), 1, 256, 0};
  return launch(detail::merge_kernel<T>, d, p, x0, lse, best);
}

// backward_kernel<T, CMAX>: one block per work item.
template <typename T, typename Launcher>
cudaError_t patch_backward(Launcher&& launch, const PatchParams<T>& p, int64_t nwork, int cmax) {
  if (nwork <= 0) return cudaSuccess;
  const LaunchDims d{static_cast<unsigned>(nwork), 1, static_cast<unsigned>(kThreads), 0};
  if (cmax == 1) return launch(detail::backward_kernel<T, 1>, d, p);
  return launch(detail::backward_kernel<T, 4>, d, p);
}

// adjoint_kernel<T>: one thread per entry of z.
template <typename T, typename Launcher>
cudaError_t patch_adjoint(Launcher&& launch, const PatchParams<T>& p, T* grad_z) {
  const int64_t n = static_cast<int64_t>(p.B) * p.C * p.H * p.W;
  if (n == 0) return cudaSuccess;
  const LaunchDims d{static_cast<unsigned>((n + 255) / 256), 1, 256, 0};
  return launch(detail::adjoint_kernel<T>, d, p, grad_z);
}

// ideal_kernel<T, PHASE>: grid (splits, samples).
template <typename T, typename Launcher>
cudaError_t ideal(Launcher&& launch, const IdealParams<T>& p, int phase) {
  if (p.B == 0 || p.nsplit == 0) return cudaSuccess;
  const LaunchDims d{static_cast<unsigned>(p.nsplit), static_cast<unsigned>(p.B), static_cast<unsigned>(kThreads), 0};
  if (phase == 0) return launch(detail::ideal_kernel<T, 0>, d, p);
  if (phase == 1) return launch(detail::ideal_kernel<T, 1>, d, p);
  return launch(detail::ideal_kernel<T, 2>, d, p);
}

// attention_kernel<T, PHASE>: nblocks blocks looping over the work items, smem_bytes of
// dynamic shared memory (0 when p.scratch is used).
template <typename T, typename Launcher>
cudaError_t attention(Launcher&& launch, const AttentionParams<T>& p, int phase, int64_t nblocks,
                      int64_t smem_bytes) {
  if (nblocks <= 0) return cudaSuccess;
  const LaunchDims d{static_cast<unsigned>(nblocks), 1, static_cast<unsigned>(kAttnThreads),
                     static_cast<size_t>(smem_bytes)};
  if (phase == 0) return launch(detail::attention_kernel<T, 0>, d, p);
  if (phase == 1) return launch(detail::attention_kernel<T, 1>, d, p);
  return launch(detail::attention_kernel<T, 2>, d, p);
}

#if !defined(CF_CUDA_EMULATION)
// The CUDA launcher: <<<grid, block, smem, stream>>>, opting in to more than the default
// 48 KiB of dynamic shared memory when asked (sm_80: up to 163 KiB, sm_90: 227 KiB).
struct StreamLauncher {
  cudaStream_t stream;
  template <typename... KernelArgs, typename... Args>
  cudaError_t operator()(void (*kernel)(KernelArgs...), const LaunchDims& d, Args&&... args) const {
    if (d.smem_bytes > 48 * 1024) {
      const cudaError_t err =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(d.smem_bytes));
      if (err != cudaSuccess) return err;
    }
    kernel<<<dim3(d.grid_x, d.grid_y), d.block, d.smem_bytes, stream>>>(std::forward<Args>(args)...);
    return cudaGetLastError();
  }
};
#endif

}  // namespace ladder
}  // namespace cuda
}  // namespace creativity_fast
