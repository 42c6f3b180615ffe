// The C++ argument layer of the creativity_fast operators: string options -> the enums of
// dictionary.h, and the input checks every backend runs before any kernel. Used by the CPU
// operators (cpu/patch_posterior.cpp, cpu/patch_argmax_attention.cpp,
// cpu/masked_local_posterior.cpp) and the CUDA operators (cuda/ops_impl.cuh, which also
// drives the CPU emulator of the CUDA kernels), so every backend accepts and rejects the
// same inputs with the same message. Host code only: no device code, no kernel code.
//
// The rules are those of the Python layer (creativity_fast/_validate.py: check_operator_args,
// check_attention_args, check_masked_args), which runs first and raises
// ValueError/TypeError; these checks guard direct torch.ops callers. They raise through
// TORCH_CHECK (RuntimeError in Python), as the C++ operators always have: the Python layer
// normalises arguments (dtype conversions, scalar sigma) before calling an operator, so a
// C++ error means a direct caller broke the operator contract, and callers and tests of
// torch.ops.creativity_fast.* already catch RuntimeError.
//
// Messages are one line: "<operator>: <argument> <what was expected>; got <what was got>",
// worded as in the Python layer where it has the same check. Stricter than Python in one
// respect: the operators take every floating tensor in z's dtype (Python converts data,
// sigma and key_logw first). Values are not inspected (NaN, sigma > 0): that would cost a
// device synchronisation on CUDA; the Python layer checks them.
//
// Backend-specific capability limits (index widths, CUDA channel and batch limits) are not
// here: each backend checks its own beside its kernels, after these checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dictionary.h"

namespace creativity_fast {
namespace op_args {

// Operator names, the prefix of every message.
constexpr const char* kPatchPosteriorMean = "patch_posterior_mean";
constexpr const char* kPatchPosteriorMeanBackward = "patch_posterior_mean_backward";
constexpr const char* kPatchPosteriorMeanBackwardLse = "patch_posterior_mean_backward_lse";
constexpr const char* kPatchArgmaxAttention = "patch_argmax_attention";
constexpr const char* kMaskedLocalPosterior = "masked_local_posterior";
constexpr const char* kPairedPatchPosteriorMean = "paired_patch_posterior_mean";

// The largest patch size the kernels accept (their index arithmetic is 32-bit).
constexpr int64_t kMaxPatchSize = (int64_t(1) << 20) - 1;

// torch's Python names of the dtypes ("float32"), as the Python layer prints them.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

// ---------------------------------------------------------------------------------------
// Options

inline Mode parse_mode(const char* op, c10::string_view s) {
  if (s == "ideal") return Mode::Ideal;
  if (s == "local") return Mode::Local;
  if (s == "els") return Mode::Els;
  TORCH_CHECK(false, op, ": mode must be one of 'ideal', 'local', 'els'; got '", std::string(s), "'");
}

inline Boundary parse_boundary(const char* op, c10::string_view s) {
  if (s == "zeros") return Boundary::Zeros;
  if (s == "circular") return Boundary::Circular;
  TORCH_CHECK(false, op, ": boundary must be one of 'zeros', 'circular'; got '", std::string(s), "'");
}

inline Keys parse_keys(const char* op, c10::string_view s) {
  if (s == "all") return Keys::All;
  if (s == "valid") return Keys::Valid;
  TORCH_CHECK(false, op, ": keys must be one of 'all', 'valid'; got '", std::string(s), "'");
}

// P: an odd positive int (patch size 2m+1), at most kMaxPatchSize.
inline int check_patch_size(const char* op, int64_t P) {
  TORCH_CHECK(P > 0 && P % 2 == 1, op, ": P must be an odd positive int (patch size 2m+1); got ", P);
  TORCH_CHECK(P <= kMaxPatchSize, op, ": P must be <= ", kMaxPatchSize, " (a limit of the C++ kernels); got ", P);
  return static_cast<int>(P);
}

inline const char* mode_name(Mode m) { return m == Mode::Ideal ? "ideal" : m == Mode::Local ? "local" : "els"; }
inline const char* boundary_name(Boundary b) { return b == Boundary::Zeros ? "zeros" : "circular"; }

// The options of the patch_posterior_mean family, parsed (no tensor needed yet).
struct PatchOptions {
  Mode mode;
  Boundary boundary;
  Keys keys;
  int P;
};

inline PatchOptions parse_patch_options(const char* op, int64_t P, c10::string_view mode, c10::string_view boundary,
                                        c10::string_view keys) {
  PatchOptions o{};
  o.mode = parse_mode(op, mode);
  o.boundary = parse_boundary(op, boundary);
  o.keys = parse_keys(op, keys);
  o.P = check_patch_size(op, P);
  return o;
}

// ---------------------------------------------------------------------------------------
// Tensor checks

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64; got ", dtype_name(t.scalar_type()));
}

// `t` has `like`'s dtype (named like_name).
inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                             const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have ", like_name, "'s dtype (",
              dtype_name(like.scalar_type()), "); got ", dtype_name(t.scalar_type()));
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                              const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but ", like_name, " is on ",
              like.device());
}

