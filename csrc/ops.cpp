// Operator schemas of creativity_fast: the one place where every signature is defined.
// Per-backend implementations live in cpu/*.cpp (CPU dispatch key) and cuda/*.cu
// (CUDA dispatch key), with their argument checks in op_args.h; the typed Python wrappers,
// the fake (meta) and the autograd registrations of every operator are in
// creativity_fast/ops.py, the pure-PyTorch twins in creativity_fast/reference.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing creativity_fast._C runs the static TORCH_LIBRARY registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(creativity_fast, m) {
  // docs/theory.md §4. z [B,C,H,W], data [N,C,H,W], sigma [B], key_logw [N] (ideal) or [N,H,W].
  // Returns x0_hat [B,C,H,W], lse [B,H,W] and best_key [B,H,W] int64 (mu*H*W + y;
  // an empty tensor unless return_argmax).
  m.def(
      "patch_posterior_mean(Tensor z, Tensor data, Tensor sigma, int P, str mode, str boundary, "
      "str keys, Tensor? key_logw, bool return_argmax) -> (Tensor, Tensor, Tensor)");
  // Gradient with respect to z: a second streaming pass that reuses lse.
  m.def(
      "patch_posterior_mean_backward(Tensor grad_x0, Tensor z, Tensor data, Tensor sigma, int P, "
      "str mode, str boundary, str keys, Tensor? key_logw, Tensor x0_hat, Tensor lse) -> Tensor");
  // Gradient with respect to z of <grad_x0, x0_hat> + <grad_lse, lse> (the same pass; the
  // log-normaliser term adds grad_lse to every key's score). Used by the autograd formula
  // where a backend implements it, so that lse is differentiable too.
  m.def(
      "patch_posterior_mean_backward_lse(Tensor grad_x0, Tensor grad_lse, Tensor z, Tensor data, "
      "Tensor sigma, int P, str mode, str boundary, str keys, Tensor? key_logw, Tensor x0_hat, "
      "Tensor lse) -> Tensor");

  // Dataset-wide argmax attention (docs/theory.md §3.4, §4). CPU kernel:
  // cpu/patch_argmax_attention.cpp; CUDA kernel: cuda/patch_argmax_attention.cu; fake (shape)
  // function and the typed wrapper: creativity_fast/ops.py.
  // images [M,C,H,W] (float32/float64), center [C,P,P] (same dtype): the patch embedding is
  // e(Pi_x) = Pi_x - center with zero-extended P x P patches. For each image and pixel x,
  // y*(x) = argmax_y <e(Pi_x), e(Pi_y)> over y with max(|dr|, |dc|) >= exclude, lowest flat
  // index y = r*W + c on ties, -1 when no y is admissible.
  // Returns (y_star [M,H,W] int64, in_degree [M,H,W] images.dtype). With tau <= 0 the
  // in-degree counts #{x : y*(x) = y}; with tau > 0 it is the column sum of the row
  // softmax of <e_x, e_y> / tau over the admissible y (soft attention).
  m.def(
      "patch_argmax_attention(Tensor images, Tensor center, int P, int exclude, float tau) "
      "-> (Tensor, Tensor)");

  // Paired-patch machine (PELS, docs/theory.md §3.7). CPU kernel: cpu/paired_patch_posterior.cpp
  // (the ELS kernel of cpu/ppm_*.h with the partner term of cpu/ppm_paired.h).
  // z [B,C,H,W], data [N,C,H,W], sigma [B] (z's dtype); query_partner [B,H,W] and key_partner
  // [N,H,W] int64 flat locations (-1: no partner, the zero window). Over the ELS-admissible
  // keys (mu, u) of pixel x, logit = -(|Pi_x z - Pi_u phi^mu|^2
  // + beta |Pi2_{query_partner(x)} z - Pi2_{key_partner(mu,u)} phi^mu|^2) / (2 sigma^2), with
  // P2 x P2 partner windows read zero-extended or periodic as `boundary`.
  // Returns x0_hat [B,C,H,W], lse [B,H,W], best_key [B,H,W] (empty unless return_argmax), as
  // patch_posterior_mean. No backward operator: the autograd formula (creativity_fast/ops.py)
  // recomputes through the reference twin.
  m.def(
      "paired_patch_posterior_mean(Tensor z, Tensor data, Tensor sigma, int P, int P2, Tensor query_partner, "
      "Tensor key_partner, float beta, str boundary, str keys, bool return_argmax) -> (Tensor, Tensor, Tensor)");

  // Masked-local posterior mean of the peer machines (docs/theory.md §3.6), the reduction
  // shared by `pca_locality` and `pspc` (machines in creativity_fast/peers.py). CPU kernel:
  // cpu/masked_local_posterior.cpp. Streamed over training images with an exact running
  // log-sum-exp per (sample, query unit).
  //   z [B, C, U] queries, data [N, C, U] training images (U "units": pixels, or
  //   channel-pixels when C = 1), sigma [B] (> 0; a temperature is folded in by the caller).
  //   Query unit q (0 <= q < Q) compares z and each training image on its *key support*
  //   key_index[key_ptr[q] : key_ptr[q+1]] with weights key_weight (same slice):
  //     logit_i(b, q) = -sum_k key_weight[k] * sum_c (z[b,c,n_k] - data[i,c,n_k])^2 / (2 sigma_b^2),
  //   and returns the posterior mean of the training values on its *output support*
  //   out_index[out_ptr[q] : out_ptr[q+1]].
  // Returns mean [B, C, nnz_out] (entry j belongs to the unit whose out slice holds j)
  // and lse [B, Q] = log sum_i exp(logit_i).
  // pca_locality: one unit per output pixel, key support = the thresholded Wiener mask
  // column, output support = the pixel itself. pspc: one unit per P x P crop, key and
  // output support = the crop.
  m.def(
      "masked_local_posterior(Tensor z, Tensor data, Tensor sigma, Tensor key_ptr, Tensor key_index, "
      "Tensor key_weight, Tensor out_ptr, Tensor out_index) -> (Tensor, Tensor)");
}
