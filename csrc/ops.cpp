// Operator schemas of creativity_fast: the one place where signatures are defined.
// Per-backend implementations live in cpu/*.cpp (CPU dispatch key) and cuda/*.cu
// (CUDA dispatch key); fake (meta) and autograd registrations are in
// creativity_fast/ops.py beside the typed Python wrappers.
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
  // SPEC 4. z [B,C,H,W], data [N,C,H,W], sigma [B], key_logw [N] (ideal) or [N,H,W].
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
}
