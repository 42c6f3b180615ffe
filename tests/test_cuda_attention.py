"""CUDA kernel of ``patch_argmax_attention`` against the CPU kernel and the pure-PyTorch reference
(docs/theory.md §3.4), on each backend of the CUDA sources (the ``runner`` fixture of conftest.py:
the GPU, or the CPU emulator)."""

from __future__ import annotations

import pytest
import torch

from creativity_fast import ops
from creativity_fast.reference import patch_argmax_attention_reference

from cuda_backends import set_env


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
    with set_env(CREATIVITY_FAST_CUDA_ATTENTION_SPLITS="1"):
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
        with set_env(CREATIVITY_FAST_CUDA_ATTENTION_SPLITS=splits, CREATIVITY_FAST_CUDA_ATTENTION_SCRATCH=scratch):
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


