// CPU implementation of creativity_fast::paired_patch_posterior_mean, the paired-patch
// machine of docs/theory.md §3.7 (schema in csrc/ops.cpp; fake and autograd registrations
// in creativity_fast/ops.py, its twin in creativity_fast/reference.py).
//
// The machine is ELS with one more term in every logit, so this operator is the ELS
// forward kernel of ppm_kernel.h run with PpmProblem::paired set: the same tables, work
// units, instruction-set builds and online softmax (ppm_setup.h), plus the partner
// windows and their distance of ppm_paired.h. beta = 0 runs the ELS kernel itself (the
// partner term is not formed), so it equals patch_posterior_mean(mode="els") bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/ppm_api.h"
#include "cpu/ppm_setup.h"
#include "op_args.h"

namespace creativity_fast {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> paired_patch_posterior_mean_cpu(
    const at::Tensor& z_in, const at::Tensor& data_in, const at::Tensor& sigma, int64_t P, int64_t P2,
    const at::Tensor& query_partner_in, const at::Tensor& key_partner_in, double beta, c10::string_view boundary,
    c10::string_view keys, bool return_argmax) {
  const char* op = op_args::kPairedPatchPosteriorMean;
  const op_args::PatchOptions o = op_args::parse_patch_options(op, P, "els", boundary, keys);
  const std::optional<at::Tensor> no_logw;
  op_args::check_patch_inputs(op, z_in, data_in, sigma, no_logw, o);
  const int p2 = op_args::check_paired_inputs(op, z_in, data_in, P2, beta, query_partner_in, key_partner_in);
  const at::Tensor z = z_in.contiguous();
  const at::Tensor data = data_in.contiguous();
  const at::Tensor query_partner = query_partner_in.contiguous();
  const at::Tensor key_partner = key_partner_in.contiguous();
  const int64_t HW = z.size(2) * z.size(3);
  // The kernel indexes with the partners: out-of-range entries would read outside the images.
  op_args::check_partner_values(op, "query_partner", query_partner.data_ptr<int64_t>(), query_partner.numel(), HW);
  op_args::check_partner_values(op, "key_partner", key_partner.data_ptr<int64_t>(), key_partner.numel(), HW);
  Setup S;
  setup(S, op, z, data, sigma, o, no_logw);
  PpmProblem& pb = S.pb;
  pb.paired = beta != 0;
  pb.P2 = p2;
  pb.beta = beta;
  pb.qpartner = query_partner.data_ptr<int64_t>();
  pb.kpartner = key_partner.data_ptr<int64_t>();
  return run_forward(S, z, data, no_logw, return_argmax);
}

}  // namespace
}  // namespace cpu
}  // namespace creativity_fast

TORCH_LIBRARY_IMPL(creativity_fast, CPU, m) {
  m.impl("paired_patch_posterior_mean", &creativity_fast::cpu::paired_patch_posterior_mean_cpu);
}
