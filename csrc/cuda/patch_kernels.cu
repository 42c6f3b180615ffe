// Launchers of the patch kernels (patch_kernels.cuh); see NOTES.md for the design.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "patch_kernels.cuh"

namespace creativity_fast {
namespace cuda {

using detail::adjoint_kernel;
using detail::backward_kernel;
using detail::forward_kernel;
using detail::merge_kernel;


template <typename T>
cudaError_t launch_patch_forward(const PatchParams<T>& p, int64_t nwork, bool tf32, int cmax, cudaStream_t stream) {
  if (nwork <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(nwork)), block(kThreads);
  if constexpr (std::is_same<T, float>::value) {
    if (tf32) {
      if (cmax == 1)
        forward_kernel<float, 1, true><<<grid, block, 0, stream>>>(p);
      else
        forward_kernel<float, 4, true><<<grid, block, 0, stream>>>(p);
      return cudaGetLastError();
    }
  }
  if (cmax == 1)
    forward_kernel<T, 1, false><<<grid, block, 0, stream>>>(p);
  else
    forward_kernel<T, 4, false><<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_patch_merge(const PatchParams<T>& p, T* x0, T* lse, int64_t* best, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(p.B) * p.H * p.W;
  if (n == 0) return cudaSuccess;
  merge_kernel<T><<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(p, x0, lse, best);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_patch_backward(const PatchParams<T>& p, int64_t nwork, int cmax, cudaStream_t stream) {
  if (nwork <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(nwork)), block(kThreads);
  if (cmax == 1)
    backward_kernel<T, 1><<<grid, block, 0, stream>>>(p);
  else
    backward_kernel<T, 4><<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_patch_adjoint(const PatchParams<T>& p, T* grad_z, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(p.B) * p.C * p.H * p.W;
  if (n == 0) return cudaSuccess;
  adjoint_kernel<T><<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(p, grad_z);
  return cudaGetLastError();
}

template cudaError_t launch_patch_forward<float>(const PatchParams<float>&, int64_t, bool, int, cudaStream_t);
template cudaError_t launch_patch_forward<double>(const PatchParams<double>&, int64_t, bool, int, cudaStream_t);
template cudaError_t launch_patch_merge<float>(const PatchParams<float>&, float*, float*, int64_t*, cudaStream_t);
template cudaError_t launch_patch_merge<double>(const PatchParams<double>&, double*, double*, int64_t*, cudaStream_t);
template cudaError_t launch_patch_backward<float>(const PatchParams<float>&, int64_t, int, cudaStream_t);
template cudaError_t launch_patch_backward<double>(const PatchParams<double>&, int64_t, int, cudaStream_t);
template cudaError_t launch_patch_adjoint<float>(const PatchParams<float>&, float*, cudaStream_t);
template cudaError_t launch_patch_adjoint<double>(const PatchParams<double>&, double*, cudaStream_t);

}  // namespace cuda
}  // namespace creativity_fast
