// Schema of the dataset-wide argmax attention operator (SPEC 3.4, 4), a fragment of the
// creativity_fast library defined in ops.cpp. CPU kernel: cpu/patch_argmax_attention.cpp;
// fake (shape) function and the typed wrapper: creativity_fast/attention.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(creativity_fast, m) {
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
}
