"""Pure-PyTorch twins of every operator (docs/theory.md §3.1-3.6, §4).

- :func:`patch_posterior_mean_reference` (and its partials): the ideal, local and
  equivariant local machines;
- :func:`paired_patch_posterior_mean_reference`: the paired-patch machine;
- :func:`patch_argmax_attention_reference` (with the dense :func:`attention_scores`);
- :func:`masked_local_posterior_reference`.

They are the test oracles (themselves checked against the literal float64 brute
force of ``tests/oracle.py``) and the fallback backend. They are written for
clarity and bounded memory, not speed:

- every softmax is exact over the whole training set: the data are streamed in
  chunks and merged with a running log-sum-exp *per query pixel* (never a max
  shared across queries), so chunking changes nothing but rounding;
- memory is bounded by ``memory_budget`` whatever ``N`` and ``P``: the chunk size
  adapts, and patches only hold the offsets that can reach the image
  (``dictionary.patch_offsets``);
- it is differentiable with plain autograd (used by ``gradcheck`` as the oracle
  for the kernels' backward pass).

Squared distances use ``|q|^2_w + |k|^2_w - 2 <w q, k>`` so the heavy part is a
matrix product. Everything runs in float64 for every input dtype (exact to
~1e-13), and results are returned in the input dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._validate import check_attention_args, check_images, check_patch_size, check_tau
from .dictionary import admissible_centres, patch_offsets
from .op_types import Attention, MaskedSupport
from .partials import RunningSoftmax, SoftmaxPartials, finalize_partials

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of temporaries per chunk


def _patch_index(size: int, offsets: list[int], boundary: str, device) -> torch.Tensor:
    """Index into the (padded, for zeros) axis: ``[size, K]``."""
    pos = torch.arange(size, device=device)[:, None] + torch.tensor(offsets, device=device)[None, :]
    if boundary == "circular":
        return pos % size
    return pos + max(0, -min(offsets))  # shift into the zero-padded axis


def _patch_geometry(H: int, W: int, C: int, P: int, boundary: str, like: torch.Tensor):
    """Row/column gather indices, padding and the per-entry distance weights ``[C*Kr*Kc]``."""
    row_off, row_w = patch_offsets(P, H, boundary)
    col_off, col_w = patch_offsets(P, W, boundary)
    rows = _patch_index(H, row_off, boundary, like.device)
    cols = _patch_index(W, col_off, boundary, like.device)
    pad = (0, 0, 0, 0) if boundary == "circular" else (-col_off[0], col_off[-1], -row_off[0], row_off[-1])
    w = torch.tensor(row_w, dtype=like.dtype, device=like.device)[:, None] * \
        torch.tensor(col_w, dtype=like.dtype, device=like.device)[None, :]
    weights = w.reshape(1, -1).expand(C, -1).reshape(-1)
    return rows, cols, pad, weights


def extract_patches(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, pad) -> torch.Tensor:
    """Patches at every pixel: images [n, C, H, W] -> [n, H*W, C*Kr*Kc]."""
    n, C, H, W = images.shape
    padded = F.pad(images, pad) if any(pad) else images
    p = padded[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # [n, C, H, W, Kr, Kc]
    return p.permute(0, 2, 3, 1, 4, 5).reshape(n, H * W, -1)


def _sq_dist(q: torch.Tensor, q_sq: torch.Tensor, k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted squared distances ``[..., Q, K]`` between q [..., Q, D] and k [..., K, D]."""
    k_sq = (k * k * weights).sum(-1)
    cross = torch.matmul(q * weights, k.transpose(-1, -2))
    return (q_sq[..., :, None] + k_sq[..., None, :] - 2 * cross).clamp_min(0)


