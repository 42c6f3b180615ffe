"""CUDA kernel of ``paired_patch_posterior_mean`` (the PELS machine, docs/theory.md §3.7, §4)
against the pure-PyTorch twin, ELS and the float64 rule for non-finite inputs.

Runs on each backend of the CUDA kernel sources (``runner`` fixture, tests/cuda_backends.py):
the GPU (skips without one) and the CPU emulator of csrc/cuda/cpu_emulation.cuh, which runs
``forward_kernel``'s paired instantiation (csrc/cuda/patch_kernels.cuh: ``partner_tile``)
with the ELS plan and merge. The twin itself is checked against the literal float64 oracle
in test_paired.py.
"""

from __future__ import annotations

import pytest
import torch

from creativity_fast import ops
from creativity_fast.reference import paired_patch_posterior_mean_reference

from cuda_backends import set_env
from helpers import TOL, float32_x0_tol, patch_weight_sum, random_inputs, random_partners, stable_seed
from oracle import assert_nonfinite_like, nonfinite_softmax_mean

VARIANTS = (("zeros", "all"), ("circular", "all"), ("circular", "valid"))
# (B, N, C, H, W): C = 1 and 3, H != W, N = 1, and a larger N (several key tiles per block).
SHAPES = [(2, 3, 1, 7, 9), (1, 1, 3, 6, 5), (3, 13, 3, 5, 8)]
# odd P and P2, P2 != P; C * P2 * P2 beyond one partner range (Cfg<T>::DP: 32 float, 16 double)
PATCHES = [(3, 5), (5, 3), (1, 3), (7, 1), (3, 7)]


def _problem(shape, seed):
    B, N, C, H, W = shape
    z, data, sigma, _ = random_inputs(B=B, C=C, H=H, W=W, N=N, seed=seed, sigma=(0.4, 1.5), query="gaussian",
                                      query_scale=1.2)
    q, k = random_partners(B, N, H, W, seed + 1)
    return z, data, sigma, q, k


def _on(runner, dtype, *tensors):
    return [t.to(device=runner.device, dtype=dtype if t.is_floating_point() else t.dtype) for t in tensors]


def _run(runner, dtype, z, data, sigma, P, P2, q, k, beta, boundary, keys, return_argmax=True):
    zz, dd, ss, qq, kk = _on(runner, dtype, z, data, sigma, q, k)
    return runner.paired_forward(zz, dd, ss, P, P2, qq, kk, beta, boundary, keys, return_argmax)


def _check_against_twin(runner, dtype, z, data, sigma, P, P2, q, k, beta, boundary, keys):
    x_ref, lse_ref, best_ref = paired_patch_posterior_mean_reference(z, data, sigma, P, P2, q, k, beta, boundary, keys)
    x0, lse, best = _run(runner, dtype, z, data, sigma, P, P2, q, k, beta, boundary, keys)
    assert x0.dtype == dtype and lse.dtype == dtype and best.dtype == torch.int64
    assert x0.shape == z.shape and lse.shape == lse_ref.shape and best.shape == lse_ref.shape
    C, H, W = z.shape[1:]
    # the float32 rounding of a logit grows with the weighted entries of both distances
    sumw = patch_weight_sum(C, H, W, P, "els", boundary) + beta * patch_weight_sum(C, H, W, P2, "els", boundary)
    torch.testing.assert_close(x0.cpu().double(), x_ref, **float32_x0_tol(dtype, lse_ref, sumw))
    torch.testing.assert_close(lse.cpu().double(), lse_ref, **TOL[dtype])
    agree = (best.cpu() == best_ref).double().mean().item()
    assert agree >= (1.0 if dtype == torch.float64 else 0.97), f"best key agrees on {agree:.3f} of pixels"
    return x0, lse, best


# ---------------------------------------------------------------------------------------
# Forward against the twin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("boundary,keys", VARIANTS, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("P,P2", PATCHES, ids=[f"P{a}-P2{b}" for a, b in PATCHES])
@pytest.mark.parametrize("shape", SHAPES, ids=["C1-7x9", "N1-C3-6x5", "C3-5x8-N13"])
def test_forward_matches_twin(runner, shape, P, P2, boundary, keys, dtype):
    B, N, C, H, W = shape
    if keys == "valid" and (P > H or P > W):
        pytest.skip("keys='valid' needs a patch that fits")
    z, data, sigma, q, k = _problem(shape, stable_seed("cuda-paired", shape, P, P2, boundary, keys))
    beta = 1.0 if P2 < P else 2.5  # the optimum, and a stronger partner weight
    _check_against_twin(runner, dtype, z, data, sigma, P, P2, q, k, beta, boundary, keys)


