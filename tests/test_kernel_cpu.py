"""The fused CPU kernel of patch_posterior_mean: exactness, invariances, gradients.

Every comparison is against the pure-PyTorch reference (itself checked against the
brute-force oracle in ``tests/oracle.py``). Inputs (``helpers.random_inputs``) are tiny so
the file runs in seconds; ``sigma=(s, 1.5 s)`` gives the two queries different noise levels.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import creativity_fast as cf
from creativity_fast import ops, reference

from helpers import (FLOAT32_SAME_INPUTS_TOL, OPERATOR_VARIANTS, TOL, float32_error_bound, float32_logit_error,
                     patch_weight_sum, random_inputs, top_two_logits)
from oracle import oracle

pytestmark = pytest.mark.skipif(not ops.has_kernel("cpu"), reason="CPU kernel not built")

OP = torch.ops.creativity_fast.patch_posterior_mean if ops.has_kernel("cpu") else None
MACHINES = OPERATOR_VARIANTS
ENV = ("ISA", "TILE_ROWS", "ALGO", "PRUNE", "SLIDE_MIN")


@pytest.fixture
def knobs(monkeypatch):
    """set(**kw) sets CREATIVITY_FAST_CPU_<KEY> (None clears it)."""
    for k in ENV:
        monkeypatch.delenv("CREATIVITY_FAST_CPU_" + k, raising=False)

    def set_(**kw):
        for k, v in kw.items():
            if v is None:
                monkeypatch.delenv("CREATIVITY_FAST_CPU_" + k, raising=False)
            else:
                monkeypatch.setenv("CREATIVITY_FAST_CPU_" + k, str(v))
    return set_


def kernel(z, data, s, P, mode, boundary, keys, lw=None, argmax=True):
    return OP(z, data, s, P, mode, boundary, keys, lw, argmax)


def ref(z, data, s, P, mode, boundary, keys, lw=None):
    return reference.patch_posterior_mean_reference(z, data, s, P, mode, boundary, keys, lw)


def assert_close_to_reference(out, expected):
    """float64: x0_hat and lse to TOL[float64], the best key exactly."""
    x, lse, best = out
    xr, lr, br = expected
    assert x.dtype == xr.dtype and lse.dtype == lr.dtype
    torch.testing.assert_close(x, xr, **TOL[torch.float64])
    torch.testing.assert_close(lse, lr, **TOL[torch.float64])
    assert torch.equal(best, br)


# ---------------------------------------------------------------------------
# exactness against the reference and the oracle

@pytest.mark.parametrize("mode,boundary,keys", MACHINES)
def test_matches_reference_float64(mode, boundary, keys):
    H, W = 6, 5
    for P in (1, 3, 5, 13):  # 13 > H, W: zero patches drop offsets, circular ones wrap
        if keys == "valid" and P > min(H, W):
            continue
        for C, N, logw, sigma in ((1, 1, False, 0.05), (3, 2, True, 0.8), (1, 5, True, 3.0), (2, 4, False, 0.3)):
            z, data, s, lw = random_inputs(B=2, C=C, H=H, W=W, N=N, seed=P * 10 + N, sigma=(sigma, 1.5 * sigma),
                                           query="gaussian", logw=logw, mode=mode)
            out = kernel(z, data, s, P, mode, boundary, keys, lw)
            assert_close_to_reference(out, ref(z, data, s, P, mode, boundary, keys, lw))


@pytest.mark.parametrize("mode,boundary,keys", [("els", "zeros", "all"), ("els", "circular", "valid"),
                                                ("local", "circular", "all")])
def test_matches_oracle(mode, boundary, keys):
    z, data, s, lw = random_inputs(B=1, C=2, H=5, W=4, N=2, sigma=1.2, query="gaussian", logw=True, mode=mode)
    x, lse, best = kernel(z, data, s, 3, mode, boundary, keys, lw)
    xo, lo, bo = oracle(z, data, s, 3, mode, boundary, keys, lw)
    torch.testing.assert_close(x, xo, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, lo, rtol=1e-10, atol=1e-10)
    assert torch.equal(torch.stack([best // 20, best % 20], -1), bo)


def test_auto_backend_uses_the_kernel():
    z, data, s, _ = random_inputs(B=2, C=1, H=6, W=5, N=3, sigma=(0.8, 1.2), query="gaussian", dtype=torch.float32)
    got = cf.patch_posterior_mean(z, data, s, 3, backend="auto", return_stats=True)
    x, lse, best = kernel(z, data, s, 3, "els", "zeros", "all")
    assert torch.equal(got.x0_hat, x) and torch.equal(got.lse, lse)
    assert torch.equal(got.argmax, torch.stack([best // 30, best % 30], -1))
    assert OP(z, data, s, 3, "els", "zeros", "all", None, False)[2].numel() == 0  # no provenance unless asked


def test_float32_accuracy():
    """float32 kernel vs float64 reference within ``float32_error_bound``: 2e-5 relative, or 2x the
    reference's own float32 error."""
    cases = [  # (P, mode, boundary, sigma, noisy); the last is a hard case: |logits| ~ 2e3
        (3, "els", "zeros", 0.1, True), (7, "els", "circular", 1.0, True), (5, "local", "zeros", 0.5, False),
        (1, "ideal", "zeros", 2.0, True), (15, "els", "zeros", 10.0, True), (21, "els", "circular", 0.3, False)]
    for seed, (P, mode, boundary, sigma, noisy) in enumerate(cases):
        z, data, s, _ = random_inputs(B=2, C=1, H=9, W=8, N=12, seed=100 + seed, sigma=(sigma, 1.5 * sigma),
                                      query="noisy" if noisy else "gaussian", dtype=torch.float32)
        x64, l64, _ = ref(z.double(), data.double(), s.double(), P, mode, boundary, "all")
        x32r, l32r, _ = ref(z, data, s, P, mode, boundary, "all")
        x32, l32, _ = kernel(z, data, s, P, mode, boundary, "all")
        for what, got, own, exact in (("x0_hat", x32, x32r, x64), ("lse", l32, l32r, l64)):
            err = (got.double() - exact).abs().max().item()
            bound = float32_error_bound(exact, own)
            assert err <= bound, (what, P, mode, boundary, sigma, err, bound)


