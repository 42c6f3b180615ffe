"""The paired-patch operator (docs/theory.md §3.7, §4): twin against the literal oracle, kernel against the twin.

``paired_patch_posterior_mean`` adds to every ELS logit a second distance, between the
query's partner window and the key's partner window. Checked here:

- the pure-PyTorch twin against ``oracle.paired_oracle`` (loops over pixels and keys, float64)
  on tiny inputs: both boundaries (and circular keys='valid'), P2 != P, C = 1 and 3, H != W,
  N = 1, partners that include -1 (no partner);
- ``beta = 0`` is ELS (``patch_posterior_mean``) to 1e-12, on every backend;
- the compiled CPU kernel against the twin in float64 (1e-10) and float32 (the precision
  contract: 1e-5 * max(1, max|data|) absolute, sigma >= 1e-3 * max(1, max|data|));
- gradients with respect to z (gradcheck), opcheck, and argument errors on both layers.
"""

import pytest
import torch

import creativity_fast as cf
from creativity_fast import ops
from creativity_fast.reference import paired_patch_posterior_mean_reference

from helpers import random_inputs, random_partners, stable_seed
from oracle import paired_oracle

KERNEL = ops.has_kernel("cpu", "paired_patch_posterior_mean")
needs_kernel = pytest.mark.skipif(not KERNEL, reason="paired_patch_posterior_mean CPU kernel not built")
BACKENDS = ("reference", "kernel") if KERNEL else ("reference",)
VARIANTS = (("zeros", "all"), ("circular", "all"), ("circular", "valid"))




def problem(B, N, C, H, W, seed, dtype=torch.float64, sigma=(0.4, 1.5)):
    z, data, s, _ = random_inputs(B=B, C=C, H=H, W=W, N=N, seed=seed, sigma=sigma, query="gaussian",
                                  query_scale=1.2, dtype=dtype)
    q, k = random_partners(B, N, H, W, seed + 1)
    return z, data, s, q, k