@pytest.mark.parametrize("boundary", ["zeros", "circular"])
def test_many_key_splits_merge_exactly(runner, boundary):
    """One key tile per block (many partial states per query, merged in key order) gives the twin's result too."""
    z, data, sigma, q, k = _problem((3, 37, 2, 9, 10), 5)
    for tiles in ("1", "0"):
        with set_env(CREATIVITY_FAST_CUDA_TILES_PER_BLOCK=tiles):
            for dtype in (torch.float64, torch.float32):
                _check_against_twin(runner, dtype, z, data, sigma, 5, 3, q, k, 1.7, boundary, "all")


def test_the_partner_term_reaches_the_result(runner):
    """Guards the comparisons above against a kernel that ignores the partners (then it would be ELS)."""
    z, data, sigma, q, k = _problem((2, 4, 1, 5, 6), 3)
    els = runner.forward(*_on(runner, torch.float64, z, data, sigma), 3, "els", "zeros", "all", None, True)
    pels = _run(runner, torch.float64, z, data, sigma, 3, 3, q, k, 1.0, "zeros", "all")
    assert (pels[0].cpu() - els[0].cpu()).abs().max() > 1e-2
    # and the kernel uses the given partners: other partners, another result
    q2 = torch.roll(q, 1, dims=-1)
    other = _run(runner, torch.float64, z, data, sigma, 3, 3, q2, k, 1.0, "zeros", "all")
    assert (pels[0].cpu() - other[0].cpu()).abs().max() > 1e-3


@pytest.mark.parametrize("boundary,keys", VARIANTS, ids=lambda v: v if isinstance(v, str) else None)
def test_beta_zero_is_els(runner, boundary, keys):
    """beta = 0 runs the ELS forward itself: patch_posterior_mean(mode='els') bit for bit."""
    z, data, sigma, q, k = _problem((2, 5, 3, 6, 5), 7)
    for dtype in (torch.float64, torch.float32):
        for P, P2 in ((3, 5), (5, 3)):
            els = runner.forward(*_on(runner, dtype, z, data, sigma), P, "els", boundary, keys, None, True)
            pels = _run(runner, dtype, z, data, sigma, P, P2, q, k, 0.0, boundary, keys)
            for a, b in zip(pels, els):
                assert torch.equal(a.cpu(), b.cpu())


def test_identical_partner_windows_cancel(runner):
    """Equal partner windows everywhere (one constant corner, one partner) add 0 to every logit: ELS to rounding."""
    z, data, sigma, _, _ = _problem((1, 3, 1, 5, 5), 2)
    z, data = z.clone(), data.clone()
    z[:, :, :2, :2] = 0.25
    data[:, :, :2, :2] = 0.25  # the P2 = 3 window at (0, 0) reads rows/cols 0..1 (zeros outside)
    q = torch.zeros(1, 5, 5, dtype=torch.long)
    k = torch.zeros(3, 5, 5, dtype=torch.long)
    els = runner.forward(*_on(runner, torch.float64, z, data, sigma), 3, "els", "zeros", "all", None, True)
    pels = _run(runner, torch.float64, z, data, sigma, 3, 3, q, k, 3.0, "zeros", "all")
    for a, b in zip(pels, els):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=1e-12)


def test_return_argmax_false_gives_empty_best(runner):
    z, data, sigma, q, k = _problem((2, 3, 1, 5, 6), 9)
    x0, lse, best = _run(runner, torch.float32, z, data, sigma, 3, 5, q, k, 1.0, "zeros", "all", False)
    assert best.dtype == torch.int64 and best.numel() == 0 and x0.shape == z.shape