// Images [lead, C, H, W] (lead_name "B", "N" or "M") of float32/float64 with non-empty C, H, W.
inline void check_images(const char* op, const char* name, const at::Tensor& t, const char* lead_name) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must have shape [", lead_name, ", C, H, W]; got ", t.sizes());
  check_floating(op, name, t);
  TORCH_CHECK(t.size(1) > 0 && t.size(2) > 0 && t.size(3) > 0, op, ": ", name,
              " has an empty channel or spatial axis: shape ", t.sizes());
}

// sigma: a [B] tensor of z's dtype on z's device (values are not inspected).
inline void check_sigma(const char* op, const at::Tensor& sigma, const at::Tensor& z) {
  check_same_device(op, "sigma", sigma, "z", z);
  TORCH_CHECK(sigma.dim() == 1 && sigma.size(0) == z.size(0), op, ": sigma must be a [B] tensor with B=", z.size(0),
              "; got shape ", sigma.sizes());
  check_same_dtype(op, "sigma", sigma, "z", z);
}

// z [B, C, H, W], data [N, C, H, W], sigma [B], key_logw [N] (ideal) or [N, H, W], and the
// options' rules that need the image size (keys='valid').
inline void check_patch_inputs(const char* op, const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma,
                               const std::optional<at::Tensor>& key_logw, const PatchOptions& o) {
  check_images(op, "z", z, "B");
  TORCH_CHECK(data.dim() == 4, op, ": data must have shape [N, C, H, W]; got ", data.sizes());
  TORCH_CHECK(data.size(0) > 0, op, ": data is empty (shape ", data.sizes(), "): need at least one image");
  check_same_device(op, "data", data, "z", z);
  check_same_dtype(op, "data", data, "z", z);
  TORCH_CHECK(data.size(1) == z.size(1) && data.size(2) == z.size(2) && data.size(3) == z.size(3), op,
              ": data images [N, C, H, W] = ", data.sizes(), " do not match z [B, C, H, W] = ", z.sizes(),
              " in C, H or W");
  if (o.keys == Keys::Valid) {
    TORCH_CHECK(o.mode == Mode::Els && o.boundary == Boundary::Circular, op,
                ": keys='valid' applies only to mode='els' with boundary='circular'; got mode='", mode_name(o.mode),
                "', boundary='", boundary_name(o.boundary), "'");
    TORCH_CHECK(o.P <= z.size(2) && o.P <= z.size(3), op,
                ": keys='valid' needs P <= H and P <= W (a patch that does not wrap); got P=", o.P, " for ",
                z.size(2), "x", z.size(3), " images");
  }
  check_sigma(op, sigma, z);
  if (key_logw.has_value()) {
    const at::Tensor& w = *key_logw;
    check_same_device(op, "key_logw", w, "data", data);
    check_same_dtype(op, "key_logw", w, "z", z);
    std::vector<int64_t> expected{data.size(0)};
    if (o.mode != Mode::Ideal) {
      expected.push_back(z.size(2));
      expected.push_back(z.size(3));
    }
    TORCH_CHECK(w.sizes() == c10::IntArrayRef(expected), op, ": key_logw must have shape ",
                c10::IntArrayRef(expected), " for mode='", mode_name(o.mode), "'; got ", w.sizes());
  }
}

