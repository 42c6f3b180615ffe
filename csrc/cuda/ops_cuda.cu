// CUDA registrations of the creativity_fast operators (schemas in csrc/ops.cpp).
//
// The host flows live in ops_impl.cuh (checks: csrc/op_args.h and the CUDA limits; plan,
// buffers, precision policy); this file binds them to the CUDA launchers (patch_kernels.cu,
// paired_kernels.cu, ideal_kernels.cu, patch_argmax_attention.cu, whose instantiation ladder
// is launch_ladder.cuh), the device guard and the current stream, and registers them for the
// CUDA dispatch key.
//
// This translation unit is host code only; nvcc's device passes (__CUDA_ARCH__ defined) see
// an empty file, which roughly halves its compile time (the torch headers are parsed once).
#if !defined(__CUDA_ARCH__)

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common.cuh"
#include "ops_impl.cuh"

namespace creativity_fast {
namespace cuda {
namespace {


// Launch backend of ops_impl.cuh: the kernels on the current CUDA stream; every launch is
// checked (the launchers return cudaGetLastError() of the launch).
struct CudaLaunch {
  cudaStream_t stream;
  template <typename T>
  void patch_forward(const PatchParams<T>& p, int64_t nwork, bool tf32, int cmax) const {
    C10_CUDA_CHECK(launch_patch_forward<T>(p, nwork, tf32, cmax, stream));
  }
  template <typename T>
  void paired_forward(const PatchParams<T>& p, int64_t nwork, int cmax) const {
    C10_CUDA_CHECK(launch_paired_forward<T>(p, nwork, cmax, stream));
  }
  template <typename T>
  void patch_merge(const PatchParams<T>& p, T* x0, T* lse, int64_t* best) const {
    C10_CUDA_CHECK(launch_patch_merge<T>(p, x0, lse, best, stream));
  }
  template <typename T>
  void patch_backward(const PatchParams<T>& p, int64_t nwork, int cmax) const {
    C10_CUDA_CHECK(launch_patch_backward<T>(p, nwork, cmax, stream));
  }
  template <typename T>
  void patch_adjoint(const PatchParams<T>& p, T* grad_z) const {
    C10_CUDA_CHECK(launch_patch_adjoint<T>(p, grad_z, stream));
  }
  template <typename T>
  void ideal(const IdealParams<T>& p, int phase) const {
    C10_CUDA_CHECK(launch_ideal<T>(p, phase, stream));
  }
  template <typename T>
  void attention(const AttentionParams<T>& p, int phase, int64_t nblocks, int64_t smem_bytes) const {
    C10_CUDA_CHECK(launch_attention<T>(p, phase, nblocks, smem_bytes, stream));
  }
};

impl::DeviceInfo device_info(int device) {
  impl::DeviceInfo d{};
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return d;
}

// The dispatcher picks the CUDA kernel when any tensor argument is on a CUDA device; the
// shared checks (ops_impl.cuh) then reject mixed devices, and this one the case they
// cannot see (z itself on the CPU, with every other tensor on a GPU).
void check_on_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " is on ", t.device(),
              " but the other tensors are on a CUDA device; move them to one device");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_posterior_mean_cuda(
    const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma, int64_t P, c10::string_view mode,
    c10::string_view boundary, c10::string_view keys, const std::optional<at::Tensor>& key_logw,
    bool return_argmax) {
  const char* op = op_args::kPatchPosteriorMean;
  const impl::Options o = impl::parse_options(op, P, mode, boundary, keys);
  check_on_cuda(op, "z", z);
  const c10::cuda::CUDAGuard guard(z.device());
  const CudaLaunch launch{c10::cuda::getCurrentCUDAStream()};
  return impl::forward(launch, device_info(z.get_device()), z, data, sigma, o, key_logw, return_argmax);
}

at::Tensor patch_posterior_mean_backward_cuda(const at::Tensor& grad_x0, const at::Tensor& z, const at::Tensor& data,
                                              const at::Tensor& sigma, int64_t P, c10::string_view mode,
                                              c10::string_view boundary, c10::string_view keys,
                                              const std::optional<at::Tensor>& key_logw, const at::Tensor& x0_hat,
                                              const at::Tensor& lse) {
  const char* op = op_args::kPatchPosteriorMeanBackward;
  const impl::Options o = impl::parse_options(op, P, mode, boundary, keys);
  check_on_cuda(op, "z", z);
  const c10::cuda::CUDAGuard guard(z.device());
  const CudaLaunch launch{c10::cuda::getCurrentCUDAStream()};
  return impl::backward(launch, device_info(z.get_device()), grad_x0, z, data, sigma, o, key_logw, x0_hat, lse);
}

at::Tensor patch_posterior_mean_backward_lse_cuda(const at::Tensor& grad_x0, const at::Tensor& grad_lse,
                                                  const at::Tensor& z, const at::Tensor& data,
                                                  const at::Tensor& sigma, int64_t P, c10::string_view mode,
                                                  c10::string_view boundary, c10::string_view keys,
                                                  const std::optional<at::Tensor>& key_logw,
                                                  const at::Tensor& x0_hat, const at::Tensor& lse) {
  const char* op = op_args::kPatchPosteriorMeanBackwardLse;
  const impl::Options o = impl::parse_options(op, P, mode, boundary, keys);
  check_on_cuda(op, "z", z);
  const c10::cuda::CUDAGuard guard(z.device());
  const CudaLaunch launch{c10::cuda::getCurrentCUDAStream()};
  return impl::backward(launch, device_info(z.get_device()), grad_x0, z, data, sigma, o, key_logw, x0_hat, lse,
                        &grad_lse);
}

// No backward operator (as on the CPU): the autograd formula of creativity_fast/ops.py
// differentiates the reference twin, which runs on the GPU tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> paired_patch_posterior_mean_cuda(
    const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma, int64_t P, int64_t P2,
    const at::Tensor& query_partner, const at::Tensor& key_partner, double beta, c10::string_view boundary,
    c10::string_view keys, bool return_argmax) {
  check_on_cuda(op_args::kPairedPatchPosteriorMean, "z", z);
  const c10::cuda::CUDAGuard guard(z.device());
  const CudaLaunch launch{c10::cuda::getCurrentCUDAStream()};
  return impl::paired_forward(launch, device_info(z.get_device()), z, data, sigma, P, P2, query_partner, key_partner,
                              beta, boundary, keys, return_argmax);
}

std::tuple<at::Tensor, at::Tensor> patch_argmax_attention_cuda(const at::Tensor& images, const at::Tensor& center,
                                                               int64_t P, int64_t exclude, double tau) {
  check_on_cuda(op_args::kPatchArgmaxAttention, "images", images);
  const c10::cuda::CUDAGuard guard(images.device());
  const CudaLaunch launch{c10::cuda::getCurrentCUDAStream()};
  return impl::attention(launch, device_info(images.get_device()), images, center, P, exclude, tau);
}

}  // namespace
}  // namespace cuda
}  // namespace creativity_fast