def test_deterministic(runner):
    z, data, sigma, q, k = _problem((2, 6, 3, 7, 6), 13)
    first = _run(runner, torch.float32, z, data, sigma, 3, 5, q, k, 1.5, "circular", "all")
    second = _run(runner, torch.float32, z, data, sigma, 3, 5, q, k, 1.5, "circular", "all")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_input_errors_match_the_cpu_operator(runner):
    """The shared checks of csrc/op_args.h: the same RuntimeError text as the CPU operator, before any kernel."""
    z, data, sigma, q, k = _problem((2, 3, 1, 5, 6), 1)
    bad_q = q.clone()
    bad_q[1, 2, 3] = 30  # H * W = 30: out of range
    cases = [
        (dict(P2=4), "P2 must be an odd positive int"),
        (dict(beta=-1.0), "beta must be a finite float >= 0"),
        (dict(q=q.int()), "query_partner must be an int64 tensor"),
        (dict(k=k[:2]), "key_partner must have shape"),
        (dict(q=bad_q), r"query_partner entries must be flat locations in \[0, H\*W\) = \[0, 30\) or -1"),
        (dict(P=4), "P must be an odd positive int"),
        (dict(keys="valid"), "keys='valid' applies only"),
    ]
    cpu_kernel = ops.has_kernel("cpu", "paired_patch_posterior_mean")
    for change, match in cases:
        a = dict(P=3, P2=3, q=q, k=k, beta=1.0, boundary="zeros", keys="all")
        a.update(change)
        args = lambda dev: ([t.to(dev, torch.float32) for t in (z, data, sigma)] + [a["P"], a["P2"],  # noqa: E731
                            a["q"].to(dev), a["k"].to(dev), a["beta"], a["boundary"], a["keys"]])
        with pytest.raises(RuntimeError, match=match) as err:
            zz, dd, ss, P, P2, qq, kk, beta, boundary, keys = args(runner.device)
            runner.paired_forward(zz, dd, ss, P, P2, qq, kk, beta, boundary, keys)
        if cpu_kernel:
            with pytest.raises(RuntimeError) as cpu_err:
                torch.ops.creativity_fast.paired_patch_posterior_mean(*args(torch.device("cpu")), True)
            ours, theirs = str(err.value).splitlines()[0], str(cpu_err.value).splitlines()[0]
            assert ours == theirs, f"{change}: CUDA says {ours!r}, CPU says {theirs!r}"
    z5, d5, s5, q5, k5 = _problem((1, 2, 5, 4, 4), 2)
    with pytest.raises(RuntimeError, match="C <= 4"):
        _run(runner, torch.float32, z5, d5, s5, 3, 3, q5, k5, 1.0, "zeros", "all")


# ---------------------------------------------------------------------------------------
# Non-finite inputs: the rule of csrc/cuda/NOTES.md ("Non-finite inputs") with the partner
# term: IEEE arithmetic on the direct forms of both distances of every admissible pair, so a
# NaN (or inf - inf) in either patch or either partner window gives a NaN logit (x0_hat and lse
# NaN), an infinite entry against a finite one an infinite distance (weight 0), and a pixel
# without a finite logit lse = -inf, x0_hat = NaN, best = -1.

NONFINITE_CASES = {
    "z_nan": dict(z=float("nan")),
    "z_inf": dict(z=float("inf")),
    "data_nan": dict(data=float("nan")),
    "data_inf_corner": dict(data=float("inf"), corner=True),
    "both_inf": dict(z=float("inf"), data=float("inf")),
    # NaN only where no ELS patch of the tested pixels reaches but partner windows do: the far corner
    "z_nan_partner_only": dict(z=float("nan"), partner_only=True),
}


def _nonfinite_problem(case):
    spec = NONFINITE_CASES[case]
    B, N, C, H, W = 2, 3, 2, 5, 6
    z, data, sigma, q, k = _problem((B, N, C, H, W), 41)
    if spec.get("partner_only"):
        z, data, sigma, q, k = _problem((B, N, C, 9, 9), 43)
        z[1, C - 1, 8, 8] = spec["z"]
        q[1, :, :] = 8 * 9 + 7  # every query of sample 1 attends next to the NaN pixel
        q[1, :3, :3] = -1       # but these attend nowhere; the ELS patches of [1:3, 1:3] (P = 3) do not reach it
        return z, data, sigma, q, k
    if "z" in spec:
        z[1, C - 1, 2, 3] = spec["z"]
    if "data" in spec:
        data[2, 0, 3, 1] = spec["data"]
        if spec.get("corner"):
            data[1, C - 1, 0, 0] = spec["data"]
    return z, data, sigma, q, k


