// avx512 build of the patch_posterior_mean CPU kernels (see ppm_kernel.h, ppm_api.h).
// Every header is included before the target pragma, so only this file's own code
// (in its own namespace, nothing shared with the other builds) uses the wider ISA.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <type_traits>

#include "cpu/ppm_api.h"
#include "dictionary.h"

#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in avx512fintrin.h
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,popcnt,f16c")
#define CF_ISA_LEVEL 2

namespace creativity_fast {
namespace cpu {
namespace isa_avx512 {
#include "cpu/ppm_kernel.h"
}  // namespace isa_avx512

const IsaKernels kKernelsAvx512 = {"avx512", &isa_avx512::forward_entry<float>, &isa_avx512::forward_entry<double>,
                              &isa_avx512::backward_entry<float>, &isa_avx512::backward_entry<double>};
}  // namespace cpu
}  // namespace creativity_fast

#undef CF_ISA_LEVEL
#pragma GCC pop_options