def _images_per_chunk(bytes_per_image: int, budget: int, chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        return max(1, int(chunk_size))
    return max(1, budget // max(1, bytes_per_image))


def ideal_partials(z, data, sigma, key_logw=None, *, chunk_size=None, memory_budget=DEFAULT_MEMORY_BUDGET):
    """Ideal score machine (docs/theory.md §3.1): one softmax over whole training images per sample."""
    B, C, H, W = z.shape
    N = data.shape[0]
    q = z.reshape(B, -1)
    q_sq = (q * q).sum(-1)
    inv2s2 = 1.0 / (2 * sigma * sigma)  # [B]
    ones = torch.ones(q.shape[1], dtype=z.dtype, device=z.device)
    state = RunningSoftmax((B,), C * H * W, z)
    step = _images_per_chunk(z.element_size() * (C * H * W + 4 * B), memory_budget, chunk_size)
    for start in range(0, N, step):
        k = data[start:start + step].to(z.dtype).reshape(-1, C * H * W)
        logits = -_sq_dist(q, q_sq, k, ones) * inv2s2[:, None]
        if key_logw is not None:
            logits = logits + key_logw[start:start + step][None, :]
        ids = torch.arange(start, start + k.shape[0], device=z.device)
        state.update(logits, lambda p, k=k: p @ k, ids)
    HW = H * W
    pixel = torch.arange(HW, device=z.device).reshape(H, W)
    expand = lambda t: t[:, None, None].expand(B, H, W)  # noqa: E731  (same weights at every pixel)
    best_key = expand(state.best_key) * HW + pixel
    return SoftmaxPartials(expand(state.max), expand(state.sum),
                           state.weighted.reshape(B, C, H, W), expand(state.best), best_key)


def local_partials(z, data, sigma, P, boundary, key_logw=None, *, chunk_size=None,
                   memory_budget=DEFAULT_MEMORY_BUDGET):
    """Local score machine (docs/theory.md §3.2): per pixel, training patches at the same location."""
    B, C, H, W = z.shape
    N, HW = data.shape[0], H * W
    rows, cols, pad, weights = _patch_geometry(H, W, C, P, boundary, z)
    D = weights.numel()
    q = extract_patches(z, rows, cols, pad).transpose(0, 1)  # [HW, B, D]
    q_sq = (q * q * weights).sum(-1)
    inv2s2 = (1.0 / (2 * sigma * sigma))[None, :, None]  # [1, B, 1]
    state = RunningSoftmax((HW, B), C, z)
    step = _images_per_chunk(z.element_size() * HW * (2 * D + 4 * B + C), memory_budget, chunk_size)
    pixel = torch.arange(HW, device=z.device)[:, None, None]
    for start in range(0, N, step):
        chunk = data[start:start + step].to(z.dtype)
        n = chunk.shape[0]
        k = extract_patches(chunk, rows, cols, pad).transpose(0, 1)  # [HW, n, D]
        centres = chunk.reshape(n, C, HW).permute(2, 0, 1)  # [HW, n, C]
        logits = -_sq_dist(q, q_sq, k, weights) * inv2s2  # [HW, B, n]
        if key_logw is not None:
            logits = logits + key_logw[start:start + n].reshape(n, HW).T[:, None, :]
        ids = torch.arange(start, start + n, device=z.device)[None, None, :] * HW + pixel
        state.update(logits, lambda p, c=centres: torch.bmm(p, c), ids)
    perm = lambda t: t.T.reshape(B, H, W)  # noqa: E731  [HW, B] -> [B, H, W]
    weighted = state.weighted.permute(1, 2, 0).reshape(B, C, H, W)
    return SoftmaxPartials(perm(state.max), perm(state.sum), weighted, perm(state.best), perm(state.best_key))


def _state_partials(state, B: int, C: int, H: int, W: int) -> SoftmaxPartials:
    """The streamed softmax state over ``B*H*W`` query pixels as ``SoftmaxPartials`` maps."""
    to_map = lambda t: t.reshape(B, H, W)  # noqa: E731
    weighted = state.weighted.reshape(B, H, W, C).permute(0, 3, 1, 2)
    return SoftmaxPartials(to_map(state.max), to_map(state.sum), weighted, to_map(state.best),
                           to_map(state.best_key))


def els_partials(z, data, sigma, P, boundary, keys="all", key_logw=None, *, chunk_size=None,
                 memory_budget=DEFAULT_MEMORY_BUDGET):
    """Equivariant local score machine (docs/theory.md §3.3): every admissible patch of every image."""
    B, C, H, W = z.shape
    N, HW = data.shape[0], H * W
    rows, cols, pad, weights = _patch_geometry(H, W, C, P, boundary, z)
    D = weights.numel()
    allowed = (admissible_centres(H, P, "els", boundary, keys)[:, None, :, None]
               & admissible_centres(W, P, "els", boundary, keys)[None, :, None, :]).reshape(HW, HW)
    # inadmissible keys get logit -inf by masked_fill, not by adding -inf (a NaN distance plus
    # -inf stays NaN and would poison a pixel that may not use the key)
    barred = (~allowed.to(z.device)).repeat(B, 1)[:, None, :]  # [B*HW, 1, HW]
    q = extract_patches(z, rows, cols, pad).reshape(B * HW, D)
    q_sq = (q * q * weights).sum(-1)
    inv2s2 = (1.0 / (2 * sigma * sigma)).repeat_interleave(HW)[:, None, None]  # [B*HW, 1, 1]
    state = RunningSoftmax((B * HW,), C, z)
    step = _images_per_chunk(z.element_size() * HW * (D + 4 * B * HW + C), memory_budget, chunk_size)
    for start in range(0, N, step):
        chunk = data[start:start + step].to(z.dtype)
        n = chunk.shape[0]
        k = extract_patches(chunk, rows, cols, pad).reshape(n * HW, D)
        centres = chunk.permute(0, 2, 3, 1).reshape(n * HW, C)
        dist = _sq_dist(q, q_sq, k, weights).reshape(B * HW, n, HW)
        logits = (-dist * inv2s2).masked_fill(barred, float("-inf"))
        if key_logw is not None:
            logits = logits + key_logw[start:start + n].reshape(1, n, HW)
        ids = torch.arange(start * HW, (start + n) * HW, device=z.device)
        state.update(logits.reshape(B * HW, n * HW), lambda p, c=centres: p @ c, ids)
    return _state_partials(state, B, C, H, W)


def patch_posterior_partials_reference(z, data, sigma, P, mode="els", boundary="zeros", keys="all",
                                       key_logw=None, *, chunk_size=None,
                                       memory_budget=DEFAULT_MEMORY_BUDGET) -> SoftmaxPartials:
    """Streaming-softmax partials of any machine; arguments as ``patch_posterior_mean_reference``.

    Works in float64 whatever the input dtype (data are cast chunk by chunk) and
    returns the input dtype: the distance expansion cancels ``|q|^2`` against
    ``2 <q, k>``, and float32 BLAS and exp round differently for different chunk and
    batch shapes, so a float32 oracle would depend on chunking and batching.
    """
    dtype = z.dtype
    z, sigma = z.double(), sigma.double()
    key_logw = None if key_logw is None else key_logw.double()
    opts = dict(chunk_size=chunk_size, memory_budget=memory_budget)
    if mode == "ideal":
        parts = ideal_partials(z, data, sigma, key_logw, **opts)
    elif mode == "local":
        parts = local_partials(z, data, sigma, P, boundary, key_logw, **opts)
    else:
        parts = els_partials(z, data, sigma, P, boundary, keys, key_logw, **opts)
    return SoftmaxPartials(*(t.to(dtype) if t.is_floating_point() else t for t in parts))


def patch_posterior_mean_reference(z, data, sigma, P, mode="els", boundary="zeros", keys="all",
                                   key_logw=None, *, chunk_size=None, memory_budget=DEFAULT_MEMORY_BUDGET):
    """Reference ``patch_posterior_mean``; arguments must already be validated.

    z: [B, C, H, W] queries; data: [N, C, H, W] training images (same dtype);
    sigma: [B]; key_logw: [N] (ideal) or [N, H, W] log prior per key, or None.
    chunk_size: training images per chunk (None: from ``memory_budget`` bytes).

    Returns ``(x0_hat [B,C,H,W], lse [B,H,W], best_key [B,H,W])`` where
    ``lse = log sum_k exp(-|Pi_x z - k|^2 / (2 sigma^2) + key_logw_k)`` and
    ``best_key = mu * H * W + y`` is the largest-weight key (lowest id on ties).
    """
    parts = patch_posterior_partials_reference(z, data, sigma, P, mode, boundary, keys, key_logw,
                                               chunk_size=chunk_size, memory_budget=memory_budget)
    return finalize_partials(parts)


# --------------------------------------------------------------------------- #
# paired_patch_posterior_mean (docs/theory.md §3.7)


def partner_patches(images: torch.Tensor, partner: torch.Tensor, rows, cols, pad) -> torch.Tensor:
    """The patch of each image at each pixel's partner: ``[n, H*W, D]``.

    images: [n, C, H, W]; partner: [n, H, W] int64 flat locations, -1 for none (then the
    zero patch, as a partner window entirely outside the image would read).
    """
    n = images.shape[0]
    patches = extract_patches(images, rows, cols, pad)  # [n, HW, D]
    flat = partner.reshape(n, -1)
    picked = patches.gather(1, flat.clamp_min(0)[:, :, None].expand(-1, -1, patches.shape[2]))
    return picked * (flat >= 0)[:, :, None].to(picked.dtype)


def paired_partials(z, data, sigma, P, P2, query_partner, key_partner, beta, boundary, keys="all", *,
                    chunk_size=None, memory_budget=DEFAULT_MEMORY_BUDGET) -> SoftmaxPartials:
    """Paired-patch machine (docs/theory.md §3.7): ELS with a second distance between partners.

    Logit of key ``(mu, u)`` for pixel ``x``, over the ELS-admissible ``u``:
    ``-(|Pi_x z - Pi_u phi^mu|^2 + beta |Pi2_{q(x)} z - Pi2_{a_mu(u)} phi^mu|^2) / (2 sigma^2)``
    with ``q = query_partner [B, H, W]``, ``a = key_partner [N, H, W]``. Arguments validated;
    works in the input dtype (``paired_patch_posterior_partials_reference`` passes float64).
    """
    B, C, H, W = z.shape
    N, HW = data.shape[0], H * W
    rows, cols, pad, weights = _patch_geometry(H, W, C, P, boundary, z)
    rows2, cols2, pad2, weights2 = _patch_geometry(H, W, C, P2, boundary, z)
    D, D2 = weights.numel(), weights2.numel()
    allowed = (admissible_centres(H, P, "els", boundary, keys)[:, None, :, None]
               & admissible_centres(W, P, "els", boundary, keys)[None, :, None, :]).reshape(HW, HW)
    # inadmissible keys get logit -inf by masked_fill, not by adding -inf (a NaN distance plus
    # -inf stays NaN and would poison a pixel that may not use the key)
    barred = (~allowed.to(z.device)).repeat(B, 1)[:, None, :]  # [B*HW, 1, HW]
    q = extract_patches(z, rows, cols, pad).reshape(B * HW, D)
    q_sq = (q * q * weights).sum(-1)
    paired = beta != 0
    if paired:  # beta = 0 is ELS exactly: the partner term is not even formed
        q2 = partner_patches(z, query_partner, rows2, cols2, pad2).reshape(B * HW, D2)
        q2_sq = (q2 * q2 * weights2).sum(-1)
    inv2s2 = (1.0 / (2 * sigma * sigma)).repeat_interleave(HW)[:, None, None]  # [B*HW, 1, 1]
    state = RunningSoftmax((B * HW,), C, z)
    step = _images_per_chunk(z.element_size() * HW * (D + D2 + 6 * B * HW + C), memory_budget, chunk_size)
    for start in range(0, N, step):
        chunk = data[start:start + step].to(z.dtype)
        n = chunk.shape[0]
        k = extract_patches(chunk, rows, cols, pad).reshape(n * HW, D)
        dist = _sq_dist(q, q_sq, k, weights)
        if paired:
            k2 = partner_patches(chunk, key_partner[start:start + n], rows2, cols2, pad2).reshape(n * HW, D2)
            dist = dist + beta * _sq_dist(q2, q2_sq, k2, weights2)
        centres = chunk.permute(0, 2, 3, 1).reshape(n * HW, C)
        logits = (-dist.reshape(B * HW, n, HW) * inv2s2).masked_fill(barred, float("-inf"))
        ids = torch.arange(start * HW, (start + n) * HW, device=z.device)
        state.update(logits.reshape(B * HW, n * HW), lambda p, c=centres: p @ c, ids)
    return _state_partials(state, B, C, H, W)


def paired_patch_posterior_partials_reference(z, data, sigma, P, P2, query_partner, key_partner, beta,
                                              boundary="zeros", keys="all", *, chunk_size=None,
                                              memory_budget=DEFAULT_MEMORY_BUDGET) -> SoftmaxPartials:
    """Streaming-softmax partials of the paired-patch machine, in float64, returned in the input dtype."""
    dtype = z.dtype
    parts = paired_partials(z.double(), data, sigma.double(), P, P2, query_partner, key_partner, beta, boundary,
                            keys, chunk_size=chunk_size, memory_budget=memory_budget)
    return SoftmaxPartials(*(t.to(dtype) if t.is_floating_point() else t for t in parts))


def paired_patch_posterior_mean_reference(z, data, sigma, P, P2, query_partner, key_partner, beta,
                                          boundary="zeros", keys="all", *, chunk_size=None,
                                          memory_budget=DEFAULT_MEMORY_BUDGET):
    """Pure-PyTorch twin of ``ops.paired_patch_posterior_mean`` (validated arguments; ``sigma [B]``).

    z: [B, C, H, W]; data: [N, C, H, W]; query_partner: [B, H, W], key_partner: [N, H, W]
    (int64 flat locations, -1: none). Returns ``(x0_hat [B,C,H,W], lse [B,H,W], best_key [B,H,W])``
    as ``patch_posterior_mean_reference``. Differentiable with respect to ``z`` through both
    distances (partners are indices, held fixed).
    """
    parts = paired_patch_posterior_partials_reference(z, data, sigma, P, P2, query_partner, key_partner, beta,
                                                      boundary, keys, chunk_size=chunk_size,
                                                      memory_budget=memory_budget)
    return finalize_partials(parts)


# --------------------------------------------------------------------------- #
# patch_argmax_attention (docs/theory.md §3.4): dense float64 scores, small images only


def mean_patch(images: torch.Tensor, P: int, *, chunk_size: int = 4096) -> torch.Tensor:
    """Mean zero-extended ``P x P`` patch over every location of every image: ``[C, P, P]``.

    images: [M, C, H, W]. The patch map is linear, so this is the mean over locations of
    the patches of the mean image (float64 in chunks of images, returned in ``images.dtype``).
    The default centre of the attention embedding.
    """
    images = check_images("images", images)
    P = check_patch_size(P)
    M, C, H, W = images.shape
    total = torch.zeros(C, H, W, dtype=torch.float64, device=images.device)
    for start in range(0, M, chunk_size):
        total += images[start:start + chunk_size].to(torch.float64).sum(0)
    return mean_patch_of_mean_image(total / M, P).to(images.dtype)


def mean_patch_of_mean_image(mean: torch.Tensor, P: int) -> torch.Tensor:
    """Mean zero-extended ``P x P`` patch ``[C, P, P]`` over the locations of one image ``mean [C, H, W]``."""
    m = (P - 1) // 2
    C = mean.shape[0]
    patches = F.unfold(F.pad(mean[None], (m, m, m, m)), P)  # [1, C*P*P, H*W]
    return patches.mean(-1).reshape(C, P, P)


def _attention_patches(images: torch.Tensor, P: int) -> torch.Tensor:
    """Zero-extended patches at every pixel: [M, H*W, C*P*P] (float64)."""
    m = (P - 1) // 2
    x = F.pad(images.to(torch.float64), (m, m, m, m))
    return F.unfold(x, P).transpose(1, 2)


def _outside_exclusion(H: int, W: int, exclude: int, device) -> torch.Tensor:
    """[HW, HW] bool: ``max(|dr|, |dc|) >= exclude`` between query x (row) and key y (column)."""
    r = torch.arange(H, device=device).repeat_interleave(W)
    c = torch.arange(W, device=device).repeat(H)
    cheb = torch.maximum((r[:, None] - r[None, :]).abs(), (c[:, None] - c[None, :]).abs())
    return cheb >= exclude


def attention_scores(images: torch.Tensor, P: int, *, exclude: Optional[int] = None,
                     center: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense scores ``<e(Pi_x), e(Pi_y)>`` [M, HW, HW] in float64, -inf where not admissible.

    images: [M, C, H, W]; center: [C, P, P] (default :func:`mean_patch` of ``images``).
    Memory ``M * (HW)^2``: small images only.
    """
    images, P, exclude, center, _, _ = check_attention_args(images, P, exclude, center, None)
    center = mean_patch(images, P) if center is None else center
    M, C, H, W = images.shape
    e = _attention_patches(images, P) - center.to(torch.float64).reshape(1, 1, -1)
    scores = e @ e.transpose(1, 2)
    return scores.masked_fill(~_outside_exclusion(H, W, exclude, images.device), float("-inf"))


def soft_attention_weights(images: torch.Tensor, P: int, *, exclude: Optional[int] = None,
                           center: Optional[torch.Tensor] = None, tau: float = 1.0) -> torch.Tensor:
    """Row-softmax attention ``a_xy`` [M, HW, HW] (float64; rows without keys are 0). Small images only."""
    tau = check_tau(tau)
    s = attention_scores(images, P, exclude=exclude, center=center)
    return torch.softmax(s / tau, dim=-1).nan_to_num(0.0)


def patch_argmax_attention_reference(images: torch.Tensor, P: int, *, exclude: Optional[int] = None,
                                     center: Optional[torch.Tensor] = None, tau: Optional[float] = None,
                                     return_in_degree: bool = False, chunk_size: int = 16):
    """Pure-PyTorch twin of ``ops.patch_argmax_attention`` (same arguments and results)."""
    images, P, exclude, center, tau, _ = check_attention_args(images, P, exclude, center, tau)
    center = mean_patch(images, P) if center is None else center
    M, C, H, W = images.shape
    HW = H * W
    y_star = torch.empty(M, HW, dtype=torch.int64, device=images.device)
    in_degree = torch.zeros(M, HW, dtype=torch.float64, device=images.device)
    for start in range(0, M, chunk_size):
        s = attention_scores(images[start:start + chunk_size], P, exclude=exclude, center=center)
        has_key = torch.isfinite(s).any(-1)
        best = s.argmax(-1)  # first maximum: the lowest flat index on ties
        best = torch.where(has_key, best, torch.full_like(best, -1))
        y_star[start:start + s.shape[0]] = best
        if tau is None:
            counts = torch.zeros(s.shape[0], HW + 1, dtype=torch.float64, device=images.device)
            counts.scatter_add_(1, torch.where(best < 0, HW, best), torch.ones_like(best, dtype=torch.float64))
            in_degree[start:start + s.shape[0]] = counts[:, :HW]
        else:
            weights = torch.softmax(s / tau, dim=-1).nan_to_num(0.0)  # rows without keys: all zero
            in_degree[start:start + s.shape[0]] = weights.sum(1)
    y_star = y_star.reshape(M, H, W)
    if tau is None and not return_in_degree:
        return y_star
    return Attention(y_star, in_degree.reshape(M, H, W).to(images.dtype))


# --------------------------------------------------------------------------- #
# masked_local_posterior (docs/theory.md §3.6)


def masked_local_posterior_reference(z, data, sigma, support: MaskedSupport, *, chunk_size=None,
                                     memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """Pure-PyTorch twin of ``ops.masked_local_posterior`` (validated arguments; ``sigma [B]``).

    z: [B, C, U], data: [N, C, U]. Returns ``(mean [B, C, nnz_out], lse [B, Q])``.

    Units are padded to the largest support (padding has weight 0 and is dropped from the
    output), processed in blocks of units and streamed over chunks of training images with
    ``RunningSoftmax`` (a running log-sum-exp per (unit, sample)). Memory is bounded by
    ``memory_budget`` bytes of temporaries; differentiable with plain autograd.
    """
    B, C, U = z.shape
    N = data.shape[0]
    Q = support.num_units
    key_len = support.key_ptr[1:] - support.key_ptr[:-1]
    out_len = support.out_ptr[1:] - support.out_ptr[:-1]
    Kmax, Omax = max(1, int(key_len.max())) if Q else 1, max(1, int(out_len.max())) if Q else 1
    dev = z.device

    def padded(ptr, values, lengths, width):
        """``[Q, width]`` rows of a CSR array, padded with zeros, and the validity mask."""
        pos = torch.arange(width, device=dev)
        valid = pos[None, :] < lengths[:, None]
        if values.numel() == 0:
            return values.new_zeros(lengths.numel(), width), valid
        flat = (ptr[:-1, None] + pos[None, :]).clamp_max(values.numel() - 1)
        gathered = values[flat]
        return torch.where(valid, gathered, torch.zeros_like(gathered)), valid

    key_idx, _ = padded(support.key_ptr, support.key_index, key_len, Kmax)
    key_w, _ = padded(support.key_ptr, support.key_weight.to(z.dtype), key_len, Kmax)
    out_idx, out_valid = padded(support.out_ptr, support.out_index, out_len, Omax)

    inv2s2 = (1.0 / (2 * sigma * sigma))[None, :, None]  # [1, B, 1]
    elt = z.element_size()
    per_unit = elt * (B * (Kmax * C + 2 * Omax * C + 8))  # queries and softmax state
    per_unit_image = elt * (Kmax * C + Omax * C + 3 * B)  # keys, outputs, logits
    q_block = max(1, min(Q, memory_budget // max(1, 2 * per_unit)))
    if chunk_size is not None:
        step = max(1, int(chunk_size))
    else:
        step = max(1, (memory_budget - q_block * per_unit) // max(1, q_block * per_unit_image))

    mean = z.new_zeros(B, C, support.out_index.numel())
    lse = z.new_empty(B, Q)
    for q0 in range(0, Q, q_block):
        qs = slice(q0, min(Q, q0 + q_block))
        kidx, kw, oidx = key_idx[qs], key_w[qs], out_idx[qs]
        nq = kidx.shape[0]
        weights = kw[:, :, None].expand(nq, Kmax, C).reshape(nq, 1, Kmax * C)
        query = z[:, :, kidx].permute(2, 0, 3, 1).reshape(nq, B, Kmax * C)  # [nq, B, Kmax*C], entry k*C + c
        q_sq = (query * query * weights).sum(-1)
        state = RunningSoftmax((nq, B), C * Omax, z)
        for start in range(0, N, step):
            chunk = data[start:start + step]
            n = chunk.shape[0]
            keys = chunk[:, :, kidx].permute(2, 0, 3, 1).reshape(nq, n, Kmax * C)
            outs = chunk[:, :, oidx].permute(2, 0, 1, 3).reshape(nq, n, C * Omax)  # entry c*Omax + o
            logits = -_sq_dist(query, q_sq, keys, weights) * inv2s2  # [nq, B, n]
            ids = torch.arange(start, start + n, device=dev)[None, None, :]
            state.update(logits, lambda p, v=outs: torch.bmm(p, v), ids)
        unit_mean = (state.weighted / state.sum[..., None]).reshape(nq, B, C, Omax)
        lse[:, qs] = (state.max + torch.log(state.sum)).T
        valid = out_valid[qs]
        dest = (support.out_ptr[q0:q0 + nq, None] + torch.arange(Omax, device=dev)[None, :])[valid]  # [nnz]
        vals = unit_mean.permute(1, 2, 0, 3)[:, :, valid]  # [B, C, nnz]
        mean = mean.index_copy(2, dest, vals)
    return mean, lse