def _nonfinite_oracle(z, data, sigma, P, P2, q, k, beta, boundary, keys):
    """(x0_hat, lse) in float64 by the rule, pixel by pixel (tests/oracle.py's distances in Python floats)."""
    from oracle import admissible_keys, partner_window_distance, patch_distance

    z, data = z.double(), data.double()
    B, C, H, W = z.shape
    loc = lambda f: None if int(f) < 0 else (int(f) // W, int(f) % W)  # noqa: E731
    x0 = torch.empty(B, C, H, W, dtype=torch.float64)
    lse = torch.empty(B, H, W, dtype=torch.float64)
    for b in range(B):
        inv = 1.0 / (2.0 * float(sigma[b]) ** 2)
        for r in range(H):
            for c in range(W):
                logits, centres = [], []
                for mu in range(data.shape[0]):
                    for y in admissible_keys((r, c), H, W, P, "els", boundary, keys):
                        d = patch_distance(z[b], (r, c), data[mu], y, P, boundary)
                        d2 = partner_window_distance(z[b], loc(q[b, r, c]), data[mu], loc(k[mu, y[0], y[1]]), P2,
                                                     boundary)
                        logits.append(-(d + beta * d2) * inv)
                        centres.append(data[mu, :, y[0], y[1]])
                x0[b, :, r, c], lse[b, r, c] = nonfinite_softmax_mean(logits, centres)
    return x0, lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("boundary", ["zeros", "circular"])
@pytest.mark.parametrize("case", list(NONFINITE_CASES))
def test_nonfinite_inputs_follow_the_rule(runner, case, boundary, dtype):
    z, data, sigma, q, k = _nonfinite_problem(case)
    x_exp, lse_exp = _nonfinite_oracle(z, data, sigma, 3, 3, q, k, 1.5, boundary, "all")
    assert not torch.isfinite(x_exp).all(), "the case must reach the output"
    if NONFINITE_CASES[case].get("partner_only"):
        # the NaN enters only through the partner term: ELS alone is finite at these pixels
        assert bool(torch.isnan(lse_exp[1]).any()) and bool(torch.isfinite(lse_exp[1, 1:3, 1:3]).all())
    tol = dict(rtol=2e-5, atol=5e-4) if dtype == torch.float32 else TOL[dtype]
    for tiles in ("0", "1"):
        with set_env(CREATIVITY_FAST_CUDA_TILES_PER_BLOCK=tiles):
            x0, lse, best = _run(runner, dtype, z, data, sigma, 3, 3, q, k, 1.5, boundary, "all")
        assert_nonfinite_like(x0, x_exp, f"x0_hat (tiles {tiles})", tol)
        assert_nonfinite_like(lse, lse_exp, f"lse (tiles {tiles})", tol)
        assert bool((best.cpu()[lse_exp == float("-inf")] == -1).all())


# ---------------------------------------------------------------------------------------
# The public wrapper on a GPU (skips without one): the kernel is picked, autograd differentiates the twin


def test_public_api_on_cuda_uses_the_kernel_and_differentiates():
    if not (torch.cuda.is_available() and ops.has_kernel("cuda", "paired_patch_posterior_mean")):
        pytest.skip("needs a GPU and the CUDA build")
    import creativity_fast as cf

    z, data, sigma, q, k = _problem((2, 4, 1, 6, 7), 17)
    zc = z.cuda().requires_grad_(True)
    out = cf.paired_patch_posterior_mean(zc, data.cuda(), sigma.cuda(), 3, q.cuda(), k.cuda(), beta=1.2, P2=5,
                                         backend="kernel")
    want = cf.paired_patch_posterior_mean(z, data, sigma, 3, q, k, beta=1.2, P2=5, backend="reference")
    torch.testing.assert_close(out.detach().cpu(), want, **TOL[torch.float64])
    (g,) = torch.autograd.grad(out.sum(), zc)
    zr = z.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(cf.paired_patch_posterior_mean(zr, data, sigma, 3, q, k, beta=1.2, P2=5,
                                                                  backend="reference").sum(), zr)
    torch.testing.assert_close(g.cpu(), g_ref, rtol=1e-8, atol=1e-8)
