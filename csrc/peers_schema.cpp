// Operator schemas of the peer machines (SPEC 3.6): the masked-local posterior
// reduction shared by `pca_locality` and `pspc` (creativity_fast/peers.py).
// Kept apart from csrc/ops.cpp so the patch operator family's schema file stays
// untouched; TORCH_LIBRARY_FRAGMENT adds to the same `creativity_fast` namespace.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(creativity_fast, m) {
  // Masked-local posterior mean, streamed over training images with an exact running
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