@pytest.mark.parametrize("boundary,keys", VARIANTS)
@pytest.mark.parametrize("P,P2", [(3, 3), (3, 5), (5, 1), (1, 3)])
@pytest.mark.parametrize("shape", [(2, 3, 1, 4, 5), (1, 1, 3, 5, 3), (2, 2, 1, 3, 6)])
def test_twin_matches_literal_oracle(boundary, keys, P, P2, shape):
    B, N, C, H, W = shape
    if keys == "valid" and (P > H or P > W):
        pytest.skip("keys='valid' needs a patch that fits")
    z, data, s, q, k = problem(B, N, C, H, W, stable_seed(boundary, keys, P, P2, shape))
    beta = 1.0 if P2 == P else 2.5  # the optimum, and a stronger partner weight
    want, want_lse, want_best = paired_oracle(z, data, s, P, P2, q, k, beta, boundary, keys)
    got = cf.paired_patch_posterior_mean(z, data, s, P, q, k, beta=beta, P2=P2, boundary=boundary, keys=keys,
                                         return_stats=True, backend="reference", chunk_size=2)
    torch.testing.assert_close(got.x0_hat, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(got.lse, want_lse, rtol=1e-12, atol=1e-10)
    assert torch.equal(got.argmax, want_best)


def test_the_partner_term_changes_the_result():
    """Guards the oracle test against a twin that ignores the partners."""
    z, data, s, q, k = problem(2, 4, 1, 5, 6, 3)
    els = cf.patch_posterior_mean(z, data, s, 3, backend="reference")
    pels = cf.paired_patch_posterior_mean(z, data, s, 3, q, k, beta=1.0, backend="reference")
    assert (pels - els).abs().max() > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("boundary,keys", VARIANTS)
def test_beta_zero_is_els(backend, boundary, keys):
    z, data, s, q, k = problem(2, 5, 3, 6, 5, 7)
    for P, P2 in ((3, 5), (5, 3)):
        els = cf.patch_posterior_mean(z, data, s, P, boundary=boundary, keys=keys, return_stats=True,
                                      backend=backend)
        pels = cf.paired_patch_posterior_mean(z, data, s, P, q, k, beta=0.0, P2=P2, boundary=boundary, keys=keys,
                                              return_stats=True, backend=backend)
        torch.testing.assert_close(pels.x0_hat, els.x0_hat, rtol=0, atol=1e-12)
        torch.testing.assert_close(pels.lse, els.lse, rtol=0, atol=1e-12)
        assert torch.equal(pels.argmax, els.argmax)


def test_twin_chunk_size_invariance():
    z, data, s, q, k = problem(2, 7, 2, 5, 6, 11)
    a = paired_patch_posterior_mean_reference(z, data, s, 3, 5, q, k, 1.5, "zeros", chunk_size=1)
    b = paired_patch_posterior_mean_reference(z, data, s, 3, 5, q, k, 1.5, "zeros", chunk_size=7)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_identical_partners_cancel():
    """When every partner window of the query equals every key's (the same constant image), the term vanishes."""
    z, data, s, _, _ = problem(1, 3, 1, 5, 5, 2)
    data = data.clone()
    z = z.clone()
    q = torch.zeros(1, 5, 5, dtype=torch.long)  # partner: pixel (0, 0) everywhere
    k = torch.zeros(3, 5, 5, dtype=torch.long)
    data[:, :, :2, :2] = 0.25  # the P2 = 3 window at (0, 0) reads rows/cols 0..1
    z[:, :, :2, :2] = 0.25
    els = cf.patch_posterior_mean(z, data, s, 3, backend="reference")
    pels = cf.paired_patch_posterior_mean(z, data, s, 3, q, k, beta=3.0, backend="reference")
    torch.testing.assert_close(pels, els, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# the compiled CPU kernel


@needs_kernel
@pytest.mark.parametrize("boundary,keys", VARIANTS)
@pytest.mark.parametrize("P,P2", [(3, 3), (3, 5), (5, 1), (7, 3)])
@pytest.mark.parametrize("shape", [(2, 3, 1, 7, 9), (1, 1, 3, 6, 5), (3, 13, 2, 5, 8)])
def test_kernel_matches_twin_float64(boundary, keys, P, P2, shape):
    B, N, C, H, W = shape
    if keys == "valid" and (P > H or P > W):
        pytest.skip("keys='valid' needs a patch that fits")
    z, data, s, q, k = problem(B, N, C, H, W, stable_seed("k", boundary, keys, P, P2, shape))
    for beta in (1.0, 4.0):
        want = cf.paired_patch_posterior_mean(z, data, s, P, q, k, beta=beta, P2=P2, boundary=boundary, keys=keys,
                                              return_stats=True, backend="reference")
        got = cf.paired_patch_posterior_mean(z, data, s, P, q, k, beta=beta, P2=P2, boundary=boundary, keys=keys,
                                             return_stats=True, backend="kernel")
        torch.testing.assert_close(got.x0_hat, want.x0_hat, rtol=0, atol=1e-10)
        torch.testing.assert_close(got.lse, want.lse, rtol=1e-12, atol=1e-10)
        assert torch.equal(got.argmax, want.argmax)


@needs_kernel
def test_kernel_matches_literal_oracle():
    z, data, s, q, k = problem(2, 3, 3, 5, 4, 21)
    for boundary in ("zeros", "circular"):
        want, want_lse, want_best = paired_oracle(z, data, s, 3, 5, q, k, 1.3, boundary)
        got = cf.paired_patch_posterior_mean(z, data, s, 3, q, k, beta=1.3, P2=5, boundary=boundary,
                                             return_stats=True, backend="kernel")
        torch.testing.assert_close(got.x0_hat, want, rtol=0, atol=1e-10)
        torch.testing.assert_close(got.lse, want_lse, rtol=1e-12, atol=1e-10)
        assert torch.equal(got.argmax, want_best)


@needs_kernel
@pytest.mark.parametrize("boundary", ["zeros", "circular"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_kernel_float32_precision_contract(boundary, scale):
    """float32 x0_hat within 1e-5 * max(1, max|data|) of the float64 value, sigma down to 1e-3 * max(1, max|data|)."""
    z, data, _, q, k = problem(4, 9, 2, 7, 6, 31)
    z, data = (z * scale).float(), (data * scale).float()
    bound = max(1.0, float(data.abs().max()))
    for sigma in (1e-3 * bound, 0.02 * bound, 0.3 * bound, 3.0 * bound):
        s = torch.full((4,), sigma, dtype=torch.float32)
        exact = cf.paired_patch_posterior_mean(z.double(), data.double(), s.double(), 3, q, k, beta=1.0, P2=5,
                                               boundary=boundary, backend="reference")
        got = cf.paired_patch_posterior_mean(z, data, s, 3, q, k, beta=1.0, P2=5, boundary=boundary,
                                             backend="kernel")
        assert got.dtype == torch.float32
        err = (got.double() - exact).abs().max().item()
        assert err <= 1e-5 * bound, (sigma, err)


@needs_kernel
def test_kernel_is_independent_of_threads_and_tiling(monkeypatch):
    z, data, s, q, k = problem(2, 11, 1, 9, 7, 41)
    args = (z, data, s, 5, q, k)
    base = cf.paired_patch_posterior_mean(*args, beta=1.0, P2=3, backend="kernel")
    for rows in ("1", "3"):
        monkeypatch.setenv("CREATIVITY_FAST_CPU_TILE_ROWS", rows)
        assert torch.equal(cf.paired_patch_posterior_mean(*args, beta=1.0, P2=3, backend="kernel"), base)
    monkeypatch.delenv("CREATIVITY_FAST_CPU_TILE_ROWS")
    # skipping the partner distance of pruned keys changes no bit (at a small sigma most keys prune)
    for sigma in (s, s * 0.02):
        pruned = cf.paired_patch_posterior_mean(z, data, sigma, 5, q, k, beta=1.0, P2=3, return_stats=True,
                                                backend="kernel")
        monkeypatch.setenv("CREATIVITY_FAST_CPU_PRUNE", "0")
        full = cf.paired_patch_posterior_mean(z, data, sigma, 5, q, k, beta=1.0, P2=3, return_stats=True,
                                              backend="kernel")
        monkeypatch.delenv("CREATIVITY_FAST_CPU_PRUNE")
        assert torch.equal(pruned.x0_hat, full.x0_hat) and torch.equal(pruned.lse, full.lse)
        assert torch.equal(pruned.argmax, full.argmax)
    for isa in ("generic", "avx2"):
        monkeypatch.setenv("CREATIVITY_FAST_CPU_ISA", isa)
        other = cf.paired_patch_posterior_mean(*args, beta=1.0, P2=3, backend="kernel")
        torch.testing.assert_close(other, base, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_through_both_distances(backend):
    z, data, s, q, k = problem(2, 3, 1, 4, 5, 51, sigma=(0.8, 1.2))
    z.requires_grad_(True)

    def f(x):
        out = cf.paired_patch_posterior_mean(x, data, s, 3, q, k, beta=1.5, P2=3, return_stats=True,
                                             backend=backend)
        return out.x0_hat, out.lse

    assert torch.autograd.gradcheck(f, (z,))


@needs_kernel
def test_kernel_gradient_equals_twin_gradient():
    z, data, s, q, k = problem(2, 4, 2, 5, 6, 61)
    g = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for backend in ("kernel", "reference"):
        x = z.clone().requires_grad_(True)
        out = cf.paired_patch_posterior_mean(x, data, s, 3, q, k, beta=2.0, P2=5, boundary="circular",
                                             return_stats=True, backend=backend)
        grads.append(torch.autograd.grad((out.x0_hat * g).sum() + out.lse.sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)


@needs_kernel
def test_opcheck():
    z, data, s, q, k = problem(2, 3, 1, 5, 4, 71, sigma=(0.8, 1.2))
    z.requires_grad_(True)
    op = torch.ops.creativity_fast.paired_patch_posterior_mean.default
    for args in ((z, data, s, 3, 3, q, k, 1.0, "zeros", "all", False),
                 (z, data, s, 3, 5, q, k, 0.5, "circular", "all", True),
                 (z.detach().float(), data.float(), s.float(), 1, 3, q, k, 2.0, "zeros", "all", True)):
        torch.library.opcheck(op, args)


# ---------------------------------------------------------------------------
# argument errors


def _ok():
    z, data, s, q, k = problem(2, 3, 1, 4, 5, 81)
    return dict(z=z, data=data, sigma=s, P=3, query_partner=q, key_partner=k)


@pytest.mark.parametrize("change,error,match", [
    (dict(beta=-1.0), ValueError, "beta must be a finite float >= 0"),
    (dict(beta=float("nan")), ValueError, "beta must be"),
    (dict(P2=4), ValueError, "P2 must be an odd positive int"),
    (dict(P=2), ValueError, "P must be an odd positive int"),
    (dict(query_partner=torch.zeros(2, 4, 5, dtype=torch.int32)), TypeError, "query_partner must be an int64"),
    (dict(query_partner=torch.zeros(2, 5, 4, dtype=torch.long)), ValueError, r"query_partner must have shape \[2, 4, 5\]"),
    (dict(key_partner=torch.zeros(2, 4, 5, dtype=torch.long)), ValueError, r"key_partner must have shape \[3, 4, 5\]"),
    (dict(key_partner=torch.full((3, 4, 5), 20, dtype=torch.long)), ValueError, "key_partner entries must be flat"),
    (dict(query_partner=torch.full((2, 4, 5), -2, dtype=torch.long)), ValueError, "query_partner entries must be"),
    (dict(boundary="reflect"), ValueError, "boundary must be one of"),
    (dict(keys="valid"), ValueError, "keys='valid' applies only"),
])
def test_bad_arguments_raise_naming_the_argument(change, error, match):
    kwargs = _ok()
    kwargs.update(change)
    args = [kwargs.pop(n) for n in ("z", "data", "sigma", "P", "query_partner", "key_partner")]
    with pytest.raises(error, match=match):
        cf.paired_patch_posterior_mean(*args, **kwargs)


@needs_kernel
@pytest.mark.parametrize("position,value,match", [
    (5, torch.zeros(2, 4, 5, dtype=torch.int32), "query_partner must be an int64"),
    (6, torch.zeros(3, 4, 4, dtype=torch.long), r"key_partner must have shape \[3, 4, 5\]"),
    (6, torch.full((3, 4, 5), 20, dtype=torch.long), "key_partner entries must be flat locations"),
    (4, 4, "P2 must be an odd positive int"),
    (7, -0.5, "beta must be a finite float >= 0"),
    (8, "reflect", "boundary must be one of"),
])
def test_operator_checks_its_arguments(position, value, match):
    z, data, s, q, k = problem(2, 3, 1, 4, 5, 91)
    args = [z, data, s, 3, 3, q, k, 1.0, "zeros", "all", False]
    args[position] = value
    with pytest.raises(RuntimeError, match="paired_patch_posterior_mean: " + match):
        torch.ops.creativity_fast.paired_patch_posterior_mean(*args)


@needs_kernel
def test_bench_pels_smoke(tmp_path):
    """bench/bench_pels.py runs end to end on a tiny case and writes its JSON."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "pels.json"
    proc = subprocess.run([sys.executable, str(root / "bench" / "bench_pels.py"), "--n", "4", "--b", "1", "--ps", "3",
                           "--sigmas", "1", "--boundaries", "zeros", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(root)},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["pairs"] > 0 and rows[0]["extra_flops_per_pair"] == 18
    assert set(rows[0]["term_rates_per_s"]) == {"kernel", "double_keys", "dot"}
    assert all(rate > 0 for rate in rows[0]["term_rates_per_s"].values()) and rows[0]["floor_ratio"] > 1
    proc = subprocess.run([sys.executable, str(root / "bench" / "bench_pels.py"), "--n", "16", "--b", "2", "--ps", "3",
                           "--sigmas", "1", "--partner-structure"], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.splitlines()[0])
    assert all(0 <= stats[k] <= 1 for k in ("query_coherent", "key_coherent", "lane_group_coherent"))
    assert len(stats["distinct_query_partners"]) == 2 and 1 <= stats["distinct_key_partners_median"] <= 28 * 28
