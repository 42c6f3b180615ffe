// The torch-facing setup of the CPU patch kernels, shared by the operators of
// patch_posterior.cpp (patch_posterior_mean and its backward) and
// paired_patch_posterior.cpp (paired_patch_posterior_mean): the per-axis tables of
// dictionary.h, the work units, the instruction-set choice and the parallel loop. Defined
// in patch_posterior.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/ppm_api.h"
#include "op_args.h"

namespace creativity_fast {
namespace cpu {

// Owns the arrays an AxisTables points into.
struct AxisStore {
  std::vector<int> weight, disp, keypos, hull_lo, hull_hi;
  std::vector<uint8_t> valid, hull_full;
  AxisTables t{};
};

struct Setup {
  PpmProblem pb{};
  AxisStore rows, cols;
  std::vector<double> sigma;
  int64_t units = 0;
};

// Fills S for a call whose arguments passed op_args.h's checks; `op` names the operator in
// error messages.
void setup(Setup& S, const char* op, const at::Tensor& z, const at::Tensor& data, const at::Tensor& sigma,
           const op_args::PatchOptions& o, const std::optional<at::Tensor>& key_logw);

// The kernels of the instruction set chosen by CREATIVITY_FAST_CPU_ISA (default: the widest this CPU has).
const IsaKernels& select_isa();

// fn(pb, u) for every work unit u, in parallel on torch's thread pool.
void run_units(int64_t units, const PpmProblem& pb, UnitFn fn);

// The forward of a set-up call: allocates (x0 [B,C,H,W], lse [B,H,W], best key [B,H,W] or
// [0]), points S.pb at them and at z, data and key_logw (contiguous, alive for the call),
// and runs the chosen instruction set's forward over every work unit.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(Setup& S, const at::Tensor& z, const at::Tensor& data,
                                                           const std::optional<at::Tensor>& key_logw,
                                                           bool return_argmax);

}  // namespace cpu
}  // namespace creativity_fast