# ---------------------------------------------------------------------------
# invariances: instruction set, threads, tiling, algorithm, pruning

def _available_isas():
    out = ["generic"]
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx2" in flags and " fma" in flags:
        out.append("avx2")
    if all(f" {f}" in flags for f in ("avx512f", "avx512vl", "avx512bw", "avx512dq")):
        out.append("avx512")
    return out


def assert_argmax_where_well_defined(best, z, data, s, P, mode, boundary, keys, lw, min_covered=0.9):
    """The float32 kernel's best key equals the float64 reference's at every pixel whose
    float64 top-2 logit gap exceeds twice the float32 logit error bound (elsewhere float32
    rounding may legitimately pick the runner-up), and such pixels are at least
    ``min_covered`` of all, so the check is not vacuous."""
    best64 = ref(z.double(), data.double(), s.double(), P, mode, boundary, keys, lw.double())[2]
    first, second = top_two_logits(z, data, s, P, mode, boundary, keys, lw)
    sumw = patch_weight_sum(*z.shape[1:], P, mode, boundary)
    clear = (first - second) > 2 * float32_logit_error(first, sumw)
    assert clear.double().mean().item() >= min_covered, clear.double().mean().item()
    assert torch.equal(best[clear], best64[clear]), f"best key differs at {(best != best64)[clear].sum().item()} pixels"


