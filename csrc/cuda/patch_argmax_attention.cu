// Launcher of the argmax attention kernel (patch_argmax_attention.cuh); see NOTES.md. The
// instantiation chosen per launch, and the opt-in to more than 48 KiB of dynamic shared
// memory, are launch_ladder.cuh's (the instantiation ladder is shared with the CPU emulator).
#include <cuda_runtime.h>

#include <cstdint>

#include "launch_ladder.cuh"
#include "patch_argmax_attention.cuh"

namespace creativity_fast {
namespace cuda {

template <typename T>
cudaError_t launch_attention(const AttentionParams<T>& p, int phase, int64_t nblocks, int64_t smem_bytes,
                             cudaStream_t stream) {
  return ladder::attention<T>(ladder::StreamLauncher{stream}, p, phase, nblocks, smem_bytes);
}

template cudaError_t launch_attention<float>(const AttentionParams<float>&, int, int64_t, int64_t, cudaStream_t);
template cudaError_t launch_attention<double>(const AttentionParams<double>&, int, int64_t, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace creativity_fast