// The extra inputs of the backward operators (after check_patch_inputs): grad_x0 and
// x0_hat [B, C, H, W], lse [B, H, W] and grad_lse (nullptr: none) [B, H, W], all of z's
// dtype on z's device.
inline void check_patch_backward_inputs(const char* op, const at::Tensor& z, const at::Tensor& grad_x0,
                                        const at::Tensor& x0_hat, const at::Tensor& lse, const at::Tensor* grad_lse) {
  const std::vector<int64_t> lse_shape{z.size(0), z.size(2), z.size(3)};
  const auto check = [&](const char* name, const at::Tensor& t, c10::IntArrayRef shape, const char* shape_name) {
    check_same_device(op, name, t, "z", z);
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape_name, " = ", shape, "; got ",
                t.sizes());
    check_same_dtype(op, name, t, "z", z);
  };
  check("grad_x0", grad_x0, z.sizes(), "[B, C, H, W]");
  if (grad_lse != nullptr) check("grad_lse", *grad_lse, lse_shape, "[B, H, W]");
  check("x0_hat", x0_hat, z.sizes(), "[B, C, H, W]");
  check("lse", lse, lse_shape, "[B, H, W]");
}

// paired_patch_posterior_mean, after check_patch_inputs (mode 'els', no key_logw): P2 odd,
// beta finite and >= 0, query_partner [B, H, W] and key_partner [N, H, W] int64 on z's
// device. Returns P2 as an int. Entries: check_partner_values (host pointers).
inline int check_paired_inputs(const char* op, const at::Tensor& z, const at::Tensor& data, int64_t P2, double beta,
                               const at::Tensor& query_partner, const at::Tensor& key_partner) {
  TORCH_CHECK(P2 > 0 && P2 % 2 == 1, op, ": P2 must be an odd positive int (partner window size); got ", P2);
  TORCH_CHECK(P2 <= kMaxPatchSize, op, ": P2 must be <= ", kMaxPatchSize, " (a limit of the C++ kernels); got ", P2);
  TORCH_CHECK(std::isfinite(beta) && beta >= 0, op, ": beta must be a finite float >= 0; got ", beta);
  const std::pair<const char*, const at::Tensor*> maps[] = {{"query_partner", &query_partner},
                                                            {"key_partner", &key_partner}};
  const int64_t lead[] = {z.size(0), data.size(0)};
  for (int i = 0; i < 2; ++i) {
    const char* name = maps[i].first;
    const at::Tensor& t = *maps[i].second;
    check_same_device(op, name, t, "z", z);
    TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name,
                " must be an int64 tensor of flat locations (row * W + col); got ", dtype_name(t.scalar_type()));
    const std::vector<int64_t> expected{lead[i], z.size(2), z.size(3)};
    TORCH_CHECK(t.sizes() == c10::IntArrayRef(expected), op, ": ", name, " must have shape ",
                c10::IntArrayRef(expected), "; got ", t.sizes());
  }
  return static_cast<int>(P2);
}

// A partner map's entries (host pointer, n entries): flat locations in [0, HW) or -1 (none).
inline void check_partner_values(const char* op, const char* name, const int64_t* p, int64_t n, int64_t HW) {
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(p[i] >= -1 && p[i] < HW, op, ": ", name, " entries must be flat locations in [0, H*W) = [0, ", HW,
                ") or -1 (no partner); got ", p[i], " at ", i);
}