// Every operator of csrc/ops.cpp has a CPU kernel; the CUDA dispatch key registers all of
// them but one:
TORCH_LIBRARY_IMPL(creativity_fast, CUDA, m) {
  m.impl("patch_posterior_mean", TORCH_FN(creativity_fast::cuda::patch_posterior_mean_cuda));
  m.impl("patch_posterior_mean_backward", TORCH_FN(creativity_fast::cuda::patch_posterior_mean_backward_cuda));
  m.impl("patch_posterior_mean_backward_lse",
         TORCH_FN(creativity_fast::cuda::patch_posterior_mean_backward_lse_cuda));
  m.impl("patch_argmax_attention", TORCH_FN(creativity_fast::cuda::patch_argmax_attention_cuda));
  m.impl("paired_patch_posterior_mean", TORCH_FN(creativity_fast::cuda::paired_patch_posterior_mean_cuda));
  // Not registered: masked_local_posterior (no CUDA kernel). A direct
  // torch.ops.creativity_fast.masked_local_posterior call on CUDA tensors raises torch's
  // "could not run ... with arguments from the 'CUDA' backend" NotImplementedError;
  // creativity_fast.ops.masked_local_posterior (backend="auto") checks ops.has_kernel and
  // runs the pure-torch masked_local_posterior_reference on the GPU instead
  // (backend="kernel" raises ValueError).
}

#endif  // !defined(__CUDA_ARCH__)
