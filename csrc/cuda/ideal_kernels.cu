// Launcher of the ideal-machine kernel (ideal_kernels.cuh).
#include <cuda_runtime.h>

#include "ideal_kernels.cuh"

namespace creativity_fast {
namespace cuda {

using detail::ideal_kernel;

template <typename T>
cudaError_t launch_ideal(const IdealParams<T>& p, int phase, cudaStream_t stream) {
  if (p.B == 0 || p.nsplit == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.nsplit), static_cast<unsigned>(p.B)), block(kThreads);
  if (phase == 0)
    ideal_kernel<T, 0><<<grid, block, 0, stream>>>(p);
  else if (phase == 1)
    ideal_kernel<T, 1><<<grid, block, 0, stream>>>(p);
  else
    ideal_kernel<T, 2><<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_ideal<float>(const IdealParams<float>&, int, cudaStream_t);
template cudaError_t launch_ideal<double>(const IdealParams<double>&, int, cudaStream_t);

}  // namespace cuda
}  // namespace creativity_fast
