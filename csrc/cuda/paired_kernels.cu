// Launcher of the paired-patch machine's forward (docs/theory.md §3.7): forward_kernel of
// patch_kernels.cuh with PAIRED (the partner term of partner_tile added to every patch
// distance), then the ELS merge_kernel (launch_patch_merge, patch_kernels.cu). Its own
// translation unit so the ELS kernels' compile time is unchanged; the instantiation is
// launch_ladder.cuh's, shared with the CPU emulator. See NOTES.md, "Paired-patch machine".
#include <cuda_runtime.h>

#include <cstdint>

#include "launch_ladder.cuh"
#include "patch_kernels.cuh"

namespace creativity_fast {
namespace cuda {

template <typename T>
cudaError_t launch_paired_forward(const PatchParams<T>& p, int64_t nwork, int cmax, cudaStream_t stream) {
  return ladder::paired_forward<T>(ladder::StreamLauncher{stream}, p, nwork, cmax);
}

template cudaError_t launch_paired_forward<float>(const PatchParams<float>&, int64_t, int, cudaStream_t);
template cudaError_t launch_paired_forward<double>(const PatchParams<double>&, int64_t, int, cudaStream_t);

}  // namespace cuda
}  // namespace creativity_fast
