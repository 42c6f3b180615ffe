"""Dataset-wide argmax attention (kernel and reference against a brute-force oracle) and AELS (docs/theory.md §3.4)."""

import math

import pytest
import torch

from creativity_fast import attention as A
from creativity_fast import ops, reference
from creativity_fast.denoisers import ELSDenoiser, PatchMachine
from creativity_fast.registry import machine_names, make_denoiser
from creativity_fast.ops import has_kernel

BACKENDS = ["reference"] + (["kernel"] if has_kernel("cpu", "patch_argmax_attention") else [])


def brute_force(images, P, exclude, center):
    """Written from the definition: pixel loops, zero extension, Chebyshev exclusion, first maximum wins."""
    M, C, H, W = images.shape
    m = (P - 1) // 2

    def patch(img, r, c):
        out = torch.zeros(C, P, P, dtype=torch.float64)
        for dr in range(-m, m + 1):
            for dc in range(-m, m + 1):
                if 0 <= r + dr < H and 0 <= c + dc < W:
                    out[:, dr + m, dc + m] = img[:, r + dr, c + dc]
        return out - center.double()

    y_star = torch.full((M, H, W), -1, dtype=torch.int64)
    for i in range(M):
        e = {(r, c): patch(images[i].double(), r, c) for r in range(H) for c in range(W)}
        for r in range(H):
            for c in range(W):
                best = -math.inf
                for y in range(H * W):  # increasing flat index: strict > keeps the lowest on ties
                    yr, yc = divmod(y, W)
                    if max(abs(yr - r), abs(yc - c)) < exclude:
                        continue
                    s = float((e[(r, c)] * e[(yr, yc)]).sum())
                    if s > best:
                        best, y_star[i, r, c] = s, y
    return y_star


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,P,exclude", [((2, 1, 5, 6), 3, None), ((1, 2, 4, 5), 1, 0), ((2, 1, 5, 4), 5, 2),
                                             ((1, 1, 4, 4), 7, 1)])
