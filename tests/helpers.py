"""Shared test and benchmark configuration: operator variants, seeds, random inputs, tolerances.

Imported as ``helpers`` by the files in ``tests/`` (``tests/conftest.py`` puts this
directory on ``sys.path``) and by ``bench/gpu_check.py`` (which adds it itself).

- ``OPERATOR_VARIANTS``: every distinct machine the operator computes.
- ``stable_seed(*parts)``: a generator seed from a test's parameters that is the same in
  every process (``hash()`` of strings is salted per process).
- ``random_inputs(...)``: the one factory of random ``(z, data, sigma, key_logw)``.
- Tolerance models: ``TOL``, ``FLOAT32_SAME_INPUTS_TOL``, ``patch_weight_sum``,
  ``float32_x0_tol``, ``float32_error_bound``, ``float32_logit_error``; and
  ``top_two_logits``, the float64 best and second-best logit of every query pixel, to
  tell where a float32 argmax is well defined.
"""

from __future__ import annotations

import math
import zlib

import torch

# ---------------------------------------------------------------------------------------
# Operator variants

# Every distinct machine the operator computes, as (mode, boundary, keys): the boundary
# does not change `ideal`, and keys='valid' exists only for circular ELS.
OPERATOR_VARIANTS = (
    ("ideal", "zeros", "all"),
    ("local", "zeros", "all"),
    ("local", "circular", "all"),
    ("els", "zeros", "all"),
    ("els", "circular", "all"),
    ("els", "circular", "valid"),
)


def variant_id(variant) -> str:
    """``("els", "zeros", "all") -> "els-zeros-all"`` (pytest ids)."""
    return "-".join(variant)


# ---------------------------------------------------------------------------------------
# Seeds


def stable_seed(*parts) -> int:
    """A generator seed in [0, 2**31) from ``parts`` (ints, strings, tuples of them).

    ``zlib.crc32`` of ``repr(parts)``: the same in every process and on every machine,
    unlike ``hash()``, whose value for strings changes from one process to the next
    (PYTHONHASHSEED), so a failure seeded by it cannot be reproduced.
    """
    return zlib.crc32(repr(parts).encode()) % 2 ** 31


# ---------------------------------------------------------------------------------------
# Random inputs


def random_inputs(B: int = 2, C: int = 1, H: int = 7, W: int = 9, N: int = 5, *, seed: int = 0,
                  sigma=(0.5, 1.4), query: str = "noisy", query_scale: float = 1.0, logw: bool = False,
                  mode: str = "els", remove_every: int = 0, dtype: torch.dtype = torch.float64):
    """Random CPU inputs ``(z [B,C,H,W], data [N,C,H,W], sigma [B], key_logw)`` of the operator.

    Drawn in float64 from one ``torch.Generator`` seeded with ``seed``, in this order,
    then converted to ``dtype`` (so a float32 problem is the float64 one rounded, and
    ``.double()`` of it is an exact float64 problem):

    - ``data``: N images, uniform in [-1, 1].
    - ``sigma``: the per-query noise levels ``sigma[b % len(sigma)]`` (a number: all equal).
    - ``z``: ``query="noisy"``: a training image drawn at random plus ``sigma_b`` times
      Gaussian noise (a diffusion step: the best key is usually well separated at small
      sigma); ``query="gaussian"``: ``query_scale`` times standard Gaussian noise,
      unrelated to the data.
    - ``key_logw`` (only when ``logw``, else None): standard normal log prior weights,
      ``[N]`` for ``mode="ideal"``, ``[N, H, W]`` otherwise. ``remove_every=k > 0``
      sets every k-th entry (of the flattened tensor, from the first) to -inf: removed
      keys; a pixel may then lose all its keys (NaN x0_hat, -inf lse).
    """
    if query not in ("noisy", "gaussian"):
        raise ValueError(f"query must be 'noisy' or 'gaussian', got {query!r}")
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    data = torch.rand(N, C, H, W, generator=g, dtype=f64) * 2 - 1
    levels = tuple(sigma) if isinstance(sigma, (tuple, list)) else (float(sigma),)
    sig = torch.tensor([levels[i % len(levels)] for i in range(B)], dtype=f64)
    if query == "noisy":
        z = data[torch.randint(N, (B,), generator=g)] + sig.view(B, 1, 1, 1) * torch.randn(B, C, H, W, generator=g,
                                                                                             dtype=f64)
    else:
        z = query_scale * torch.randn(B, C, H, W, generator=g, dtype=f64)
    key_logw = None
    if logw:
        key_logw = torch.randn(*((N,) if mode == "ideal" else (N, H, W)), generator=g, dtype=f64)
        if remove_every:
            key_logw.view(-1)[::remove_every] = float("-inf")
    return tuple(None if t is None else t.to(dtype) for t in (z, data, sig, key_logw))


# ---------------------------------------------------------------------------------------
# Tolerance models

# A kernel result against the pure-PyTorch reference on the same inputs, by dtype.
# float64: both are exact up to the order of the sums, so they agree to ~1e-10.
# float32: against the float64 reference, for moderate logits (|lse| up to ~1e2); steep
# logits need float32_x0_tol.
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=5e-5)}

# A float32 kernel result against the float32 reference on the same float32 inputs (both
# round the same sums in a different order): a few float32 ulps of the result.
FLOAT32_SAME_INPUTS_TOL = dict(rtol=2e-6, atol=2e-6)


def patch_weight_sum(C: int, H: int, W: int, P: int, mode: str, boundary: str) -> int:
    """The number of weighted entries of one patch distance (sum of the multiplicities of
    ``creativity_fast.dictionary.patch_offsets`` times C); C*H*W for the ideal machine."""
    if mode == "ideal":
        return C * H * W
    if boundary == "circular":
        return C * P * P
    return C * min(P, 2 * H - 1) * min(P, 2 * W - 1)


