// Launcher of the ideal-machine kernel (ideal_kernels.cuh). The instantiation chosen per
// launch is launch_ladder.cuh's, shared with the CPU emulator.
#include <cuda_runtime.h>

#include "ideal_kernels.cuh"
#include "launch_ladder.cuh"

namespace creativity_fast {
namespace cuda {

template <typename T>
cudaError_t launch_ideal(const IdealParams<T>& p, int phase, cudaStream_t stream) {
  return ladder::ideal<T>(ladder::StreamLauncher{stream}, p, phase);
}

template cudaError_t launch_ideal<float>(const IdealParams<float>&, int, cudaStream_t);
template cudaError_t launch_ideal<double>(const IdealParams<double>&, int, cudaStream_t);

}  // namespace cuda
}  // namespace creativity_fast