def test_matches_brute_force(backend, shape, P, exclude):
    torch.manual_seed(0)
    images = torch.randn(shape, dtype=torch.float64)
    center = torch.randn(shape[1], P, P, dtype=torch.float64) * 0.3
    got = ops.patch_argmax_attention(images, P, exclude=exclude, center=center, backend=backend)
    want = brute_force(images, P, P if exclude is None else exclude, center)
    assert got.dtype == torch.int64 and got.shape == shape[:1] + shape[2:]
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_lowest_flat_index(backend):
    torch.manual_seed(1)
    images = torch.randint(-1, 2, (3, 1, 5, 5)).float()  # integer values: exact, frequent ties
    images[0] = 1.0  # constant image: every admissible key ties
    center = torch.zeros(1, 3, 3)
    for exclude in (0, 1, 3):
        got = ops.patch_argmax_attention(images, 3, exclude=exclude, center=center, backend=backend)
        assert torch.equal(got, brute_force(images, 3, exclude, center))
    # Constant image, zero centre: the score of x = (0, 0) is the number of its 4 inside pixels o with
    # y + o inside; every y at distance >= 3 with its lower-right 2x2 inside scores 4. The first: (0, 3).
    got = ops.patch_argmax_attention(images[:1], 3, exclude=3, center=center, backend=backend)
    assert got[0, 0, 0].item() == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_admissible_location_is_minus_one(backend):
    images = torch.randn(2, 1, 5, 5)
    y = ops.patch_argmax_attention(images, 3, exclude=5, backend=backend)  # max distance in 5x5 is 4
    assert bool((y == -1).all())
    y = ops.patch_argmax_attention(images, 3, exclude=3, backend=backend)
    assert y[0, 2, 2].item() == -1  # the centre is within distance 2 of every pixel
    assert bool((y[:, 0, 0] >= 0).all())
    att = ops.patch_argmax_attention(images, 3, exclude=5, return_in_degree=True, backend=backend)
    assert bool((att.in_degree == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_degree_hard_and_soft(backend):
    torch.manual_seed(2)
    images = torch.randn(3, 2, 6, 5, dtype=torch.float64)
    att = ops.patch_argmax_attention(images, 3, exclude=2, return_in_degree=True, backend=backend)
    for i in range(3):
        counts = torch.bincount(att.y_star[i].reshape(-1), minlength=30).double()
        assert torch.equal(att.in_degree[i].reshape(-1), counts)
    soft = ops.patch_argmax_attention(images, 3, exclude=2, tau=0.5, backend=backend)
    ref = reference.patch_argmax_attention_reference(images, 3, exclude=2, tau=0.5)
    assert torch.equal(soft.y_star, att.y_star)
    torch.testing.assert_close(soft.in_degree, ref.in_degree, rtol=1e-9, atol=1e-9)
    # Each row with an admissible key contributes total weight 1.
    torch.testing.assert_close(soft.in_degree.sum((1, 2)), torch.full((3,), 30.0, dtype=torch.float64))
    cold = ops.patch_argmax_attention(images, 3, exclude=2, tau=1e-4, backend=backend)  # tau -> 0: the counts
    torch.testing.assert_close(cold.in_degree, att.in_degree, rtol=0, atol=1e-6)


def test_kernel_matches_reference_float32():
    if "kernel" not in BACKENDS:
        pytest.skip("no compiled patch_argmax_attention kernel")
    torch.manual_seed(3)
    images = torch.randn(6, 1, 9, 8)
    for P, exclude in ((3, None), (5, 3), (9, 0)):
        a = ops.patch_argmax_attention(images, P, exclude=exclude, return_in_degree=True, backend="kernel")
        b = reference.patch_argmax_attention_reference(images, P, exclude=exclude, return_in_degree=True)
        assert torch.equal(a.y_star, b.y_star) and torch.equal(a.in_degree, b.in_degree)
        assert a.in_degree.dtype == torch.float32


def test_opcheck():
    if "kernel" not in BACKENDS:
        pytest.skip("no compiled patch_argmax_attention kernel")
    images = torch.randn(2, 1, 5, 6)
    center = ops.mean_patch(images, 3)
    op = torch.ops.creativity_fast.patch_argmax_attention.default
    torch.library.opcheck(op, (images, center, 3, 3, -1.0))
    torch.library.opcheck(op, (images.double(), center.double(), 3, 1, 0.5))


def test_default_center_is_mean_patch():
    torch.manual_seed(4)
    images = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    center = ops.mean_patch(images, 3)
    patches = torch.nn.functional.unfold(torch.nn.functional.pad(images, (1, 1, 1, 1)), 3)  # [M, 9, 25]
    torch.testing.assert_close(center.reshape(-1), patches.mean((0, 2)))
    assert torch.equal(ops.patch_argmax_attention(images, 3), ops.patch_argmax_attention(images, 3, center=center))


def test_bad_arguments():
    images = torch.randn(1, 1, 5, 5)
    with pytest.raises(ValueError, match="P"):
        ops.patch_argmax_attention(images, 4)
    with pytest.raises(ValueError, match="exclude"):
        ops.patch_argmax_attention(images, 3, exclude=-1)
    with pytest.raises(ValueError, match="tau"):
        ops.patch_argmax_attention(images, 3, tau=0.0)
    with pytest.raises(ValueError, match="center"):
        ops.patch_argmax_attention(images, 3, center=torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match="images"):
        ops.patch_argmax_attention(torch.randn(5, 5), 3)
    with pytest.raises(ValueError, match="backend"):
        ops.patch_argmax_attention(images, 3, backend="gpu")


def test_in_degree_is_cached_per_patch_size():
    A.clear_attention_cache()
    data = torch.randn(3, 1, 6, 6)
    first = A.training_in_degree(data, 3)
    assert A.training_in_degree(data, 3) is first
    other = A.training_in_degree(data, 1)
    assert other is not first and other.shape == (3, 6, 6)
    data.mul_(2)  # new content: recomputed
    assert A.training_in_degree(data, 3) is not first


# --------------------------------------------------------------------------- #
# AELS


def _toy(seed=0, N=4, H=6, W=6):
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(N, 1, H, W, generator=g) * 2 - 1
    z = torch.randn(2, 1, H, W, generator=g) * 0.7
    return data, z


def test_aels_is_registered():
    assert "aels" in machine_names()
    data, _ = _toy()
    machine = make_denoiser("aels", data, P=3, lam=0.5, gamma=0.25)
    assert isinstance(machine, A.AELSDenoiser) and machine.lam == 0.5 and machine.gamma == 0.25


def test_aels_zero_is_els_exactly():
    data, z = _toy()
    els = ELSDenoiser(data, 3, record_stats=True, backend="reference")
    aels = make_denoiser("aels", data, P=3, lam=0.0, gamma=0.0, record_stats=True, backend="reference")
    for sigma in (5.0, 0.3):
        assert torch.equal(els(z, sigma), aels(z, sigma))
        assert torch.equal(els.last_stats.argmax, aels.last_stats.argmax)
        assert torch.equal(els.last_stats.lse, aels.last_stats.lse)


def test_aels_prior_is_els_with_key_weights():
    data, z = _toy(1)
    lam = 1.0
    counts = A.training_in_degree(data, 3)
    assert counts.sum().item() > 0
    ref = PatchMachine(data, "els", 3, key_logw=torch.log1p(lam * counts), backend="reference")
    aels = A.AELSDenoiser(data, 3, lam=lam, gamma=0.0, backend="reference")
    torch.testing.assert_close(aels(z, 0.5), ref(z, 0.5))
    assert not torch.allclose(aels(z, 0.5), ELSDenoiser(data, 3, backend="reference")(z, 0.5))


def test_aels_sample_time_attention_formula():
    data, z = _toy(2)
    gamma = 0.7
    aels = A.AELSDenoiser(data, 3, lam=0.0, gamma=gamma, backend="reference")
    out = aels(z, 0.8)
    x0 = ELSDenoiser(data, 3, backend="reference")(z, 0.8)
    y = ops.patch_argmax_attention(z, 3, center=ops.mean_patch(data, 3))
    assert torch.equal(aels.last_attention, y)
    B, C, H, W = z.shape
    want = x0.clone()
    for b in range(B):
        for r in range(H):
            for c in range(W):
                t = y[b, r, c].item()
                if t >= 0:
                    tr, tc = divmod(t, W)
                    want[b, :, r, c] += gamma * (x0[b, :, tr, tc] - z[b, :, tr, tc])
    torch.testing.assert_close(out, want)


def test_aels_soft_attention_runs_and_differs():
    data, z = _toy(3)
    hard = A.AELSDenoiser(data, 3, lam=1.0, gamma=0.5, backend="reference")(z, 0.5)
    soft = A.AELSDenoiser(data, 3, lam=1.0, gamma=0.5, tau=0.5, backend="reference")(z, 0.5)
    assert soft.shape == hard.shape and torch.isfinite(soft).all()


def test_aels_bad_arguments():
    data, _ = _toy()
    with pytest.raises(ValueError, match="lam"):
        A.AELSDenoiser(data, 3, lam=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        A.AELSDenoiser(data, 3, gamma=float("nan"))
    with pytest.raises(ValueError, match="attention_P"):
        A.AELSDenoiser(data, 3, attention_P=2)
