"""Peer machines (docs/theory.md §3.6): nearest, smoothed, pca_locality, pspc, and the masked-local operator.

Oracles are brute-force float64 loops written from the spec's sentences and share no
code with the package (numpy for the covariance algebra, Python loops for the softmaxes).
Inputs are tiny so the whole file runs in seconds.
"""

import math

import numpy as np
import pytest
import torch

from creativity_fast import peers
from creativity_fast.commands import common
from creativity_fast.registry import machine_names, make_denoiser
from creativity_fast.ops import has_kernel, patch_posterior_mean
from creativity_fast.ops import MaskedSupport, masked_local_posterior
from creativity_fast.peers import (
    NearestDenoiser,
    PatchPosteriorAverage,
    PCALocalityDenoiser,
    SmoothedDenoiser,
    square_crop_support,
    support_from_mask,
)
from creativity_fast.reference import masked_local_posterior_reference
from creativity_fast.samplers import sample_ddim

KERNEL = has_kernel("cpu", "masked_local_posterior")
needs_kernel = pytest.mark.skipif(not KERNEL, reason="masked_local_posterior kernel not built")
BACKENDS = ["reference"] + (["kernel"] if KERNEL else [])
NEW = ("nearest", "smoothed", "pca_locality", "pspc")


def make_data(N=7, C=1, H=4, W=5, B=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(N, C, H, W, generator=g, dtype=dtype) * 2 - 1
    z = data[torch.arange(B) % N] + 0.6 * torch.randn(B, C, H, W, generator=g, dtype=dtype)
    return z, data


# --------------------------------------------------------------------------- #
# brute-force oracles
# --------------------------------------------------------------------------- #

def softmax_mean(logits, values):
    mx = max(logits)
    w = [math.exp(l - mx) for l in logits]
    s = sum(w)
    return sum(wi * v for wi, v in zip(w, values)) / s


def oracle_ideal(z, data, sigma):
    """docs/theory.md §3.1 for one sample z [C,H,W]."""
    logits = [-float(((z - d) ** 2).sum()) / (2 * sigma ** 2) for d in data]
    return softmax_mean(logits, [d.double() for d in data])


def oracle_nearest(z, data):
    best, best_d = None, float("inf")
    for mu in range(data.shape[0]):
        d = sum(float(a - b) ** 2 for a, b in zip(z.reshape(-1).tolist(), data[mu].reshape(-1).tolist()))
        if d < best_d:  # strict: lowest index on ties
            best, best_d = mu, d
    return best


def oracle_wiener_mask(x2d, sigma, theta):
    """x2d [samples, D] numpy float64 -> Lukoianov mask M [D, D] (M[n, m]: input n, output m)."""
    mean = x2d.mean(0)
    cov = (x2d - mean).T @ (x2d - mean) / x2d.shape[0]
    lam, U = np.linalg.eigh(cov)
    lam = np.clip(lam, 0, None)
    L = U @ np.diag(lam / (lam + sigma ** 2)) @ U.T
    R = np.abs(L) / np.diag(L)[:, None]  # each row of |L| over its diagonal entry
    return (R >= theta * R.max()).astype(np.float64)


def oracle_masked(z, data, sigma, M, tau=1.0):
    """z [U] (or [C, U] with a shared mask), data [N, ...]: per output m,
    sum_i softmax_i(-sum_n M[n, m] (z_n - phi_n)^2 / (2 sigma^2 tau)) phi_m."""
    z = z.reshape(-1, z.shape[-1]).double()
    data = data.reshape(data.shape[0], -1, z.shape[-1]).double()
    U = z.shape[-1]
    out = torch.zeros_like(z)
    for m in range(U):
        logits = []
        for i in range(data.shape[0]):
            d = 0.0
            for n in range(U):
                if M[n, m] != 0:
                    d += float(M[n, m]) * float(((z[:, n] - data[i, :, n]) ** 2).sum())
            logits.append(-d / (2 * sigma ** 2 * tau))
        out[:, m] = softmax_mean(logits, [data[i, :, m] for i in range(data.shape[0])])
    return out


def oracle_pspc(z, data, sigma, P):
    """z [C,H,W]: every crop inside the image, its posterior mean, averaged per pixel."""
    C, H, W = z.shape
    Ph, Pw = min(P, H), min(P, W)
    total = torch.zeros(C, H, W, dtype=torch.float64)
    count = torch.zeros(H, W, dtype=torch.float64)
    for r0 in range(H - Ph + 1):
        for c0 in range(W - Pw + 1):
            crop = lambda x: x[:, r0:r0 + Ph, c0:c0 + Pw].double()  # noqa: E731
            logits = [-float(((crop(z) - crop(d)) ** 2).sum()) / (2 * sigma ** 2) for d in data]
            total[:, r0:r0 + Ph, c0:c0 + Pw] += softmax_mean(logits, [crop(d) for d in data])
            count[r0:r0 + Ph, c0:c0 + Pw] += 1
    return total / count


# --------------------------------------------------------------------------- #
# registry, contract, sampling
# --------------------------------------------------------------------------- #

def test_registered_and_buildable_with_cli_options():
    z, data = make_data()
    for name in NEW:
        assert name in machine_names()
        # the settings every CLI command has; each machine gets those it declares
        kwargs = common.machine_kwargs(name, {}, P=lambda s: 3, boundary="zeros", keys="all", labels=None,
                                       class_label=None, backend="auto", record_stats=True)
        m = make_denoiser(name, data, **kwargs)
        out = m(z, torch.full((z.shape[0],), 0.7, dtype=z.dtype))
        assert out.shape == z.shape and out.dtype == z.dtype and torch.isfinite(out).all()
        with pytest.raises(ValueError, match=f"machine {name!r} does not take the option 'thetta'"):
            make_denoiser(name, data, thetta=0.1)  # a misspelt option is an error, never ignored
    with pytest.raises(ValueError, match="does not take the option 'P'"):
        make_denoiser("pca_locality", data, P=3)


@pytest.mark.parametrize("name", NEW)
def test_sampling_smoke_and_convexity(name):
    z, data = make_data(dtype=torch.float32)
    m = make_denoiser(name, data, **({"P": 3} if name == "pspc" else {}))
    sigmas = torch.tensor([3.0, 1.0, 0.3, 0.0])
    out = sample_ddim(m, 3.0 * torch.randn(2, 1, 4, 5, generator=torch.Generator().manual_seed(1)), sigmas,
                      progress=False)
    assert out.shape == (2, 1, 4, 5) and torch.isfinite(out).all()
    if name != "smoothed":  # every other machine returns a convex combination of training pixels
        x0 = m(z, 0.8)
        lo, hi = data.min(0).values, data.max(0).values
        assert bool((x0 >= lo - 1e-6).all() and (x0 <= hi + 1e-6).all())


def test_argument_errors():
    _, data = make_data()
    with pytest.raises(ValueError, match="J"):
        SmoothedDenoiser(data, J=0)
    with pytest.raises(ValueError, match="s must"):
        SmoothedDenoiser(data, s=-1.0)
    with pytest.raises(ValueError, match="theta"):
        PCALocalityDenoiser(data, theta=2.0)
    with pytest.raises(ValueError, match="tau"):
        PCALocalityDenoiser(data, tau=0.0)
    with pytest.raises(ValueError, match="mask must be"):
        PCALocalityDenoiser(data, mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="odd"):
        PatchPosteriorAverage(data, 4)
    with pytest.raises(ValueError, match="channels"):
        PCALocalityDenoiser(data, channels="rgb")
    m = PatchPosteriorAverage(data, 3)
    with pytest.raises(ValueError, match="sigma"):
        m(data[:2], 0.0)
    with pytest.raises(ValueError, match="do not match|does not match"):
        m(torch.zeros(1, 1, 5, 5, dtype=data.dtype), 1.0)
    bad = MaskedSupport(torch.tensor([0, 1]), torch.tensor([99]), torch.ones(1), torch.tensor([0, 1]),
                        torch.tensor([0]))
    with pytest.raises(ValueError, match="key_index"):
        masked_local_posterior(data[:1].reshape(1, 1, -1), data.reshape(7, 1, -1), 1.0, bad)


# --------------------------------------------------------------------------- #
# nearest
# --------------------------------------------------------------------------- #

def test_nearest_matches_brute_force_and_ignores_sigma():
    z, data = make_data(N=9, C=2, H=3, W=3, B=4)
    m = NearestDenoiser(data, record_stats=True)
    for sigma in (0.01, 1.0, 50.0):
        out = m(z, sigma)
        for b in range(z.shape[0]):
            mu = oracle_nearest(z[b], data)
            assert torch.equal(out[b], data[mu]) and int(m.last_index[b]) == mu
            assert bool((m.last_stats.argmax[b, ..., 0] == mu).all())
    assert torch.equal(m.last_stats.argmax[0, 1, 2, 1], torch.tensor(1 * 3 + 2))


def test_nearest_ties_and_class_conditional():
    _, data = make_data(N=6)
    data[3] = data[1]  # exact duplicate: the lower index wins
    m = NearestDenoiser(data)
    m(data[3:4].clone(), 1.0)
    assert int(m.last_index[0]) == 1
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    mc = NearestDenoiser(data, labels=labels)
    z = data[[0, 2]] + 0.01
    out = mc(z, 1.0, class_labels=torch.tensor([1, 1]))
    for b in range(2):
        assert labels[int(mc.last_index[b])] == 1
        assert torch.equal(out[b], data[int(mc.last_index[b])])
        assert int(mc.last_index[b]) == [1, 3, 5][oracle_nearest(z[b], data[[1, 3, 5]])]


# --------------------------------------------------------------------------- #
# smoothed
# --------------------------------------------------------------------------- #

def test_smoothed_matches_brute_force():
    z, data = make_data(N=5, C=1, H=3, W=3, B=2)
    m = SmoothedDenoiser(data, s=0.4, J=3, seed=7)
    sigma = torch.tensor([0.5, 1.3], dtype=torch.float64)
    out = m(z, sigma)
    xi = m.noise(z)
    for b in range(2):
        expect = sum(oracle_ideal(z[b] + 0.4 * xi[j], data, float(sigma[b])) for j in range(3)) / 3
        torch.testing.assert_close(out[b], expect, rtol=0, atol=1e-12)


def test_smoothed_s0_is_ideal_and_seeded_batch_independent():
    z, data = make_data(N=6, B=3)
    ideal = patch_posterior_mean(z, data, 0.7, 1, mode="ideal")
    torch.testing.assert_close(SmoothedDenoiser(data, s=0.0, J=4)(z, 0.7), ideal, rtol=0, atol=1e-12)
    for b in range(3):
        torch.testing.assert_close(oracle_ideal(z[b], data, 0.7), ideal[b], rtol=0, atol=1e-12)
    m1, m2 = SmoothedDenoiser(data, s=0.5, J=4, seed=3), SmoothedDenoiser(data, s=0.5, J=4, seed=3)
    full = m1(z, 0.7)
    torch.testing.assert_close(full, m1(z, 0.7), rtol=0, atol=0)  # deterministic across calls
    torch.testing.assert_close(full[1:2], m2(z[1:2], 0.7), rtol=0, atol=1e-14)  # not batch dependent
    assert not torch.allclose(full, SmoothedDenoiser(data, s=0.5, J=4, seed=4)(z, 0.7))
    r = SmoothedDenoiser(data, s=0.5, J=4, seed=3, resample=True)
    assert not torch.allclose(r(z, 0.7), r(z, 0.7))


# --------------------------------------------------------------------------- #
# pca_locality
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("channels", ["full", "shared"])
def test_pca_locality_mask_and_output_match_brute_force(channels):
    z, data = make_data(N=8, C=2, H=3, W=3, B=2, seed=1)
    theta, tau = 0.1, 0.8
    m = PCALocalityDenoiser(data, theta=theta, tau=tau, channels=channels, backend="reference")
    if channels == "full":
        x2d = data.reshape(8, -1).numpy()
    else:
        x2d = data.reshape(16, 9).numpy()  # pixel covariance pooled over channels
    for sigma in (0.3, 1.5):
        M = oracle_wiener_mask(x2d, sigma, theta)
        assert 0 < M.sum() < M.size  # a nontrivial mask
        np.testing.assert_array_equal(m.mask(sigma).numpy(), M)
        out = m(z, sigma)
        for b in range(2):
            zb = z[b].reshape(1, -1) if channels == "full" else z[b].reshape(2, 9)
            db = data.reshape(8, 1, -1) if channels == "full" else data.reshape(8, 2, 9)
            expect = oracle_masked(zb, db, sigma, M, tau).reshape(2, 3, 3)
            torch.testing.assert_close(out[b], expect, rtol=0, atol=1e-12)
    assert m.support(0.3) is m.support(0.3)  # cached per sigma value
    assert not torch.equal(m.support(0.3).key_ptr, m.support(50.0).key_ptr)  # M depends on sigma


def published_pca_locality(z, images, sigma, theta, tau=1.0):
    """Lukoianov et al.'s rule written out in float64 numpy, step by step as their released code does it
    (covariance over N - 1, SVD, Wiener matrix, diagonals below an absolute 1e-6 set to 1 in the matrix
    and in the divisor, binary threshold at theta * max), with the exact softmax over all images.
    z [B, C, H, W], images [N, C, H, W] numpy -> (x0_hat [B, C, H, W], mask [D, D])."""
    x = images.reshape(images.shape[0], -1)
    mean = x.mean(0)
    S = (x - mean).T @ (x - mean) / (x.shape[0] - 1)
    U, lam, Vh = np.linalg.svd(S)
    L = U @ np.diag(lam / (lam + sigma ** 2)) @ Vh
    denom = np.diagonal(L).copy()
    small = np.abs(denom) < 1e-6
    denom[small] = 1.0
    idx = np.arange(L.shape[0])[small]
    L[idx, idx] = 1.0
    M = L / denom[:, None]
    M = (np.abs(M) >= np.abs(M).max() * theta).astype(np.float64)
    zf = z.reshape(z.shape[0], -1)
    logits = -(((zf[:, None, :] - x[None, :, :]) ** 2) @ M) / (2 * sigma ** 2 * tau)  # [B, N, D]
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return np.einsum("bkm,km->bm", w, x).reshape(z.shape), M


def test_pca_locality_matches_the_published_rule_on_fashion_mnist():
    """Real images have near-constant border pixels; the published small-diagonal rule matters there
    (the project's earlier relative rule differed from the published code by up to 1.68)."""
    from creativity_fast.data import load_dataset
    images = load_dataset(None, limit=120).images.double()
    g = torch.Generator().manual_seed(5)
    for sigma, backend in ((1.0, "reference"), (3.0, "auto")):
        z = images[:2] + sigma * torch.randn(2, 1, 28, 28, generator=g, dtype=torch.float64)
        expect, M = published_pca_locality(z.numpy(), images.numpy(), sigma, 0.005)
        machine = PCALocalityDenoiser(images, ddof=1, backend=backend)  # default: the published rule
        np.testing.assert_array_equal(machine.mask(sigma).numpy(), M)
        np.testing.assert_allclose(machine(z, sigma).numpy(), expect, rtol=0, atol=1e-10)
        # the earlier relative rule is far off on the same inputs (this test would have caught it)
        relative = PCALocalityDenoiser(images, ddof=1, small_diagonal="relative", backend=backend)
        assert np.abs(relative(z, sigma).numpy() - expect).max() > 0.5
    # the covariance normalisation is an option: N (default) or N - 1 (published); both give masks
    assert PCALocalityDenoiser(images).ddof == 0
    with pytest.raises(ValueError, match="ddof"):
        PCALocalityDenoiser(images, ddof=2)
    with pytest.raises(ValueError, match="small_diagonal"):
        PCALocalityDenoiser(images, small_diagonal="none")


def test_pca_locality_all_ones_mask_and_theta0_are_ideal():
    z, data = make_data(N=6, C=2, H=3, W=4, B=2)
    ideal = patch_posterior_mean(z, data, 0.9, 1, mode="ideal")
    for backend in BACKENDS:
        for kw in (dict(mask=torch.ones(24, 24)), dict(mask=torch.ones(12, 12), channels="shared"), dict(theta=0.0)):
            out = PCALocalityDenoiser(data, backend=backend, **kw)(z, 0.9)
            torch.testing.assert_close(out, ideal, rtol=0, atol=1e-12)


def test_pca_locality_class_conditional_and_chunks():
    z, data = make_data(N=10, B=2)
    labels = torch.tensor([0, 1] * 5)
    m = PCALocalityDenoiser(data, labels=labels, theta=0.05, backend="reference", chunk_size=1)
    sub = PCALocalityDenoiser(data[labels == 1], theta=0.05, backend="reference")
    torch.testing.assert_close(m(z, 0.6, class_labels=torch.tensor([1, 1])), sub(z, 0.6), rtol=0, atol=1e-12)
    mixed = m(z, torch.tensor([0.6, 0.2], dtype=z.dtype), class_labels=torch.tensor([1, 0]))
    torch.testing.assert_close(mixed[0], sub(z[:1], 0.6)[0], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- #
# pspc
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("P", [1, 3, 5])
def test_pspc_matches_brute_force(backend, P):
    z, data = make_data(N=5, C=2, H=4, W=5, B=2)
    sigma = torch.tensor([0.4, 1.1], dtype=torch.float64)
    out = PatchPosteriorAverage(data, P, backend=backend)(z, sigma)
    for b in range(2):
        torch.testing.assert_close(out[b], oracle_pspc(z[b], data, float(sigma[b]), P), rtol=0, atol=1e-12)


def test_pspc_limits():
    z, data = make_data(N=6, C=1, H=5, W=5, B=3)
    ideal = patch_posterior_mean(z, data, 0.8, 1, mode="ideal")
    local1 = patch_posterior_mean(z, data, 0.8, 1, mode="local")
    for backend in BACKENDS:
        torch.testing.assert_close(PatchPosteriorAverage(data, 5, backend=backend)(z, 0.8), ideal, rtol=0, atol=1e-12)
        torch.testing.assert_close(PatchPosteriorAverage(data, 1, backend=backend)(z, 0.8), local1, rtol=0, atol=1e-12)
    z2, data2 = make_data(N=6, H=3, W=5)  # P >= max(H, W): one crop, the whole image
    torch.testing.assert_close(PatchPosteriorAverage(data2, 7)(z2, 0.8),
                               patch_posterior_mean(z2, data2, 0.8, 1, mode="ideal"), rtol=0, atol=1e-12)


def test_pspc_schedule_and_class_conditional():
    z, data = make_data(N=8, B=2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    m = PatchPosteriorAverage(data, lambda s: 3 if s > 1 else 1, labels=labels)
    sigma = torch.tensor([2.0, 0.5], dtype=z.dtype)
    out = m(z, sigma, class_labels=torch.tensor([1, 2]))
    torch.testing.assert_close(out[0], PatchPosteriorAverage(data[3:6], 3)(z[:1], 2.0)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], PatchPosteriorAverage(data[6:], 1)(z[1:], 0.5)[0], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- #
# the masked-local operator: exactness under chunking, kernel beside reference
# --------------------------------------------------------------------------- #

def random_support(U, Q, seed, max_key=6, max_out=3):
    g = torch.Generator().manual_seed(seed)
    klen = torch.randint(0, max_key + 1, (Q,), generator=g)
    olen = torch.randint(0, max_out + 1, (Q,), generator=g)
    klen[0], olen[0] = 0, 2  # an empty key support: uniform weights
    kidx = torch.cat([torch.randperm(U, generator=g)[:k] for k in klen.tolist()])
    oidx = torch.randint(0, U, (int(olen.sum()),), generator=g)
    kw = torch.rand(kidx.numel(), generator=g, dtype=torch.float64) * 2
    ptr = lambda c: torch.cat([torch.zeros(1, dtype=torch.long), c.cumsum(0)])  # noqa: E731
    return MaskedSupport(ptr(klen), kidx, kw, ptr(olen), oidx)


def oracle_support(z, data, sigma, sup):
    """Literal per (b, q) loops over a MaskedSupport. z [B,C,U], data [N,C,U]."""
    B, C, _ = z.shape
    mean = torch.zeros(B, C, sup.out_index.numel(), dtype=torch.float64)
    for b in range(B):
        for q in range(sup.key_ptr.numel() - 1):
            ks = range(int(sup.key_ptr[q]), int(sup.key_ptr[q + 1]))
            logits = [-sum(float(sup.key_weight[k]) * float(((z[b, :, sup.key_index[k]] - d[:, sup.key_index[k]]) ** 2)
                                                            .sum()) for k in ks) / (2 * float(sigma[b]) ** 2)
                      for d in data]
            for j in range(int(sup.out_ptr[q]), int(sup.out_ptr[q + 1])):
                mean[b, :, j] = softmax_mean(logits, [d[:, sup.out_index[j]].double() for d in data])
    return mean


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_operator_random_supports_match_oracle(backend):
    g = torch.Generator().manual_seed(5)
    B, C, U, N = 2, 2, 10, 6
    z = torch.randn(B, C, U, generator=g, dtype=torch.float64)
    data = torch.rand(N, C, U, generator=g, dtype=torch.float64) * 2 - 1
    sigma = torch.tensor([0.7, 1.9], dtype=torch.float64)
    sup = random_support(U, 7, seed=2)
    mean, lse = masked_local_posterior(z, data, sigma, sup, backend=backend)
    torch.testing.assert_close(mean, oracle_support(z, data, sigma, sup), rtol=0, atol=1e-12)
    q = 1  # lse of one unit, literally
    ks = range(int(sup.key_ptr[q]), int(sup.key_ptr[q + 1]))
    for b in range(B):
        logits = [-sum(float(sup.key_weight[k]) * float(((z[b, :, sup.key_index[k]] - d[:, sup.key_index[k]]) ** 2)
                                                        .sum()) for k in ks) / (2 * float(sigma[b]) ** 2)
                  for d in data]
        mx = max(logits)
        assert abs(float(lse[b, q]) - (mx + math.log(sum(math.exp(l - mx) for l in logits)))) < 1e-12


def test_chunking_changes_nothing():
    """Exactness where the published code normalised per data batch: any split of the data is the same."""
    z, data = make_data(N=11, C=2, H=4, W=4, B=3)
    sup = square_crop_support(4, 4, 3)
    z3, d3 = z.reshape(3, 2, 16), data.reshape(11, 2, 16)
    sigma = torch.tensor([0.3, 0.9, 2.0], dtype=torch.float64)
    full = masked_local_posterior_reference(z3, d3, sigma, sup)
    for kw in (dict(chunk_size=1), dict(chunk_size=4), dict(memory_budget=1)):  # budget 1: one unit, one image
        part = masked_local_posterior_reference(z3, d3, sigma, sup, **kw)
        torch.testing.assert_close(part[0], full[0], rtol=0, atol=1e-13)
        torch.testing.assert_close(part[1], full[1], rtol=0, atol=1e-12)
    for m in (PCALocalityDenoiser, PatchPosteriorAverage):
        a = m(data, backend="reference", chunk_size=2)(z, 0.5)
        torch.testing.assert_close(a, m(data, backend="reference")(z, 0.5), rtol=0, atol=1e-13)
    # the published per-batch normalisation would not be invariant:
    w = torch.softmax(torch.randn(11, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0)
    per_batch = (w[:4] / w[:4].sum() * data[:4, 0, 0, 0]).sum() + (w[4:] / w[4:].sum() * data[4:, 0, 0, 0]).sum()
    assert abs(float(per_batch / 2 - (w * data[:, 0, 0, 0]).sum())) > 1e-3


@needs_kernel
def test_kernel_float32_and_large_logits():
    g = torch.Generator().manual_seed(9)
    z = torch.randn(4, 3, 30, generator=g)
    data = torch.rand(40, 3, 30, generator=g) * 2 - 1
    sup = random_support(30, 25, seed=4, max_key=12, max_out=4)
    for sigma in (0.05, 0.5, 5.0):  # 0.05: most weights underflow (pruned exactly)
        a = masked_local_posterior(z, data, sigma, sup, backend="kernel")
        r = masked_local_posterior(z.double(), data.double(), sigma, sup, backend="reference")
        torch.testing.assert_close(a[0].double(), r[0], rtol=0, atol=2e-5)
        torch.testing.assert_close(a[1].double(), r[1], rtol=1e-5, atol=1e-3)


@needs_kernel
def test_kernel_opcheck():
    z, data = make_data(N=4, C=1, H=3, W=3, B=2, dtype=torch.float32)
    sup = square_crop_support(3, 3, 3).to(dtype=torch.float32)
    args = (z.reshape(2, 1, 9), data.reshape(4, 1, 9), torch.tensor([0.5, 1.0]), *sup)
    torch.library.opcheck(torch.ops.creativity_fast.masked_local_posterior, args,
                          test_utils=("test_schema", "test_faketensor"))
    empty = support_from_mask(torch.zeros(9, 9))  # no keys: uniform average over the data
    mean, _ = masked_local_posterior(args[0], args[1], 1.0, empty, backend="kernel")
    torch.testing.assert_close(mean, data.reshape(4, 1, 9).mean(0, keepdim=True).expand(2, 1, 9))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_is_the_same_on_every_backend(backend):
    """d(mean, lse)/dz: gradcheck in float64 on each backend, and the kernel's gradient equals the reference's."""
    g = torch.Generator().manual_seed(11)
    z = torch.randn(2, 2, 9, dtype=torch.float64, generator=g, requires_grad=True)
    data = torch.rand(5, 2, 9, dtype=torch.float64, generator=g) * 2 - 1
    sup = random_support(9, 6, seed=5, max_key=4, max_out=3)
    sigma = torch.tensor([0.7, 1.3], dtype=torch.float64)

    def both(x):
        return masked_local_posterior(x, data, sigma, sup, backend=backend)

    assert torch.autograd.gradcheck(both, (z,), eps=1e-6, atol=1e-7)
    grads = {}
    for b in BACKENDS:
        mean, lse = masked_local_posterior(z, data, sigma, sup, backend=b)
        grads[b] = torch.autograd.grad((mean * torch.linspace(-1, 1, mean.numel(), dtype=mean.dtype).reshape(
            mean.shape)).sum() + lse.sum(), z)[0]
    torch.testing.assert_close(grads[backend], grads["reference"], rtol=0, atol=1e-12)


def test_pca_kernel_matches_reference():
    z, data = make_data(N=12, C=1, H=5, W=5, B=2)
    for backend in BACKENDS:
        out = PCALocalityDenoiser(data, theta=0.05, backend=backend)(z, 0.4)
        ref = PCALocalityDenoiser(data, theta=0.05, backend="reference")(z, 0.4)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert peers.wiener_mask(*PCALocalityDenoiser(data).eig(None), 0.4, 0.05).diagonal().all()
