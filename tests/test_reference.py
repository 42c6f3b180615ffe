"""The pure-PyTorch reference against the brute-force float64 oracle and the limits of docs/theory.md §3.3.

Inputs come from ``helpers.random_inputs`` with ``QUERIES``.
"""

import itertools

import pytest
import torch

import creativity_fast as cf
from creativity_fast.reference import patch_posterior_mean_reference as reference

from helpers import OPERATOR_VARIANTS, random_inputs, stable_seed
from oracle import oracle

CASES = OPERATOR_VARIANTS  # (mode, boundary, keys)


# queries unrelated to the data: 1.5 times standard Gaussian noise (data uniform in [-1, 1])
QUERIES = dict(query="gaussian", query_scale=1.5)


@pytest.mark.parametrize("mode,boundary,keys", CASES)
@pytest.mark.parametrize("P", [1, 3, 5, 11])
@pytest.mark.parametrize("shape", [(2, 3, 1, 4, 5), (1, 1, 3, 5, 3), (2, 5, 1, 3, 6)])
def test_reference_matches_oracle(mode, boundary, keys, P, shape):
    B, N, C, H, W = shape
    if keys == "valid" and (P > H or P > W):
        pytest.skip("keys='valid' needs a patch that fits")
    seed = stable_seed(mode, boundary, keys, P, shape)  # the same in every process, unlike hash()
    z, data, sigma, key_logw = random_inputs(B=B, C=C, H=H, W=W, N=N, seed=seed, sigma=(0.3, 4.0), **QUERIES,
                                             logw=True, mode=mode)
    for logw in (None, key_logw):
        want, want_lse, want_best = oracle(z, data, sigma, P, mode, boundary, keys, logw)
        got = cf.patch_posterior_mean(z, data, sigma, P, mode=mode, boundary=boundary, keys=keys,
                                      key_logw=logw, return_stats=True, backend="reference", chunk_size=2)
        torch.testing.assert_close(got.x0_hat, want, rtol=0, atol=1e-10)
        torch.testing.assert_close(got.lse, want_lse, rtol=1e-12, atol=1e-10)
        assert torch.equal(got.argmax, want_best)


