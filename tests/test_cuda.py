"""CUDA kernels of ``patch_posterior_mean`` and ``patch_argmax_attention`` against the pure-PyTorch
references and the CPU kernels (docs/theory.md §3.4, §4, §9).

Every test runs on each available "device" (backend of the CUDA kernel sources):

- ``cuda``: the compiled kernels through ``torch.ops.creativity_fast`` on the GPU. Skips
  when ``torch.cuda.is_available()`` is False or the extension has no CUDA kernel.
- ``emulator``: the same kernel and host sources (csrc/cuda/*.cuh) compiled for the CPU
  emulator of csrc/cuda/cpu_emulation.cuh, on CPU tensors (built by tests/emulator.py). On by default, so CI checks the
  kernels' block and thread logic without a GPU (it compiles a torch extension once, 1-2
  minutes); ``CREATIVITY_FAST_CUDA_EMULATOR=0`` skips it.
  ``CF_EMU_SCHEDULE=reverse|random`` changes the order of the emulated threads.

``test_cuda_sources_compile`` runs scripts/check_cuda_compile.sh (nvcc, sm_80 and sm_90)
when nvcc is on PATH. Without a GPU the ``cuda`` cases skip.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from creativity_fast import ops
from creativity_fast.reference import patch_argmax_attention_reference
from creativity_fast.reference import patch_posterior_mean_reference

from emulator import EmulatorRunner, emulator_enabled, emulator_module
from helpers import OPERATOR_VARIANTS, TOL, float32_x0_tol, patch_weight_sum, random_inputs, variant_id

ROOT = Path(__file__).resolve().parents[1]

# (mode, boundary, keys) of every machine the operator computes.
MACHINES = OPERATOR_VARIANTS
MACHINE_IDS = [variant_id(m) for m in MACHINES]


# ---------------------------------------------------------------------------------------
# Backends


class CudaRunner:
    name = "cuda"
    device = torch.device("cuda")

    def forward(self, z, data, sigma, P, mode, boundary, keys, key_logw=None, return_argmax=True):
        return torch.ops.creativity_fast.patch_posterior_mean(z, data, sigma, P, mode, boundary, keys, key_logw,
                                                              return_argmax)

    def backward(self, grad, z, data, sigma, P, mode, boundary, keys, key_logw, x0, lse):
        return torch.ops.creativity_fast.patch_posterior_mean_backward(grad, z, data, sigma, P, mode, boundary, keys,
                                                                       key_logw, x0, lse)

    def backward_lse(self, grad, grad_lse, z, data, sigma, P, mode, boundary, keys, key_logw, x0, lse):
        return torch.ops.creativity_fast.patch_posterior_mean_backward_lse(grad, grad_lse, z, data, sigma, P, mode,
                                                                           boundary, keys, key_logw, x0, lse)

    def tf32_capable(self):
        return torch.cuda.get_device_capability()[0] >= 8

    def attention(self, images, center, P, exclude, tau):
        return torch.ops.creativity_fast.patch_argmax_attention(images, center, P, exclude, tau)


# The emulator (build and runner) lives in tests/emulator.py, shared with test_op_errors.py.
_emulator_module = emulator_module


def _cuda_kernel_available() -> bool:
    return torch.cuda.is_available() and ops.has_kernel("cuda")


@pytest.fixture(params=["cuda", "emulator"])
def runner(request):
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if not ops.has_kernel("cuda"):
            pytest.skip("creativity_fast was built without CUDA kernels")
        return CudaRunner()
    if not emulator_enabled():
        pytest.skip("CPU emulator of the CUDA kernels disabled (CREATIVITY_FAST_CUDA_EMULATOR=0)")
    return EmulatorRunner(_emulator_module())


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------
# Inputs and comparison


def _to(runner, dtype, *tensors):
    return [None if t is None else t.to(device=runner.device, dtype=dtype) for t in tensors]


def _assert_close(actual, expected, dtype, what, tol=None):
    actual = actual.detach().cpu().double()
    # same non-finite pattern (NaN where every key of a pixel was removed, -inf lse)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), f"{what}: NaN pattern differs"
    finite = torch.isfinite(expected)
    assert torch.equal(actual[~finite].nan_to_num(), expected[~finite].nan_to_num()), f"{what}: infinities differ"
    torch.testing.assert_close(actual[finite], expected[finite], **(tol or TOL[dtype]), msg=lambda m: f"{what}: {m}")


def _check_forward(runner, z, data, sigma, P, machine, dtype, key_logw=None, best_agreement=None):
    mode, boundary, keys = machine
    x_ref, lse_ref, best_ref = patch_posterior_mean_reference(z, data, sigma, P, mode, boundary, keys, key_logw)
    x0, lse, best = runner.forward(*_to(runner, dtype, z, data, sigma), P, mode, boundary, keys,
                                   *_to(runner, dtype, key_logw), True)
    assert x0.dtype == dtype and lse.dtype == dtype and best.dtype == torch.int64
    assert x0.shape == z.shape and lse.shape == z.shape[:1] + z.shape[2:] and best.shape == lse.shape
    sumw = patch_weight_sum(*z.shape[1:], P, mode, boundary)
    _assert_close(x0, x_ref, dtype, "x0_hat", float32_x0_tol(dtype, lse_ref, sumw))
    _assert_close(lse, lse_ref, dtype, "lse")
    agree = (best.cpu() == best_ref).double().mean().item()
    needed = best_agreement if best_agreement is not None else (1.0 if dtype == torch.float64 else 0.97)
    assert agree >= needed, f"best key agrees on {agree:.3f} of pixels (< {needed})"
    return x0, lse, best


def _machine_ps(machine, H=7, W=9):
    if machine[0] == "ideal":
        return [3]
    if machine[2] == "valid":
        return [1, 3, 5]
    return [1, 3, 11]  # 11 > H: clipped (zeros) or wrapped with multiplicities (circular)


FORWARD_CASES = [
    pytest.param(m, P, id=f"{'-'.join(m)}-P{P}") for m in MACHINES for P in _machine_ps(m)
]


# ---------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("machine,P", FORWARD_CASES)
def test_forward_matches_reference(runner, machine, P, dtype):
    z, data, sigma, _ = random_inputs(C=1, seed=P)
    _check_forward(runner, z, data, sigma, P, machine, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("machine", MACHINES, ids=MACHINE_IDS)
def test_forward_channels_and_key_logw(runner, machine, dtype):
    """C = 3 (the 4-channel register path), a log prior per key with removed (-inf) keys."""
    for C, removed in [(3, False), (2, True)]:
        z, data, sigma, key_logw = random_inputs(C=C, seed=10 + C, logw=True, mode=machine[0],
                                                 remove_every=4 if removed else 0)
        _check_forward(runner, z, data, sigma, 3, machine, dtype, key_logw)


def test_return_argmax_false_gives_empty_best(runner):
    z, data, sigma, _ = random_inputs()
    for mode in ("ideal", "els"):
        x0, lse, best = runner.forward(*_to(runner, torch.float32, z, data, sigma), 3, mode, "zeros", "all", None, False)
        assert best.dtype == torch.int64 and best.numel() == 0
        assert x0.shape == z.shape


@pytest.mark.parametrize("machine", [MACHINES[0], MACHINES[1], MACHINES[3], MACHINES[4]], ids=lambda m: "-".join(m))
def test_many_key_splits_merge_exactly(runner, machine):
    """One key tile per block: many partial states per query, merged in key order."""
    z, data, sigma, _ = random_inputs(B=3, C=2, H=9, W=10, N=37, sigma=(0.3, 0.8, 2.0), seed=1)
    for tiles in ("1", "0"):
        with _env(CREATIVITY_FAST_CUDA_TILES_PER_BLOCK=tiles):
            for dtype in (torch.float64, torch.float32):
                _check_forward(runner, z, data, sigma, 3 if machine[0] != "els" else 5, machine, dtype)


@pytest.mark.parametrize("math_path", ["fp32", "tf32"])
@pytest.mark.parametrize("mode", ["ideal", "local", "els"])
def test_ties_go_to_the_lowest_key_id(runner, mode, math_path):
    if math_path == "tf32" and (mode == "ideal" or not runner.tf32_capable()):
        pytest.skip("the tf32 path exists for local/els on sm_80+")
    z, data, sigma, _ = random_inputs(C=1, H=6, W=6, N=4, seed=2)
    data = torch.cat([data, data, data])  # images mu, mu + 4, mu + 8 are identical
    with _env(CREATIVITY_FAST_CUDA_MATH=math_path):
        for dtype in (torch.float64, torch.float32):
            _, _, best = runner.forward(*_to(runner, dtype, z, data, sigma), 3, mode, "circular", "all", None, True)
            _, _, best_ref = patch_posterior_mean_reference(z, data, sigma, 3, mode, "circular", "all")
            assert int((best.cpu() // 36).max()) < 4, "a duplicate with a higher image index won a tie"
            assert torch.equal(best.cpu(), best_ref)


def test_sigma_to_zero_gives_nearest_admissible_centre(runner):
    """docs/theory.md §3.3 limit: as sigma -> 0 each pixel is the centre of its nearest admissible patch."""
    z, data, _, _ = random_inputs(B=2, C=1, H=8, W=8, N=6, seed=3)
    sigma = torch.full((2,), 1e-3, dtype=torch.float64)
    x_ref, _, best_ref = patch_posterior_mean_reference(z, data, sigma, 3, "els", "zeros", "all")
    x0, _, best = runner.forward(*_to(runner, torch.float32, z, data, sigma), 3, "els", "zeros", "all", None, True)
    assert torch.equal(best.cpu(), best_ref)
    torch.testing.assert_close(x0.cpu().double(), x_ref, atol=1e-6, rtol=0)


def test_deterministic(runner):
    z, data, sigma, _ = random_inputs(B=2, C=1, H=9, W=9, N=20, seed=4)
    args = (*_to(runner, torch.float32, z, data, sigma), 5, "els", "zeros", "all", None, True)
    first = runner.forward(*args)
    second = runner.forward(*args)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_input_errors(runner):
    z, data, sigma, _ = random_inputs(C=1)
    zc, dc, sc = _to(runner, torch.float32, z, data, sigma)
    with pytest.raises(RuntimeError, match="P must be an odd"):
        runner.forward(zc, dc, sc, 4, "els", "zeros", "all", None, False)
    with pytest.raises(RuntimeError, match="mode must be"):
        runner.forward(zc, dc, sc, 3, "nope", "zeros", "all", None, False)
    with pytest.raises(RuntimeError, match="keys='valid'"):
        runner.forward(zc, dc, sc, 3, "els", "zeros", "valid", None, False)
    with pytest.raises(RuntimeError, match="dtype"):
        runner.forward(zc, dc.double(), sc, 3, "els", "zeros", "all", None, False)
    z5, d5, s5, _ = random_inputs(C=5)
    with pytest.raises(RuntimeError, match="C <= 4"):
        runner.forward(*_to(runner, torch.float32, z5, d5, s5), 3, "els", "zeros", "all", None, False)


# ---------------------------------------------------------------------------------------
# Backward


BACKWARD_CASES = [
    pytest.param(m, P, C, id=f"{'-'.join(m)}-P{P}-C{C}")
    for m in MACHINES for P in ([3] if m[0] == "ideal" else [1, 3, 7]) for C in (1, 3)
    if not (m[2] == "valid" and P > 5)
]


@pytest.mark.parametrize("machine,P,C", BACKWARD_CASES)
def test_backward_matches_reference_autograd(runner, machine, P, C):
    """grad z of <g, x0_hat>: the kernels' second streaming pass vs autograd through the reference."""
    mode, boundary, keys = machine
    z, data, sigma, key_logw = random_inputs(B=2, C=C, H=5, W=6, N=7, sigma=(1.5, 3.0), seed=20 + P + C, logw=True,
                                             mode=mode)
    zz = z.clone().requires_grad_(True)
    x_ref, _, _ = patch_posterior_mean_reference(zz, data, sigma, P, mode, boundary, keys, key_logw)
    g = torch.randn(x_ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad((x_ref * g).sum(), zz)
    for tiles in ("0", "1"):
        with _env(CREATIVITY_FAST_CUDA_TILES_PER_BLOCK=tiles):
            zd, dd, sd, kd, gd = _to(runner, torch.float64, z, data, sigma, key_logw, g)
            x0, lse, _ = runner.forward(zd, dd, sd, P, mode, boundary, keys, kd, False)
            grad = runner.backward(gd, zd, dd, sd, P, mode, boundary, keys, kd, x0, lse).cpu()
            scale = grad_ref.abs().max().item()
            assert scale > 1e-6, "test inputs saturate the softmax; the gradient is ~0"
            torch.testing.assert_close(grad, grad_ref, atol=1e-9 * scale, rtol=1e-8)
    # float32: the same pass in single precision, at a float32 tolerance relative to the gradient's size
    zd, dd, sd, kd, gd = _to(runner, torch.float32, z, data, sigma, key_logw, g)
    x0, lse, _ = runner.forward(zd, dd, sd, P, mode, boundary, keys, kd, False)
    grad = runner.backward(gd, zd, dd, sd, P, mode, boundary, keys, kd, x0, lse).cpu().double()
    torch.testing.assert_close(grad, grad_ref, atol=2e-3 * grad_ref.abs().max().item(), rtol=1e-3)


@pytest.mark.parametrize("machine", MACHINES, ids=MACHINE_IDS)
def test_backward_lse_matches_reference_autograd_and_cpu_kernel(runner, machine):
    """patch_posterior_mean_backward_lse: grad z of <g, x0_hat> + <g_lse, lse> vs autograd through the
    reference and vs the CPU kernel's; with g_lse = 0 it is patch_posterior_mean_backward bit for bit."""
    mode, boundary, keys = machine
    z, data, sigma, key_logw = random_inputs(B=2, C=2 if mode != "ideal" else 1, H=5, W=6, N=7, sigma=(1.5, 3.0),
                                             seed=31, logw=True, mode=mode)
    gen = torch.Generator().manual_seed(6)
    zz = z.clone().requires_grad_(True)
    x_ref, lse_ref, _ = patch_posterior_mean_reference(zz, data, sigma, 3, mode, boundary, keys, key_logw)
    g = torch.randn(x_ref.shape, generator=gen, dtype=torch.float64)
    gl = torch.randn(lse_ref.shape, generator=gen, dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad((x_ref * g).sum() + (lse_ref * gl).sum(), zz)
    zd, dd, sd, kd, gd, gld = _to(runner, torch.float64, z, data, sigma, key_logw, g, gl)
    x0, lse, _ = runner.forward(zd, dd, sd, 3, mode, boundary, keys, kd, False)
    grad = runner.backward_lse(gd, gld, zd, dd, sd, 3, mode, boundary, keys, kd, x0, lse).cpu()
    scale = grad_ref.abs().max().item()
    torch.testing.assert_close(grad, grad_ref, atol=1e-9 * scale, rtol=1e-8)
    if ops.has_kernel("cpu", "patch_posterior_mean_backward_lse"):
        grad_cpu = torch.ops.creativity_fast.patch_posterior_mean_backward_lse(
            g, gl, z, data, sigma, 3, mode, boundary, keys, key_logw, x0.cpu(), lse.cpu())
        torch.testing.assert_close(grad, grad_cpu, atol=1e-10 * scale, rtol=1e-9)
    plain = runner.backward(gd, zd, dd, sd, 3, mode, boundary, keys, kd, x0, lse)
    zero = runner.backward_lse(gd, torch.zeros_like(lse), zd, dd, sd, 3, mode, boundary, keys, kd, x0, lse)
    assert torch.equal(plain, zero)


class _KernelFunction(torch.autograd.Function):
    """x0_hat = kernel(z) with the kernel's backward, for gradcheck on any backend."""

    @staticmethod
    def forward(ctx, z, runner, data, sigma, P, mode, boundary, keys, key_logw):
        x0, lse, _ = runner.forward(z, data, sigma, P, mode, boundary, keys, key_logw, False)
        ctx.save_for_backward(z, x0, lse)
        ctx.args = (runner, data, sigma, P, mode, boundary, keys, key_logw)
        return x0

    @staticmethod
    def backward(ctx, grad):
        z, x0, lse = ctx.saved_tensors
        runner, data, sigma, P, mode, boundary, keys, key_logw = ctx.args
        return (runner.backward(grad.contiguous(), z, data, sigma, P, mode, boundary, keys, key_logw, x0, lse),
                *([None] * 8))


@pytest.mark.parametrize("machine", MACHINES, ids=MACHINE_IDS)
def test_gradcheck_float64(runner, machine):
    mode, boundary, keys = machine
    z, data, sigma, _ = random_inputs(B=1, C=1, H=4, W=5, N=3, sigma=(0.9,), seed=6)
    zd, dd, sd = _to(runner, torch.float64, z, data, sigma)
    zd.requires_grad_(True)
    fn = lambda x: _KernelFunction.apply(x, runner, dd, sd, 3, mode, boundary, keys, None)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (zd,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("machine", MACHINES, ids=MACHINE_IDS)
def test_public_api_autograd_on_cuda(machine):
    """creativity_fast.ops.patch_posterior_mean on CUDA: registered autograd, gradcheck in float64."""
    if not _cuda_kernel_available():
        pytest.skip("needs a CUDA device and the CUDA kernels")
    mode, boundary, keys = machine
    z, data, sigma, _ = random_inputs(B=1, C=1, H=4, W=5, N=3, sigma=(0.9,), seed=7)
    zd, dd, sd = (t.cuda() for t in (z, data, sigma))
    zd.requires_grad_(True)
    fn = lambda x: ops.patch_posterior_mean(x, dd, sd, 3, mode=mode, boundary=boundary, keys=keys,  # noqa: E731
                                            backend="kernel")
    assert torch.autograd.gradcheck(fn, (zd,), eps=1e-6, atol=1e-7, rtol=1e-5)
    stats = ops.patch_posterior_mean(zd.detach().float(), dd.float(), sd.float(), 3, mode=mode, boundary=boundary,
                                     keys=keys, return_stats=True, backend="kernel")
    ref = ops.patch_posterior_mean(z.float(), data.float(), sigma.float(), 3, mode=mode, boundary=boundary, keys=keys,
                                   return_stats=True, backend="reference")
    torch.testing.assert_close(stats.x0_hat.cpu(), ref.x0_hat, **TOL[torch.float32])
    assert torch.equal(stats.argmax.cpu(), ref.argmax)


def test_opcheck_on_cuda():
    if not _cuda_kernel_available():
        pytest.skip("needs a CUDA device and the CUDA kernels")
    z, data, sigma, _ = random_inputs(B=2, C=1, H=6, W=6, N=4, seed=8)
    zc, dc, sc = (t.float().cuda() for t in (z, data, sigma))
    torch.library.opcheck(torch.ops.creativity_fast.patch_posterior_mean.default,
                          (zc, dc, sc, 3, "els", "zeros", "all", None, True),
                          test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------------------------------
# Precision policy (tf32 tensor cores at high sigma, exact fp32 at low sigma)


def _tf32_logit_error(sumw, qmax, kmax, sigma_min):
    """The estimate of csrc/cuda/plan.cuh: tf32_logit_error."""
    return (2.0 ** -10 * math.sqrt(sumw) * qmax * kmax + 2.0 ** -25 * sumw * (qmax ** 2 + kmax ** 2)) / sigma_min ** 2


@pytest.mark.parametrize("P", [3, 7])
def test_precision_policy_high_sigma_uses_tf32_within_tolerance(runner, P):
    if not runner.tf32_capable():
        pytest.skip("tf32 needs sm_80 or newer")
    z, data, sigma, _ = random_inputs(B=2, C=1, H=9, W=9, N=30, sigma=(40.0,), seed=9)
    est = _tf32_logit_error(P * P, z.abs().max().item(), data.abs().max().item(), 40.0)
    assert est <= 1e-3, "the test input should be on the tf32 side of the policy"
    args = (*_to(runner, torch.float32, z, data, sigma), P, "els", "zeros", "all", None, True)
    with _env(CREATIVITY_FAST_CUDA_MATH="auto"):
        auto = runner.forward(*args)
    with _env(CREATIVITY_FAST_CUDA_MATH="tf32"):
        tf32 = runner.forward(*args)
    with _env(CREATIVITY_FAST_CUDA_MATH="fp32"):
        fp32 = runner.forward(*args)
    for a, b in zip(auto, tf32):
        assert torch.equal(a, b), "auto did not choose tf32 at high sigma"
    x_ref, lse_ref, _ = patch_posterior_mean_reference(z, data, sigma, P, "els", "zeros", "all")
    # logit errors of at most ~est move x0_hat by at most est * (spread of the centres <= 2)
    torch.testing.assert_close(auto[0].cpu().double(), x_ref, atol=2 * est, rtol=0)
    torch.testing.assert_close(auto[1].cpu().double(), lse_ref, atol=2 * est, rtol=1e-5)
    torch.testing.assert_close(fp32[0].cpu().double(), x_ref, **TOL[torch.float32])


@pytest.mark.parametrize("P", [3, 7])
def test_precision_policy_low_sigma_stays_fp32(runner, P):
    z, data, sigma, _ = random_inputs(B=2, C=1, H=9, W=9, N=30, sigma=(0.2,), seed=10)
    args = (*_to(runner, torch.float32, z, data, sigma), P, "els", "zeros", "all", None, True)
    with _env(CREATIVITY_FAST_CUDA_MATH="auto"):
        auto = runner.forward(*args)
    with _env(CREATIVITY_FAST_CUDA_MATH="fp32"):
        fp32 = runner.forward(*args)
    for a, b in zip(auto, fp32):
        assert torch.equal(a, b), "auto chose tf32 where the estimated logit error is too large"
    _check_forward(runner, z, data, sigma, P, ("els", "zeros", "all"), torch.float32)
    if runner.tf32_capable():
        # forcing tf32 here is measurably worse: the reason for the policy
        with _env(CREATIVITY_FAST_CUDA_MATH="tf32"):
            tf32 = runner.forward(*args)
        _, lse_ref, _ = patch_posterior_mean_reference(z, data, sigma, P, "els", "zeros", "all")
        assert (tf32[1].cpu().double() - lse_ref).abs().max() > (fp32[1].cpu().double() - lse_ref).abs().max()


def test_float64_never_uses_tf32(runner):
    z, data, sigma, _ = random_inputs(B=2, C=1, H=9, W=9, N=10, sigma=(40.0,), seed=11)
    args = (*_to(runner, torch.float64, z, data, sigma), 5, "els", "zeros", "all", None, True)
    with _env(CREATIVITY_FAST_CUDA_MATH="tf32"):
        forced = runner.forward(*args)
    with _env(CREATIVITY_FAST_CUDA_MATH="fp32"):
        exact = runner.forward(*args)
    for a, b in zip(forced, exact):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------
# patch_argmax_attention (docs/theory.md §3.4): the CUDA kernel reproduces the CPU kernel's float64
# scores operation for operation, so y* equals the CPU kernel's bitwise on any input and the
# reference's wherever the scores are exact (dyadic inputs), ties included.

# (M, C, H, W): H != W, C = 1 and 3, M = 1, P > H (clipped windows)
ATTN_SHAPES = [(1, 1, 5, 7), (3, 3, 6, 4), (2, 1, 9, 8), (2, 3, 4, 9)]
ATTN_SHAPE_IDS = ["x".join(map(str, s)) for s in ATTN_SHAPES]


def _cpu_attention_kernel():
    return ops.has_kernel("cpu", "patch_argmax_attention")


def _attn_inputs(shape, P, seed, kind="dyadic"):
    """float64 CPU images [M, C, H, W] and centre [C, P, P].

    dyadic: multiples of 1/4 (images) and 1/8 (centre): every score is exact in float64.
    normal: Gaussian images and centre (scores rounded; compared with the CPU kernel bitwise).
    periodic: an integer 2 x 3 tile repeated over the image (translated copies: exact ties).
    constant: every pixel 1 (many admissible keys tie).
    """
    M, C, H, W = shape
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        images = torch.randn(shape, generator=g, dtype=torch.float64)
        center = 0.3 * torch.randn(C, P, P, generator=g, dtype=torch.float64)
        return images, center
    center = torch.randint(-4, 5, (C, P, P), generator=g).double() / 8
    if kind == "dyadic":
        images = torch.randint(-8, 9, shape, generator=g).double() / 4
    elif kind == "periodic":
        tile = torch.randint(-2, 3, (M, C, 2, 3), generator=g).double()
        images = tile.repeat(1, 1, -(-H // 2), -(-W // 3))[:, :, :H, :W].contiguous()
    elif kind == "constant":
        images = torch.ones(shape, dtype=torch.float64)
    else:
        raise ValueError(kind)
    return images, center


def _check_attention(runner, images, center, P, exclude, tau, dtype):
    """The kernel against the reference (bitwise y*; hard in-degree exactly, soft to rounding)
    and, when the CPU kernel is built, against it (bitwise y* and hard in-degree)."""
    x, c = images.to(dtype), center.to(dtype)
    y, deg = runner.attention(x.to(runner.device), c.to(runner.device), P, exclude, -1.0 if tau is None else tau)
    M, _, H, W = images.shape
    assert y.dtype == torch.int64 and deg.dtype == dtype
    assert y.shape == (M, H, W) and deg.shape == (M, H, W)
    y, deg = y.cpu(), deg.cpu()
    ref = patch_argmax_attention_reference(x, P, exclude=exclude, center=c, tau=tau, return_in_degree=True)
    soft_tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    assert torch.equal(y, ref.y_star), f"y* differs from the reference at {(y != ref.y_star).sum().item()} pixels"
    if tau is None:
        counts = torch.stack([torch.bincount(y[i][y[i] >= 0], minlength=H * W) for i in range(M)]).to(dtype)
        assert torch.equal(deg.reshape(M, -1), counts), "hard in-degree is not the count of y*"
        assert torch.equal(deg, ref.in_degree)
    else:
        torch.testing.assert_close(deg, ref.in_degree, **soft_tol)
    if _cpu_attention_kernel():
        y_cpu, deg_cpu = torch.ops.creativity_fast.patch_argmax_attention(x, c, P, exclude,
                                                                          -1.0 if tau is None else tau)
        assert torch.equal(y, y_cpu), f"y* differs from the CPU kernel at {(y != y_cpu).sum().item()} pixels"
        if tau is None:
            assert torch.equal(deg, deg_cpu)
        else:
            torch.testing.assert_close(deg, deg_cpu, **soft_tol)
    return y, deg


@pytest.mark.parametrize("exclude", [0, 1, 2, None], ids=lambda e: f"excl{'P' if e is None else e}")
@pytest.mark.parametrize("P", [1, 3, 5, 9])
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=ATTN_SHAPE_IDS)
def test_attention_matches_reference(runner, shape, P, exclude):
    images, center = _attn_inputs(shape, P, seed=100 + P + 7 * shape[2])
    excl = P if exclude is None else exclude
    for dtype in (torch.float64, torch.float32):
        _check_attention(runner, images, center, P, excl, None, dtype)


@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=ATTN_SHAPE_IDS)
def test_attention_random_floats_match_cpu_kernel(runner, shape):
    """Gaussian inputs (rounded scores): bitwise the CPU kernel's y*, and the reference's."""
    for P, exclude, seed in ((3, 3, 1), (7, 0, 2), (5, 1, 3)):
        images, center = _attn_inputs(shape, P, seed=seed, kind="normal")
        for dtype in (torch.float64, torch.float32):
            _check_attention(runner, images, center, P, exclude, None, dtype)
            _check_attention(runner, images, center, P, exclude, 0.7, dtype)


@pytest.mark.parametrize("kind", ["constant", "periodic"])
@pytest.mark.parametrize("shape", [(1, 1, 7, 6), (2, 3, 6, 9)], ids=["1x1x7x6", "2x3x6x9"])
def test_attention_exact_ties_go_to_lowest_index(runner, shape, kind):
    from creativity_fast.reference import attention_scores

    for P in (1, 3, 5):
        images, center = _attn_inputs(shape, P, seed=P, kind=kind)
        if kind == "constant":
            center = torch.zeros_like(center)
        for exclude in (0, 1, 3):
            # the inputs really tie: some rows have their maximum at several keys
            s = attention_scores(images, P, exclude=exclude, center=center)
            best = s.amax(-1, keepdim=True)
            assert bool(((s == best) & torch.isfinite(best)).sum(-1).gt(1).any())
            for dtype in (torch.float64, torch.float32):
                _check_attention(runner, images, center, P, exclude, None, dtype)


@pytest.mark.parametrize("tau", [0.25, 1.0, 4.0])
def test_attention_soft_in_degree(runner, tau):
    for shape, P, exclude in (((2, 1, 6, 7), 3, 2), ((1, 3, 5, 4), 5, 0), ((3, 1, 4, 6), 1, 1)):
        images, center = _attn_inputs(shape, P, seed=int(tau * 8) + P, kind="normal")
        images = images * 0.5
        for dtype in (torch.float64, torch.float32):
            y_soft, deg = _check_attention(runner, images, center, P, exclude, tau, dtype)
            y_hard, _ = _check_attention(runner, images, center, P, exclude, None, dtype)
            assert torch.equal(y_soft, y_hard)  # y* does not depend on tau
            M, _, H, W = shape
            rows = float(H * W)  # every row here has an admissible key; each gives total weight 1
            torch.testing.assert_close(deg.double().sum((1, 2)), torch.full((M,), rows, dtype=torch.float64),
                                       rtol=1e-5, atol=1e-5)


def test_attention_scores_are_the_cpu_kernels_bitwise(runner):
    """The soft in-degree sums exp(s / tau - lse) in the CPU kernel's order when there is one split.
    On the emulator exp is the CPU's libm, so the in-degree is bitwise the CPU kernel's only if every
    score is (a small tau magnifies any last-bit difference); on a GPU exp differs in the last bits."""
    if not _cpu_attention_kernel():
        pytest.skip("needs the CPU patch_argmax_attention kernel")
    with _env(CREATIVITY_FAST_CUDA_ATTENTION_SPLITS="1"):
        for shape, P, exclude in (((2, 3, 7, 6), 3, 0), ((1, 1, 9, 8), 5, 2), ((2, 1, 5, 9), 9, 1)):
            images, center = _attn_inputs(shape, P, seed=P + exclude, kind="normal")
            for tau in (1e-3, 0.3):
                x, c = images.to(runner.device), center.to(runner.device)
                y, deg = runner.attention(x, c, P, exclude, tau)
                y_cpu, deg_cpu = torch.ops.creativity_fast.patch_argmax_attention(images, center, P, exclude, tau)
                assert torch.equal(y.cpu(), y_cpu)
                if runner.name == "emulator":
                    assert torch.equal(deg.cpu(), deg_cpu), (deg.cpu() - deg_cpu).abs().max()
                else:
                    torch.testing.assert_close(deg.cpu(), deg_cpu, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scratch", ["shared", "global"])
def test_attention_splits_and_scratch(runner, scratch):
    """Any number of displacement splits (merged on the host) and either scratch give the same results."""
    images, center = _attn_inputs((2, 3, 7, 9), 3, seed=5)
    normal, ncenter = _attn_inputs((2, 1, 8, 5), 5, seed=6, kind="normal")
    for splits in ("1", "2", "5", "1000"):
        with _env(CREATIVITY_FAST_CUDA_ATTENTION_SPLITS=splits, CREATIVITY_FAST_CUDA_ATTENTION_SCRATCH=scratch):
            for exclude in (0, 2):
                _check_attention(runner, images, center, 3, exclude, None, torch.float64)
                _check_attention(runner, normal, ncenter, 5, exclude, None, torch.float32)
                _check_attention(runner, normal, ncenter, 5, exclude, 0.5, torch.float64)


def test_attention_no_admissible_key(runner):
    images, center = _attn_inputs((2, 1, 5, 6), 3, seed=7)
    for exclude in (6, 100):  # the largest Chebyshev distance in 5 x 6 is 5
        y, deg = _check_attention(runner, images, center, 3, exclude, None, torch.float32)
        assert bool((y == -1).all()) and bool((deg == 0).all())
        _check_attention(runner, images, center, 3, exclude, 0.5, torch.float64)
    y, _ = _check_attention(runner, images, center, 3, 5, None, torch.float64)  # only the columns 0 <-> 5
    assert bool((y[:, :, 1:5] == -1).all()) and bool((y[:, :, 0] >= 0).all())


def test_attention_deterministic(runner):
    images, center = _attn_inputs((3, 1, 9, 9), 5, seed=8, kind="normal")
    for tau in (-1.0, 0.5):
        args = (images.float().to(runner.device), center.float().to(runner.device), 5, 2, tau)
        first, second = runner.attention(*args), runner.attention(*args)
        assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_attention_input_errors(runner):
    images, center = _attn_inputs((1, 1, 5, 5), 3, seed=9)
    x, c = images.to(runner.device), center.to(runner.device)
    with pytest.raises(RuntimeError, match="P must be an odd"):
        runner.attention(x, torch.zeros(1, 4, 4, dtype=x.dtype, device=x.device), 4, 1, -1.0)
    with pytest.raises(RuntimeError, match="center must have shape"):
        runner.attention(x, c[:, :1], 3, 1, -1.0)
    with pytest.raises(RuntimeError, match="exclude must be"):
        runner.attention(x, c, 3, -1, -1.0)


def test_attention_public_api_on_cuda():
    """ops.patch_argmax_attention on CUDA tensors runs the CUDA kernel, equal to the CPU kernel; opcheck."""
    if not (torch.cuda.is_available() and ops.has_kernel("cuda", "patch_argmax_attention")):
        pytest.skip("needs a CUDA device and the CUDA patch_argmax_attention kernel")

    images, _ = _attn_inputs((4, 1, 12, 10), 3, seed=10, kind="normal")
    for P, exclude, tau in ((3, None, None), (5, 0, None), (3, 2, 0.5)):
        got = ops.patch_argmax_attention(images.float().cuda(), P, exclude=exclude, tau=tau, return_in_degree=True,
                                       backend="kernel")
        want = ops.patch_argmax_attention(images.float(), P, exclude=exclude, tau=tau, return_in_degree=True,
                                        backend="kernel" if _cpu_attention_kernel() else "reference")
        assert torch.equal(got.y_star.cpu(), want.y_star)
        torch.testing.assert_close(got.in_degree.cpu(), want.in_degree, rtol=1e-5, atol=1e-5)
    x = images[:2, :, :6, :7].float().cuda()
    center = ops.mean_patch(x, 3)
    op = torch.ops.creativity_fast.patch_argmax_attention.default
    torch.library.opcheck(op, (x, center, 3, 3, -1.0))
    torch.library.opcheck(op, (x.double(), center.double(), 3, 1, 0.5))


# ---------------------------------------------------------------------------------------
# Build check without a GPU


def test_cuda_sources_compile():
    """Every csrc/cuda/*.cu compiles with nvcc for sm_80 and sm_90 (no GPU needed)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH")
    script = ROOT / "scripts" / "check_cuda_compile.sh"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"check_cuda_compile.sh failed:\n{proc.stdout}\n{proc.stderr}"