// patch_argmax_attention: images [M, C, H, W] float32/float64, P odd, exclude >= 0,
// center [C, P, P] on the images' device (any dtype: the kernels read it as float64).
// Returns P as an int.
inline int check_attention_inputs(const char* op, const at::Tensor& images, const at::Tensor& center, int64_t P,
                                  int64_t exclude) {
  check_images(op, "images", images, "M");
  const int p = check_patch_size(op, P);
  TORCH_CHECK(exclude >= 0, op, ": exclude must be a non-negative int (Chebyshev radius); got ", exclude);
  const std::vector<int64_t> expected{images.size(1), P, P};
  TORCH_CHECK(center.sizes() == c10::IntArrayRef(expected), op, ": center must have shape [C, P, P] = ",
              c10::IntArrayRef(expected), "; got ", center.sizes());
  check_same_device(op, "center", center, "images", images);
  return p;
}

// masked_local_posterior, tensor metadata: z [B, C, U] float32/float64, data [N, C, U]
// (N > 0), sigma [B], key_weight [nnz_key] of z's dtype; key_ptr, out_ptr [Q+1] and
// key_index, out_index 1-D int64; all on z's device. The CSR contents: check_masked_csr.
inline void check_masked_inputs(const char* op, const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma,
                                const at::Tensor& key_ptr, const at::Tensor& key_index, const at::Tensor& key_weight,
                                const at::Tensor& out_ptr, const at::Tensor& out_index) {
  TORCH_CHECK(z.dim() == 3, op, ": z must have shape [B, C, U]; got ", z.sizes());
  check_floating(op, "z", z);
  TORCH_CHECK(data.dim() == 3, op, ": data must have shape [N, C, U]; got ", data.sizes());
  TORCH_CHECK(data.size(0) > 0, op, ": data is empty (shape ", data.sizes(), "): need at least one training image");
  check_same_device(op, "data", data, "z", z);
  check_same_dtype(op, "data", data, "z", z);
  TORCH_CHECK(data.size(1) == z.size(1) && data.size(2) == z.size(2), op, ": data [N, C, U] = ", data.sizes(),
              " does not match z [B, C, U] = ", z.sizes());
  check_sigma(op, sigma, z);
  const std::pair<const char*, const at::Tensor*> index[] = {
      {"key_ptr", &key_ptr}, {"key_index", &key_index}, {"out_ptr", &out_ptr}, {"out_index", &out_index}};
  for (const auto& it : index) {
    check_same_device(op, it.first, *it.second, "z", z);
    TORCH_CHECK(it.second->dim() == 1 && it.second->scalar_type() == at::kLong, op, ": ", it.first,
                " must be a 1-D int64 tensor; got shape ", it.second->sizes(), " of dtype ",
                dtype_name(it.second->scalar_type()));
  }
  TORCH_CHECK(key_ptr.size(0) >= 1 && key_ptr.size(0) == out_ptr.size(0), op,
              ": key_ptr and out_ptr must both have Q+1 >= 1 entries; got ", key_ptr.size(0), " and ",
              out_ptr.size(0));
  check_same_device(op, "key_weight", key_weight, "z", z);
  TORCH_CHECK(key_weight.dim() == 1 && key_weight.size(0) == key_index.size(0), op,
              ": key_weight must have one weight per key index ([", key_index.size(0), "]); got shape ",
              key_weight.sizes());
  check_same_dtype(op, "key_weight", key_weight, "z", z);
}

// masked_local_posterior, CSR contents (host pointers): ptr[0] = 0, non-decreasing,
// ptr[Q] = len(index); indices in [0, U).
inline void check_masked_csr(const char* op, const char* name, const int64_t* ptr, int64_t Q, const int64_t* index,
                             int64_t nnz, int64_t U) {
  bool rises = ptr[0] == 0 && ptr[Q] == nnz;
  for (int64_t q = 0; q < Q && rises; ++q) rises = ptr[q + 1] >= ptr[q];
  TORCH_CHECK(rises, op, ": ", name, "_ptr must rise from 0 to len(", name, "_index) = ", nnz,
              " without decreasing; got first ", ptr[0], ", last ", ptr[Q]);
  for (int64_t k = 0; k < nnz; ++k)
    TORCH_CHECK(index[k] >= 0 && index[k] < U, op, ": ", name, "_index must lie in [0, U) = [0, ", U, "); got ",
                index[k], " at ", k);
}

}  // namespace op_args
}  // namespace creativity_fast