@pytest.mark.parametrize("isa", _available_isas())
def test_every_isa_build_matches_reference(isa, knobs):
    """float64: x0_hat, lse and best key as the reference (TOL[float64], exactly). float32:
    x0_hat and lse as the float32 reference to a few ulps, the best key as the float64
    reference's wherever it is well defined in float32."""
    knobs(ISA=isa)
    for mode, boundary, keys in MACHINES:
        for dtype in (torch.float64, torch.float32):
            z, data, s, lw = random_inputs(B=2, C=2, H=7, W=6, N=19, seed=3, sigma=(0.8, 1.2), query="gaussian",
                                           logw=True, mode=mode, dtype=dtype)
            out = kernel(z, data, s, 3, mode, boundary, keys, lw)
            expected = ref(z, data, s, 3, mode, boundary, keys, lw)
            if dtype == torch.float64:
                assert_close_to_reference(out, expected)
            else:
                x, lse, best = out
                torch.testing.assert_close(x, expected[0], **FLOAT32_SAME_INPUTS_TOL)
                torch.testing.assert_close(lse, expected[1], **FLOAT32_SAME_INPUTS_TOL)
                assert_argmax_where_well_defined(best, z, data, s, 3, mode, boundary, keys, lw)


def test_unknown_isa_is_an_error(knobs):
    knobs(ISA="sse9")
    z, data, s, _ = random_inputs(B=2, C=1, H=6, W=5, N=3, sigma=(0.8, 1.2), query="gaussian")
    with pytest.raises(RuntimeError, match="CREATIVITY_FAST_CPU_ISA"):
        kernel(z, data, s, 3, "els", "zeros", "all")


def test_unknown_algo_is_an_error(knobs):
    knobs(ALGO="box")  # formerly an alias of auto
    z, data, s, _ = random_inputs(B=2, C=1, H=6, W=5, N=3, sigma=(0.8, 1.2), query="gaussian")
    with pytest.raises(RuntimeError, match="CREATIVITY_FAST_CPU_ALGO must be auto, gw or direct"):
        kernel(z, data, s, 3, "els", "zeros", "all")


def test_thread_count_does_not_change_a_bit():
    before = torch.get_num_threads()
    try:
        for B in (1, 3):  # B=1: the rows are split into more work units with more threads
            z, data, s, lw = random_inputs(B=B, C=1, H=9, W=7, N=21, seed=B, sigma=(0.8, 1.2), query="gaussian",
                                           logw=True, dtype=torch.float32)
            outs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outs.append(kernel(z, data, s, 5, "els", "circular", "all", lw))
            for a, b in zip(*outs):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("boundary,P", [("zeros", 3), ("zeros", 7), ("circular", 5), ("circular", 11)])
def test_tiling_algorithms_and_pruning(boundary, P, knobs):
    """Row tiling and pruning change no bit; every distance algorithm matches the reference."""
    for dtype in (torch.float32, torch.float64):
        z, data, s, lw = random_inputs(B=2, C=1, H=10, W=9, N=18, seed=P, sigma=(0.05, 0.075), query="noisy",
                                       logw=True, dtype=dtype)
        base = kernel(z, data, s, P, "els", boundary, "all", lw)
        for setting in (dict(TILE_ROWS=1), dict(TILE_ROWS=3), dict(TILE_ROWS=10), dict(PRUNE=0),
                        dict(SLIDE_MIN=2), dict(SLIDE_MIN=100)):
            knobs(**setting)
            got = kernel(z, data, s, P, "els", boundary, "all", lw)
            knobs(**{k: None for k in setting})
            exact = not any(k == "SLIDE_MIN" for k in setting)  # window-sum order changes rounding only
            for a, b in zip(got, base):
                if exact or a.dtype == torch.int64:
                    assert torch.equal(a, b), setting
                else:
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        expected = ref(z.double(), data.double(), s.double(), P, "els", boundary, "all", lw.double())
        for algo in ("auto", "gw", "direct"):
            knobs(ALGO=algo)
            x, lse, best = kernel(z, data, s, P, "els", boundary, "all", lw)
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            torch.testing.assert_close(x.double(), expected[0], rtol=tol, atol=tol)
            torch.testing.assert_close(lse.double(), expected[1], rtol=tol, atol=tol)
        knobs(ALGO=None)