def float32_x0_atol(lse_ref: torch.Tensor, sumw: int) -> float:
    """Absolute tolerance of a float32 x0_hat against the float64 reference.

    Models float32 rounding of steep logits: a float32 distance over ``sumw`` weighted
    entries errs by ~2^-24 sqrt(sumw) relative, so a logit l by ~2^-24 sqrt(sumw) |l|,
    and x0_hat (a convex combination of centres in [-1, 1]) by at most twice that; |lse|
    bounds the size of the logits that carry weight. Added to ``TOL[float32]``'s atol.
    """
    finite = lse_ref[torch.isfinite(lse_ref)]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    return TOL[torch.float32]["atol"] + 4 * 2.0 ** -24 * math.sqrt(sumw) * scale


def float32_x0_tol(dtype: torch.dtype, lse_ref: torch.Tensor, sumw: int) -> dict:
    """``assert_close`` tolerance of x0_hat in ``dtype`` against the float64 reference:
    ``TOL[dtype]``, with ``float32_x0_atol`` as atol in float32."""
    tol = dict(TOL[dtype])
    if dtype == torch.float32:
        tol["atol"] = float32_x0_atol(lse_ref, sumw)
    return tol


def float32_error_bound(exact: torch.Tensor, float32_reference: torch.Tensor) -> float:
    """Largest error allowed of a float32 result against the float64 ``exact`` result.

    ``max(2e-5 * max|exact|, 2 * err)``, ``err`` the largest error of the pure-PyTorch
    reference run in float32 on the same inputs: the kernel may be as inaccurate as
    float32 itself makes the reference on hard inputs (|logits| ~ 1e3, where one float32
    ulp of a logit moves a weight by ~1e-4), but on easy ones must hold 2e-5 relative.
    """
    ref_err = (float32_reference.double() - exact).abs().max().item()
    return max(2e-5 * exact.abs().max().item(), 2 * ref_err)


def float32_logit_error(logit: torch.Tensor, sumw: int) -> torch.Tensor:
    """Worst-case error of a logit computed in float32 (elementwise bound on ``logit``).

    The distance is a sum of ``sumw`` squared differences of float32 inputs; each
    rounding errs by at most 2^-24 relative, so the sum (and -d / (2 sigma^2)) by at most
    ``sumw * 2^-24 |d|`` even with no cancellation of errors, plus a few ulps for the
    division and the added log weight (bounded by ``4 * 2^-24 * (|l| + 1)``).
    """
    return 2.0 ** -24 * ((sumw + 4) * logit.abs() + 4)


def top_two_logits(z, data, sigma, P, mode, boundary, keys, key_logw=None):
    """The largest and second-largest float64 logit ``[B, H, W]`` of every query pixel.

    Written like ``tests/oracle.py`` (no package code): patches with zero or circular
    padding (``P <= min(H, W)``), admissible keys from ``oracle.admissible_keys``.
    Where ``best - second`` exceeds what float32 rounding can move a logit, the argmax
    is the same in float32 and float64.
    """
    from oracle import admissible_keys

    z, data, sigma = z.double(), data.double(), torch.as_tensor(sigma, dtype=torch.float64)
    B, C, H, W = z.shape
    N = data.shape[0]
    inv = 1.0 / (2.0 * sigma.reshape(B, 1, 1) ** 2)
    if mode == "ideal":
        d = ((z[:, None] - data[None]) ** 2).sum((2, 3, 4))  # [B, N]
        logits = -d * inv[:, :, 0] + (0 if key_logw is None else key_logw.double()[None])
        top = logits.topk(2, dim=1).values  # [B, 2]
        return top[:, 0, None, None].expand(B, H, W), top[:, 1, None, None].expand(B, H, W)
    if P > min(H, W):
        raise ValueError("top_two_logits needs P <= min(H, W)")
    m = (P - 1) // 2
    pad = "circular" if boundary == "circular" else "constant"

    def patches(x):  # [n, H*W, C*P*P]
        padded = torch.nn.functional.pad(x, (m, m, m, m), mode=pad)
        return torch.nn.functional.unfold(padded, P).transpose(1, 2)

    q, k = patches(z), patches(data)
    d = ((q[:, :, None, None, :] - k[None, None]) ** 2).sum(-1)  # [B, HW (query), N, HW (key)]
    logits = -d * inv[..., None]
    if key_logw is not None:
        logits = logits + key_logw.double().reshape(1, 1, N, H * W)
    allowed = torch.zeros(H * W, H * W, dtype=torch.bool)
    for r in range(H):
        for c in range(W):
            for a, b in admissible_keys((r, c), H, W, P, mode, boundary, keys):
                allowed[r * W + c, a * W + b] = True
    logits = logits.masked_fill(~allowed[None, :, None, :], float("-inf")).reshape(B, H * W, N * H * W)
    top = logits.topk(2, dim=-1).values.reshape(B, H, W, 2)
    return top[..., 0], top[..., 1]


def random_partners(B: int, N: int, H: int, W: int, seed: int, *, none_every: int = 4):
    """Random partner maps ``[B, H, W]`` (queries) and ``[N, H, W]`` (training images) of flat
    locations, every ``none_every``-th entry -1 (no partner)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, H * W, (B, H, W), generator=g)
    k = torch.randint(0, H * W, (N, H, W), generator=g)
    q.view(-1)[::none_every] = -1
    k.view(-1)[1::none_every] = -1
    return q, k
