// Launchers of the patch kernels (patch_kernels.cuh); see NOTES.md for the design. The
// instantiation chosen per launch is launch_ladder.cuh's, shared with the CPU emulator.
#include <cuda_runtime.h>

#include <cstdint>

#include "launch_ladder.cuh"
#include "patch_kernels.cuh"

namespace creativity_fast {
namespace cuda {

template <typename T>
cudaError_t launch_patch_forward(const PatchParams<T>& p, int64_t nwork, bool tf32, int cmax, cudaStream_t stream) {
  return ladder::patch_forward<T>(ladder::StreamLauncher{stream}, p, nwork, tf32, cmax);
}

template <typename T>
cudaError_t launch_patch_merge(const PatchParams<T>& p, T* x0, T* lse, int64_t* best, cudaStream_t stream) {
  return ladder::patch_merge<T>(ladder::StreamLauncher{stream}, p, x0, lse, best);
}

template <typename T>
cudaError_t launch_patch_backward(const PatchParams<T>& p, int64_t nwork, int cmax, cudaStream_t stream) {
  return ladder::patch_backward<T>(ladder::StreamLauncher{stream}, p, nwork, cmax);
}

template <typename T>
cudaError_t launch_patch_adjoint(const PatchParams<T>& p, T* grad_z, cudaStream_t stream) {
  return ladder::patch_adjoint<T>(ladder::StreamLauncher{stream}, p, grad_z);
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