@pytest.mark.parametrize("boundary", ["zeros", "circular"])
@pytest.mark.parametrize("C,argmax", [(1, True), (3, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [(0.01, 0.015), (0.05, 0.1)])
def test_pruning_at_low_noise_is_exact(knobs, boundary, C, argmax, dtype, sigma):
    # Low noise: most keys' weights underflow and pruning skips them, in the general row
    # path and in the branch-free one, which packs the survivors first when fewer than
    # half survive. At sigma ~ 0.01 the survivors other than the best key weigh < 1e-16,
    # so only sigma ~ 0.05-0.1 shows a packing error in the result. 16 x 15 images give ~240
    # displacements: once the running maxima have settled, most rows are free of new
    # maxima and take the branch-free path.
    # Smooth images: neighbouring displacements give near-identical patches, so keys that
    # raise no maximum still carry visible weight in the packed rows.
    g = torch.Generator().manual_seed(7)
    coarse = torch.rand(16, C, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    data = torch.nn.functional.interpolate(coarse, size=(16, 15), mode="bilinear", align_corners=True).to(dtype)
    z = data[:2] + torch.tensor(sigma, dtype=dtype)[:, None, None, None] * torch.randn(
        2, C, 16, 15, generator=g, dtype=torch.float64).to(dtype)
    s = torch.tensor(sigma, dtype=dtype)
    pruned = kernel(z, data, s, 5, "els", boundary, "all", argmax=argmax)
    knobs(PRUNE=0)
    full = kernel(z, data, s, 5, "els", boundary, "all", argmax=argmax)
    for a, b in zip(pruned, full):
        assert torch.equal(a, b)
    torch.testing.assert_close(pruned[0].double(), ref(z.double(), data.double(), s.double(), 5, "els", boundary,
                                                       "all")[0], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# provenance, removed keys, edge cases

@pytest.mark.parametrize("mode,boundary,keys", MACHINES)
def test_argmax_ties_go_to_the_lowest_key(mode, boundary, keys):
    """Duplicated images and constant regions make exact ties; the lowest (mu, y) must win."""
    g = torch.Generator().manual_seed(11)
    base = torch.rand(2, 1, 7, 6, generator=g, dtype=torch.float64) * 2 - 1
    base[:, :, :3, :3] = -1.0  # a constant corner: identical patches at several places
    data = torch.cat([base, base.flip(0), base], 0)  # every image appears twice or more
    z = torch.cat([base[:1], torch.full_like(base[:1], -1.0)], 0)
    s = torch.tensor([0.05, 0.4], dtype=torch.float64)
    out = kernel(z, data, s, 3, mode, boundary, keys)
    assert_close_to_reference(out, ref(z, data, s, 3, mode, boundary, keys))


def test_removed_keys():
    z, data, s, lw = random_inputs(B=2, C=1, H=5, W=5, N=4, sigma=(0.8, 1.2), query="gaussian", logw=True)
    lw[1] = float("-inf")           # a whole image removed
    lw[2, 2:, :] = float("-inf")    # part of another
    for mode, boundary, keys in MACHINES[1:]:
        out = kernel(z, data, s, 3, mode, boundary, keys, lw)
        assert_close_to_reference(out, ref(z, data, s, 3, mode, boundary, keys, lw))
        assert not (out[2] // 25 == 1).any()


def test_rectangular_images_and_many_channels():
    z, data, s, lw = random_inputs(B=1, C=4, H=3, W=11, N=3, sigma=1.2, query="gaussian", logw=True)
    for P in (1, 3, 5, 23):
        for boundary in ("zeros", "circular"):
            out = kernel(z, data, s, P, "els", boundary, "all", lw)
            assert_close_to_reference(out, ref(z, data, s, P, "els", boundary, "all", lw))


def test_operator_argument_errors():
    z, data, s, _ = random_inputs(B=2, C=1, H=6, W=5, N=3, sigma=(0.8, 1.2), query="gaussian")
    with pytest.raises(RuntimeError, match="odd positive"):
        OP(z, data, s, 4, "els", "zeros", "all", None, False)
    with pytest.raises(RuntimeError, match="mode"):
        OP(z, data, s, 3, "nope", "zeros", "all", None, False)
    with pytest.raises(RuntimeError, match="match z"):
        OP(z, data[:, :, :4], s, 3, "els", "zeros", "all", None, False)
    with pytest.raises(RuntimeError, match="key_logw"):
        OP(z, data, s, 3, "els", "zeros", "all", torch.zeros(3, dtype=z.dtype), False)


# ---------------------------------------------------------------------------
# gradients

@pytest.mark.parametrize("mode,boundary,keys", MACHINES)
def test_gradcheck(mode, boundary, keys):
    z, data, s, lw = random_inputs(B=2, C=1, H=4, W=5, N=3, sigma=(0.8, 1.2), query="gaussian", logw=True, mode=mode)
    z.requires_grad_(True)
    P = 3 if keys == "valid" else 5

    def f(z):
        out = cf.patch_posterior_mean(z, data, s, P, mode=mode, boundary=boundary, keys=keys, key_logw=lw,
                                      return_stats=True)
        return out.x0_hat, out.lse  # lse is differentiable too

    assert torch.autograd.gradcheck(f, (z,))


def test_backward_matches_reference_autograd():
    for mode, boundary, keys in MACHINES:
        z, data, s, lw = random_inputs(B=2, C=2, H=7, W=6, N=7, seed=5, sigma=(0.8, 1.2), query="gaussian",
                                       logw=True, mode=mode)
        gx = torch.randn_like(z)
        gl = torch.randn(2, 7, 6, dtype=z.dtype)
        grads = []
        for fn in (lambda z: kernel(z, data, s, 3, mode, boundary, keys, lw, False),
                   lambda z: ref(z, data, s, 3, mode, boundary, keys, lw)):
            zz = z.clone().requires_grad_(True)
            x, lse, _ = fn(zz)
            grads.append(torch.autograd.grad((x * gx).sum() + (lse * gl).sum(), zz)[0])
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)


def test_opcheck():
    z, data, s, lw = random_inputs(B=2, C=1, H=5, W=4, N=3, sigma=(0.8, 1.2), query="gaussian", logw=True)
    z.requires_grad_(True)
    for args in ((z, data, s, 3, "els", "zeros", "all", None, False),
                 (z, data, s, 3, "els", "circular", "all", lw, True),
                 (z, data, s, 1, "ideal", "zeros", "all", None, True)):
        torch.library.opcheck(torch.ops.creativity_fast.patch_posterior_mean.default, args)


# ---------------------------------------------------------------------------
# memory: nothing beyond the data grows with N

MEMORY_PROBE = textwrap.dedent("""
    import sys, torch
    import creativity_fast  # noqa: F401  (registers the kernel)
    torch.set_num_threads(1)
    n, extra = int(sys.argv[1]), sys.argv[2] == "probe"
    op = torch.ops.creativity_fast.patch_posterior_mean
    z = torch.rand(1, 1, 8, 8); s = torch.ones(1)
    op(z, torch.rand(20, 1, 8, 8), s, 3, "els", "circular", "all", None, True)  # warm up
    data = torch.rand(n, 1, 8, 8)

    def status(key):  # KiB
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])

    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    before = status("VmRSS")
    if extra:  # what an O(N) temporary the size of the data looks like
        torch.empty(n, 1, 8, 8).fill_(1.0)
    op(z, data, s, 3, "els", "circular", "all", None, True)
    print(status("VmHWM") - before)
""")


def _peak_growth_kib(n, probe=False):
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(n), "probe" if probe else "kernel"],
                         capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc peak-RSS reset")
def test_kernel_memory_does_not_grow_with_N():
    small, large = _peak_growth_kib(500), _peak_growth_kib(40000)
    data_kib = 40000 * 64 * 4 // 1024  # 10 MiB of training data at N = 40000
    # the measurement sees an O(N) temporary the size of the data ...
    assert _peak_growth_kib(40000, probe=True) > data_kib // 2
    # ... and the kernel needs no such thing: its scratch is per work unit, O(H*W)
    assert large - small < data_kib // 8, (small, large)