@pytest.mark.parametrize("mode,boundary,keys", CASES)
def test_chunk_size_invariance(mode, boundary, keys):
    z, data, _, _ = random_inputs(B=3, C=2, H=7, W=6, N=9, seed=1, **QUERIES, dtype=torch.float32)
    runs = [reference(z, data, torch.full((3,), 0.5), 3, mode, boundary, keys, chunk_size=c) for c in (1, 4, 9)]
    for x0, lse, best in runs[1:]:
        torch.testing.assert_close(x0, runs[0][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(lse, runs[0][1], rtol=0, atol=1e-5)
        assert torch.equal(best, runs[0][2])


def test_memory_budget_picks_chunks_without_changing_result():
    z, data, _, _ = random_inputs(B=2, C=1, H=5, W=5, N=6, seed=2, **QUERIES)
    sigma = torch.full((2,), 0.7, dtype=torch.float64)
    a = reference(z, data, sigma, 3, "els", "zeros", memory_budget=1)  # one image per chunk
    b = reference(z, data, sigma, 3, "els", "zeros", memory_budget=2**30)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-12)


def test_circular_els_commutes_with_cyclic_shifts():
    z, data, _, _ = random_inputs(B=2, C=3, H=6, W=7, N=4, seed=3, **QUERIES)
    for P in (3, 5, 9):
        out = cf.patch_posterior_mean(z, data, 0.8, P, mode="els", boundary="circular", backend="reference")
        for shift in [(1, 0), (2, 3), (-1, 5)]:
            shifted = cf.patch_posterior_mean(torch.roll(z, shift, dims=(2, 3)), data, 0.8, P, mode="els",
                                              boundary="circular", backend="reference")
            torch.testing.assert_close(shifted, torch.roll(out, shift, dims=(2, 3)), rtol=0, atol=1e-12)


def test_zero_boundary_els_commutes_with_interior_shifts():
    # A query whose patches at x and x+s are both interior sees the same dictionary.
    gen = torch.Generator().manual_seed(4)
    H, W, P = 12, 12, 3
    data = torch.rand(3, 1, H, W, generator=gen, dtype=torch.float64) * 2 - 1
    z = torch.zeros(1, 1, H, W, dtype=torch.float64)
    z[..., 3:7, 3:7] = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    out = cf.patch_posterior_mean(z, data, 0.5, P, mode="els", backend="reference")
    out2 = cf.patch_posterior_mean(torch.roll(z, (2, 1), dims=(2, 3)), data, 0.5, P, mode="els", backend="reference")
    # pixels x with both x and x - shift interior (rows m..H-1-m, m = 1)
    interior = (slice(None), slice(None), slice(1 + 2, H - 1), slice(1 + 1, W - 1))
    torch.testing.assert_close(torch.roll(out, (2, 1), dims=(2, 3))[interior], out2[interior], rtol=0, atol=1e-12)


def test_local_equals_ideal_for_huge_patches():
    z, data, _, _ = random_inputs(B=2, C=2, H=4, W=6, N=5, seed=5, **QUERIES)
    ideal = cf.patch_posterior_mean(z, data, 1.3, 1, mode="ideal", backend="reference")
    for P in (2 * 6 - 1, 31):
        local = cf.patch_posterior_mean(z, data, 1.3, P, mode="local", backend="reference")
        torch.testing.assert_close(local, ideal, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode,boundary,keys", CASES)
def test_outputs_are_convex_combinations_of_training_pixels(mode, boundary, keys):
    z, data, _, _ = random_inputs(B=2, C=3, H=5, W=6, N=4, seed=6, **QUERIES)
    out = cf.patch_posterior_mean(z, data, 2.0, 3, mode=mode, boundary=boundary, keys=keys, backend="reference")
    lo = data.amin(dim=(0, 2, 3)).reshape(1, -1, 1, 1)
    hi = data.amax(dim=(0, 2, 3)).reshape(1, -1, 1, 1)
    assert bool((out >= lo - 1e-12).all() and (out <= hi + 1e-12).all())
    # one training image: every local/ideal output is exactly that image
    if mode in ("ideal", "local"):
        single = cf.patch_posterior_mean(z, data[:1], 2.0, 3, mode=mode, boundary=boundary, backend="reference")
        torch.testing.assert_close(single, data[:1].expand_as(single), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode,boundary,keys", CASES)
def test_small_sigma_gives_nearest_admissible_patch_centre(mode, boundary, keys):
    z, data, _, _ = random_inputs(B=2, C=1, H=5, W=6, N=3, seed=7, **QUERIES)
    P = 3
    _, _, best = oracle(z, data, torch.ones(2, dtype=torch.float64), P, mode, boundary, keys)
    out = cf.patch_posterior_mean(z, data, 1e-4, P, mode=mode, boundary=boundary, keys=keys, backend="reference")
    W = z.shape[3]
    nearest = data[best[..., 0], :, best[..., 1] // W, best[..., 1] % W].permute(0, 3, 1, 2)
    torch.testing.assert_close(out, nearest, rtol=0, atol=1e-9)


def test_sigma_per_sample_matches_separate_calls():
    z, data, _, _ = random_inputs(B=3, C=1, H=5, W=5, N=4, seed=8, **QUERIES)
    sigma = torch.tensor([0.2, 1.0, 5.0], dtype=torch.float64)
    both = cf.patch_posterior_mean(z, data, sigma, 3, backend="reference")
    for b in range(3):
        one = cf.patch_posterior_mean(z[b:b + 1], data, float(sigma[b]), 3, backend="reference")
        torch.testing.assert_close(both[b:b + 1], one, rtol=0, atol=1e-12)


def test_reference_is_differentiable_in_float64():
    z, data, _, _ = random_inputs(B=1, C=1, H=4, W=5, N=3, seed=9, **QUERIES)
    for mode, boundary, keys in CASES:
        fn = lambda zz: cf.patch_posterior_mean(zz, data, 0.9, 3, mode=mode, boundary=boundary, keys=keys,  # noqa
                                                backend="reference")
        assert torch.autograd.gradcheck(fn, (z.clone().requires_grad_(),), eps=1e-6, atol=1e-7)


# --- docs/theory.md §10: bad inputs ------------------------------------------------------

def _ok():
    return torch.zeros(2, 1, 5, 5), torch.zeros(3, 1, 5, 5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(P=4), "P must be an odd positive int"),
    (dict(P=0), "P must be an odd positive int"),
    (dict(P=-3), "P must be an odd positive int"),
    (dict(P=3.0), "P must be an odd positive int"),
    (dict(sigma=0.0), "sigma"),
    (dict(sigma=-1.0), "sigma"),
    (dict(sigma=float("nan")), "sigma"),
    (dict(sigma=torch.ones(3)), "sigma"),
    (dict(sigma=torch.tensor([1.0, 0.0])), "sigma"),
    (dict(mode="nonlocal"), "mode must be one of"),
    (dict(boundary="reflect"), "boundary must be one of"),
    (dict(keys="some"), "keys must be one of"),
    (dict(backend="gpu"), "backend must be one of"),
    (dict(keys="valid"), "keys='valid' applies only"),
    (dict(keys="valid", mode="els", boundary="circular", P=7), "keys='valid' needs P <= H"),
    (dict(z=torch.zeros(2, 3, 5, 5)), "do not match"),
    (dict(z=torch.zeros(2, 1, 5, 6)), "do not match"),
    (dict(z=torch.zeros(1, 5, 5)), "z must have shape"),
    (dict(data=torch.zeros(0, 1, 5, 5)), "data is empty"),
    (dict(data=torch.full((3, 1, 5, 5), float("nan"))), "data contains NaN"),
    (dict(z=torch.full((2, 1, 5, 5), float("inf"))), "z contains NaN"),
    (dict(z=torch.zeros(2, 1, 5, 5, dtype=torch.int64)), "z must be a floating-point"),
    (dict(data=[[0.0]]), "data must be a torch.Tensor"),
    (dict(key_logw=torch.zeros(3, 5)), "key_logw must have shape"),
    (dict(key_logw=torch.full((3, 5, 5), float("nan"))), "key_logw must not contain NaN"),
    (dict(z=torch.zeros(2, 1, 5, 5, device="meta")), "device|meta"),
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
    z, data = _ok()
    args = dict(z=z, data=data, sigma=1.0, P=3)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        cf.patch_posterior_mean(args.pop("z"), args.pop("data"), args.pop("sigma"), args.pop("P"), **args)


def test_admissible_counts_match_the_spec_rules():
    # zeros ELS: an interior pixel sees (H-P+1)(W-P+1) keys per image, a corner exactly one.
    H, W, P = 7, 9, 3
    sizes = cf.dictionary.dictionary_size(H, W, P, "els", "zeros")
    assert int(sizes[3, 4]) == (H - P + 1) * (W - P + 1)
    assert int(sizes[0, 0]) == 1 and int(sizes[0, 4]) == W - P + 1
    assert cf.count_pairs(2, 5, H, W, P, "els", "circular") == 2 * 5 * (H * W) ** 2
    # P > H and P > W: every pixel is a corner (LS)
    assert int(cf.dictionary.dictionary_size(4, 5, 11, "els", "zeros").max()) == 1
    for size, P in itertools.product((1, 4, 7), (1, 3, 9, 15)):
        offsets, weights = cf.patch_offsets(P, size, "circular")
        assert sum(weights) == P


def test_reference_memory_does_not_grow_with_the_data_set():
    # Peak RSS of one ELS step at N=1500 vs N=150 in fresh processes, with a 16 MiB
    # chunk budget: the streaming softmax holds one chunk at a time, so only the data
    # themselves (1 MB) may add. Materialising [queries x keys] would need ~500 MB here.
    import subprocess
    import sys
    code = (
        "import resource, sys, torch\n"
        "from creativity_fast.reference import patch_posterior_mean_reference as ref\n"
        "torch.manual_seed(0); N = int(sys.argv[1])\n"
        "data = torch.rand(N, 1, 12, 12) * 2 - 1; z = torch.randn(2, 1, 12, 12)\n"
        "ref(z, data, torch.ones(2), 3, 'els', 'zeros', memory_budget=16 * 2**20)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    peak = {n: int(subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True,
                                  check=True, timeout=600).stdout.split()[-1]) for n in (150, 1500)}
    assert (peak[1500] - peak[150]) / 1024 < 48, peak  # MiB
