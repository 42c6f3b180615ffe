// Launcher of the argmax attention kernel (patch_argmax_attention.cuh); see NOTES.md.
#include <cuda_runtime.h>

#include <cstdint>

#include "patch_argmax_attention.cuh"

namespace creativity_fast {
namespace cuda {

using detail::attention_kernel;

namespace {

template <typename T, int PHASE>
cudaError_t launch_phase(const AttentionParams<T>& p, int64_t nblocks, int64_t smem_bytes, cudaStream_t stream) {
  if (smem_bytes > 48 * 1024) {  // above the default limit: opt in (sm_80: 163 KiB, sm_90: 227 KiB)
    const cudaError_t err = cudaFuncSetAttribute(attention_kernel<T, PHASE>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem_bytes));
    if (err != cudaSuccess) return err;
  }
  attention_kernel<T, PHASE>
      <<<static_cast<unsigned>(nblocks), kAttnThreads, static_cast<size_t>(smem_bytes), stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_attention(const AttentionParams<T>& p, int phase, int64_t nblocks, int64_t smem_bytes,
                             cudaStream_t stream) {
  if (nblocks <= 0) return cudaSuccess;
  if (phase == 0) return launch_phase<T, 0>(p, nblocks, smem_bytes, stream);
  if (phase == 1) return launch_phase<T, 1>(p, nblocks, smem_bytes, stream);
  return launch_phase<T, 2>(p, nblocks, smem_bytes, stream);
}

template cudaError_t launch_attention<float>(const AttentionParams<float>&, int, int64_t, int64_t, cudaStream_t);
template cudaError_t launch_attention<double>(const AttentionParams<double>&, int, int64_t, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace creativity_fast
