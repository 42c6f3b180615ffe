"""Pure-PyTorch reference of the patch posterior mean (SPEC 3.1-3.3, 4).

This is the test oracle and the fallback backend. It is written for clarity and
bounded memory, not speed:

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

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .dictionary import admissible_centres, patch_offsets

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of temporaries per chunk


class SoftmaxPartials(NamedTuple):
    """Mergeable streaming-softmax state per query pixel.

    ``max [B,H,W]`` the running max logit, ``sum [B,H,W]`` ``sum exp(logit - max)``,
    ``weighted [B,C,H,W]`` ``sum exp(logit - max) * centre``, ``best [B,H,W]`` the
    largest logit and ``best_key [B,H,W]`` its key id ``mu * H * W + y``.
    Partials over disjoint key sets merge exactly with ``merge_partials``.
    """

    max: torch.Tensor
    sum: torch.Tensor
    weighted: torch.Tensor
    best: torch.Tensor
    best_key: torch.Tensor


class _RunningSoftmax:
    """Online softmax over key chunks for a block of queries ``[..., K]`` (flash-attention style).

    Written without in-place updates so that autograd can differentiate through it.
    """

    def __init__(self, query_shape, channels, like: torch.Tensor):
        kw = dict(dtype=like.dtype, device=like.device)
        self.max = torch.full(query_shape, float("-inf"), **kw)
        self.sum = torch.zeros(query_shape, **kw)
        self.weighted = torch.zeros(*query_shape, channels, **kw)
        self.best = torch.full(query_shape, float("-inf"), **kw)
        self.best_key = torch.full(query_shape, -1, dtype=torch.int64, device=like.device)

    def update(self, logits: torch.Tensor, weight_centres: Callable[[torch.Tensor], torch.Tensor],
               key_ids: torch.Tensor) -> None:
        """Fold in one chunk.

        logits: [..., K]; weight_centres(p [..., K]) -> [..., C] computes ``p @ centres``;
        key_ids: int64 broadcastable to logits, the global key id of each column.
        """
        chunk_max, chunk_arg = logits.detach().max(dim=-1)
        new_max = torch.maximum(self.max, chunk_max)
        # The max only stabilises exp; the result does not depend on it (no gradient needed).
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(self.max - shift)
        p = torch.exp(logits - shift[..., None])
        self.sum = self.sum * rescale + p.sum(-1)
        self.weighted = self.weighted * rescale[..., None] + weight_centres(p)
        self.max = new_max
        # Strictly greater keeps the earliest key on ties (lowest (mu, y)).
        better = chunk_max > self.best
        ids = torch.broadcast_to(key_ids, logits.shape).gather(-1, chunk_arg[..., None])[..., 0]
        self.best = torch.where(better, chunk_max, self.best)
        self.best_key = torch.where(better, ids, self.best_key)


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
    """Ideal score machine (SPEC 3.1): one softmax over whole training images per sample."""
    B, C, H, W = z.shape
    N = data.shape[0]
    q = z.reshape(B, -1)
    q_sq = (q * q).sum(-1)
    inv2s2 = 1.0 / (2 * sigma * sigma)  # [B]
    ones = torch.ones(q.shape[1], dtype=z.dtype, device=z.device)
    state = _RunningSoftmax((B,), C * H * W, z)
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
    """Local score machine (SPEC 3.2): per pixel, training patches at the same location."""
    B, C, H, W = z.shape
    N, HW = data.shape[0], H * W
    rows, cols, pad, weights = _patch_geometry(H, W, C, P, boundary, z)
    D = weights.numel()
    q = extract_patches(z, rows, cols, pad).transpose(0, 1)  # [HW, B, D]
    q_sq = (q * q * weights).sum(-1)
    inv2s2 = (1.0 / (2 * sigma * sigma))[None, :, None]  # [1, B, 1]
    state = _RunningSoftmax((HW, B), C, z)
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


def els_partials(z, data, sigma, P, boundary, keys="all", key_logw=None, *, chunk_size=None,
                 memory_budget=DEFAULT_MEMORY_BUDGET):
    """Equivariant local score machine (SPEC 3.3): every admissible patch of every image."""
    B, C, H, W = z.shape
    N, HW = data.shape[0], H * W
    rows, cols, pad, weights = _patch_geometry(H, W, C, P, boundary, z)
    D = weights.numel()
    allowed = (admissible_centres(H, P, "els", boundary, keys)[:, None, :, None]
               & admissible_centres(W, P, "els", boundary, keys)[None, :, None, :]).reshape(HW, HW)
    log_mask = torch.zeros(HW, HW, dtype=z.dtype, device=z.device).masked_fill(~allowed.to(z.device), float("-inf"))
    q = extract_patches(z, rows, cols, pad).reshape(B * HW, D)
    q_sq = (q * q * weights).sum(-1)
    inv2s2 = (1.0 / (2 * sigma * sigma)).repeat_interleave(HW)[:, None, None]  # [B*HW, 1, 1]
    state = _RunningSoftmax((B * HW,), C, z)
    step = _images_per_chunk(z.element_size() * HW * (D + 4 * B * HW + C), memory_budget, chunk_size)
    for start in range(0, N, step):
        chunk = data[start:start + step].to(z.dtype)
        n = chunk.shape[0]
        k = extract_patches(chunk, rows, cols, pad).reshape(n * HW, D)
        centres = chunk.permute(0, 2, 3, 1).reshape(n * HW, C)
        dist = _sq_dist(q, q_sq, k, weights).reshape(B * HW, n, HW)
        logits = -dist * inv2s2 + log_mask.repeat(B, 1)[:, None, :]
        if key_logw is not None:
            logits = logits + key_logw[start:start + n].reshape(1, n, HW)
        ids = torch.arange(start * HW, (start + n) * HW, device=z.device)
        state.update(logits.reshape(B * HW, n * HW), lambda p, c=centres: p @ c, ids)
    to_map = lambda t: t.reshape(B, H, W)  # noqa: E731
    weighted = state.weighted.reshape(B, H, W, C).permute(0, 3, 1, 2)
    return SoftmaxPartials(to_map(state.max), to_map(state.sum), weighted, to_map(state.best),
                           to_map(state.best_key))


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


def merge_partials(a: SoftmaxPartials, b: SoftmaxPartials) -> SoftmaxPartials:
    """Exact merge of partials over two disjoint key sets (log-sum-exp per query pixel).

    Ties in ``best`` go to ``a``: pass the partials of lower key ids first.
    """
    new_max = torch.maximum(a.max, b.max)
    shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
    sa, sb = torch.exp(a.max - shift), torch.exp(b.max - shift)
    take_b = b.best > a.best
    return SoftmaxPartials(
        new_max, a.sum * sa + b.sum * sb, a.weighted * sa[:, None] + b.weighted * sb[:, None],
        torch.where(take_b, b.best, a.best), torch.where(take_b, b.best_key, a.best_key))


def finalize_partials(parts: SoftmaxPartials):
    """``(x0_hat [B,C,H,W], lse [B,H,W], best_key [B,H,W])`` from partials."""
    x0_hat = parts.weighted / parts.sum[:, None]
    lse = parts.max + torch.log(parts.sum)
    return x0_hat, lse, parts.best_key


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
