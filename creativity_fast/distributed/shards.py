"""Softmax partials of one shard of the training set, and their merge over ranks (docs/theory.md §4.2).

Each rank holds one part of the training images and computes, per query pixel, the
streaming-softmax partials over its keys (``partials.SoftmaxPartials``) with key ids
made global by the shard's image ids. The partials merge exactly by log-sum-exp, in
three all-reduces (:func:`all_reduce_partials`): MAX of ``(max, best)``, SUM of
``(sum, weighted)`` rescaled to the global max, MIN of the key id among the ranks that
hold the best logit (ties go to the lowest global key id, as in one process). The
result equals the one-process result up to float rounding of the sums.

With the compiled kernel the partials are ``(max = lse, sum = 1, weighted = x0_hat)``
(no new kernel needed); the best logit is recomputed from the best key (one patch
distance per pixel, float64), so equal keys on different ranks compare equal.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .._validate import check_operator_args, check_paired_args
from ..dictionary import patch_offsets
from ..ops import use_kernel
from ..partials import SoftmaxPartials, empty_partials, partials_from_mean, widen
from .world import all_reduce, dist, is_distributed

_NO_KEY = torch.iinfo(torch.int64).max


def key_logits(z: torch.Tensor, data: torch.Tensor, sigma: torch.Tensor, P: int, mode: str, boundary: str,
               key_logw: Optional[torch.Tensor], best_key: torch.Tensor) -> torch.Tensor:
    """Logit ``-|Pi_x z - Pi_y phi^mu|^2 / (2 sigma^2) + key_logw`` of key ``best_key = mu*H*W + y`` per pixel.

    One patch distance per query pixel, in float64 with the difference form, so the
    same key content gives the same value on every rank; ``-inf`` where ``best_key < 0``.
    Only the key patches are gathered (memory ``O(B*H*W*C*P*P)`` in bounded chunks,
    never a copy of the shard).
    """
    B, C, H, W = z.shape
    HW = H * W
    valid = best_key >= 0
    key = best_key.clamp_min(0)
    mu, y = key // HW, key % HW
    z64 = z.double()
    inv2s2 = 1.0 / (2.0 * sigma.double() ** 2)  # [B]
    if mode == "ideal":
        img = mu[:, 0, 0]  # the same image at every pixel of a sample
        d = ((z64.reshape(B, -1) - data[img].double().reshape(B, -1)) ** 2).sum(-1)
        logit = (-d * inv2s2)[:, None, None].expand(B, H, W)
        if key_logw is not None:
            logit = logit + key_logw[img].double()[:, None, None]
    else:
        rows, cols, pad, weights = reference._patch_geometry(H, W, C, P, boundary, z64)
        row_off = torch.tensor(patch_offsets(P, H, boundary)[0], device=z.device)
        col_off = torch.tensor(patch_offsets(P, W, boundary)[0], device=z.device)
        ch = torch.arange(C, device=z.device)[None, :, None, None]
        per_sample = HW * weights.numel() * 24  # bytes of one sample's query and key patches
        step = max(1, (64 * 2**20) // per_sample)
        d = []
        for b in range(0, B, step):  # bounded memory for big images and P
            q = reference.extract_patches(z64[b:b + step], rows, cols, pad)  # [b, HW, C*Kr*Kc]
            mu_f, y_f = mu[b:b + step].reshape(-1), y[b:b + step].reshape(-1)
            r = (y_f // W)[:, None] + row_off[None, :]  # [b*HW, Kr] rows of the key patch
            c = (y_f % W)[:, None] + col_off[None, :]
            if boundary == "circular":
                r, c = r % H, c % W
            inside = ((r >= 0) & (r < H))[:, None, :, None] & ((c >= 0) & (c < W))[:, None, None, :]
            k = data[mu_f[:, None, None, None], ch, r.clamp(0, H - 1)[:, None, :, None],
                     c.clamp(0, W - 1)[:, None, None, :]].double() * inside  # [b*HW, C, Kr, Kc], zero-extended
            d.append(((q.reshape(k.shape[0], -1) - k.reshape(k.shape[0], -1)) ** 2 * weights).sum(-1))
        logit = -torch.cat(d).reshape(B, H, W) * inv2s2[:, None, None]
        if key_logw is not None:
            logit = logit + key_logw.reshape(-1, HW)[mu, y].double()
    return torch.where(valid, logit, torch.full_like(logit, float("-inf")))


def _shard_image_ids(image_ids, offset: int, n: int, device) -> torch.Tensor:
    """Global ids ``[n]`` of a shard's images: ``image_ids`` as given, or ``offset + arange(n)``."""
    if image_ids is None:
        return torch.arange(int(offset), int(offset) + n, device=device)
    image_ids = torch.as_tensor(image_ids, device=device).reshape(-1).long()
    if image_ids.shape[0] != n:
        raise ValueError(f"image_ids has {image_ids.shape[0]} entries but data has {n} images")
    return image_ids


def _global_key(best_key: torch.Tensor, image_ids: torch.Tensor, HW: int) -> torch.Tensor:
    """A shard's key ids ``local image * HW + location`` as global ones; -1 (no key) stays -1."""
    local = best_key.clamp_min(0)
    global_key = image_ids[local // HW] * HW + local % HW
    return torch.where(best_key >= 0, global_key, torch.full_like(global_key, -1))


def patch_posterior_partials(
    z: torch.Tensor,
    data: torch.Tensor,
    sigma,
    P: int,
    *,
    mode: str = "els",
    boundary: str = "zeros",
    keys: str = "all",
    key_logw: Optional[torch.Tensor] = None,
    backend: str = "auto",
    offset: int = 0,
    image_ids: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
) -> SoftmaxPartials:
    """Mergeable partials of ``patch_posterior_mean`` over one shard of the training set.

    Arguments as ``ops.patch_posterior_mean``; ``data [n, C, H, W]`` may be empty
    (then ``max = best = -inf``, ``sum = 0``). Key ids are global:
    ``best_key = image_ids[mu] * H * W + y`` with ``image_ids`` the global index of
    each shard image (default ``offset + arange(n)``, a contiguous shard), so partials
    of the shards merge (``merge_partials``, ``all_reduce_partials``) into exactly the
    one-process ``(x0_hat, lse, best_key)`` (lowest global key id on ties).

    Returns ``SoftmaxPartials(max [B,H,W], sum [B,H,W], weighted [B,C,H,W], best [B,H,W], best_key [B,H,W])``,
    in float64 whatever the input dtype, so that merging adds no rounding of its own
    (``finalize_partials`` then gives float64; cast to ``z.dtype`` as needed).
    """
    z, data, sigma, P, mode, boundary, keys, key_logw, backend = check_operator_args(
        z, data, sigma, P, mode, boundary, keys, key_logw, backend, allow_empty=True)
    if data.shape[0] == 0:
        return widen(empty_partials(z))
    image_ids = _shard_image_ids(image_ids, offset, data.shape[0], z.device)
    with torch.no_grad():
        if use_kernel("patch_posterior_mean", backend, z.device):
            x0_hat, lse, best_key = torch.ops.creativity_fast.patch_posterior_mean(
                z.contiguous(), data.contiguous(), sigma, P, mode, boundary, keys, key_logw, True)
            parts = partials_from_mean(x0_hat, lse, best_key)
        else:
            parts = reference.patch_posterior_partials_reference(z, data, sigma, P, mode, boundary, keys, key_logw,
                                                                 chunk_size=chunk_size)
        best = key_logits(z, data, sigma, P, mode, boundary, key_logw, parts.best_key)
    return widen(SoftmaxPartials(parts.max, parts.sum, parts.weighted, best,
                                 _global_key(parts.best_key, image_ids, z.shape[2] * z.shape[3])))


def _windows(images: torch.Tensor, which: torch.Tensor, loc: torch.Tensor, P: int, boundary: str) -> torch.Tensor:
    """Patches ``[K, C*Kr*Kc]`` (float64, the reduced offsets of ``dictionary.patch_offsets``) of
    ``images[which[k]]`` centred at flat location ``loc[k]``; -1 gives the zero patch."""
    _, C, H, W = images.shape
    dev = images.device
    row_off = torch.tensor(patch_offsets(P, H, boundary)[0], device=dev)
    col_off = torch.tensor(patch_offsets(P, W, boundary)[0], device=dev)
    ch = torch.arange(C, device=dev)[None, :, None, None]
    at = loc.clamp_min(0)
    r = (at // W)[:, None] + row_off[None, :]
    c = (at % W)[:, None] + col_off[None, :]
    if boundary == "circular":
        r, c = r % H, c % W
    inside = ((r >= 0) & (r < H))[:, None, :, None] & ((c >= 0) & (c < W))[:, None, None, :]
    inside = inside & (loc >= 0)[:, None, None, None]
    k = images[which[:, None, None, None], ch, r.clamp(0, H - 1)[:, None, :, None],
               c.clamp(0, W - 1)[:, None, None, :]].double() * inside
    return k.reshape(k.shape[0], -1)


def paired_key_logits(z, data, sigma, P, P2, query_partner, key_partner, beta, boundary, best_key) -> torch.Tensor:
    """The paired-patch logit (docs/theory.md §3.7) of key ``best_key = mu*H*W + u`` per pixel, float64.

    ``key_logits`` (the ELS distance) minus ``beta |Pi2_{q(x)} z - Pi2_{a_mu(u)} phi^mu|^2 / (2 sigma^2)``,
    one partner distance per query pixel in the difference form; ``-inf`` where ``best_key < 0``.
    """
    logit = key_logits(z, data, sigma, P, "els", boundary, None, best_key)
    B, C, H, W = z.shape
    HW = H * W
    weights = reference._patch_geometry(H, W, C, P2, boundary, z.double())[3]
    key = best_key.clamp_min(0)
    mu, u = key // HW, key % HW
    a = key_partner.reshape(-1, HW)[mu, u]  # the best key's partner [B, H, W]
    inv2s2 = 1.0 / (2.0 * sigma.double() ** 2)
    per_sample = HW * weights.numel() * 24
    step = max(1, (64 * 2**20) // per_sample)
    d2 = []
    for b in range(0, B, step):  # bounded memory
        nb = min(B, b + step) - b
        which = torch.arange(b, b + nb, device=z.device).repeat_interleave(HW)
        q = _windows(z, which, query_partner[b:b + nb].reshape(-1), P2, boundary)
        k = _windows(data, mu[b:b + nb].reshape(-1), a[b:b + nb].reshape(-1), P2, boundary)
        d2.append(((q - k) ** 2 * weights).sum(-1))
    term = beta * torch.cat(d2).reshape(B, H, W) * inv2s2[:, None, None]
    return torch.where(best_key >= 0, logit - term, logit)


def paired_patch_posterior_partials(z, data, sigma, P, query_partner, key_partner, *, beta: float = 1.0,
                                    P2: Optional[int] = None, boundary: str = "zeros", keys: str = "all",
                                    backend: str = "auto", offset: int = 0,
                                    image_ids: Optional[torch.Tensor] = None,
                                    chunk_size: Optional[int] = None) -> SoftmaxPartials:
    """Mergeable partials of ``paired_patch_posterior_mean`` over one shard of the training set.

    Arguments as ``ops.paired_patch_posterior_mean`` (``key_partner [n, H, W]`` the shard's) plus
    ``offset`` / ``image_ids`` as :func:`patch_posterior_partials`; ``data`` may be empty.
    Returns float64 ``SoftmaxPartials`` with global key ids.
    """
    z, data, sigma, P, query_partner, key_partner, beta, P2, boundary, keys, backend = check_paired_args(
        z, data, sigma, P, query_partner, key_partner, beta, P2, boundary, keys, backend, allow_empty=True)
    if data.shape[0] == 0:
        return widen(empty_partials(z))
    image_ids = _shard_image_ids(image_ids, offset, data.shape[0], z.device)
    with torch.no_grad():
        if use_kernel("paired_patch_posterior_mean", backend, z.device):
            x0_hat, lse, best_key = torch.ops.creativity_fast.paired_patch_posterior_mean(
                z.contiguous(), data.contiguous(), sigma, P, P2, query_partner, key_partner, beta, boundary, keys,
                True)
            parts = partials_from_mean(x0_hat, lse, best_key)
        else:
            parts = reference.paired_patch_posterior_partials_reference(
                z, data, sigma, P, P2, query_partner, key_partner, beta, boundary, keys, chunk_size=chunk_size)
        best = paired_key_logits(z, data, sigma, P, P2, query_partner, key_partner, beta, boundary,
                                 parts.best_key)
    return widen(SoftmaxPartials(parts.max, parts.sum, parts.weighted, best,
                                 _global_key(parts.best_key, image_ids, z.shape[2] * z.shape[3])))


def all_reduce_partials(parts: SoftmaxPartials, group=None) -> SoftmaxPartials:
    """Exact log-sum-exp merge of every rank's partials; every rank gets the merged partials.

    Three all-reduces: MAX of ``(max, best)``; SUM of ``sum`` and ``weighted`` rescaled
    to the global max; MIN of the key id among ranks holding the global best logit
    (lowest global key id on ties). Identity when not distributed.
    """
    if not is_distributed(group):
        return parts
    parts = widen(parts)
    maxes = all_reduce(torch.stack([parts.max, parts.best]), dist.ReduceOp.MAX, group, "the partials' running max")
    gmax, gbest = maxes[0], maxes[1]
    shift = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))
    scale = torch.exp(parts.max - shift)  # 0 where this rank has no key
    sums = torch.cat([(parts.sum * scale)[:, None], parts.weighted * scale[:, None]], dim=1)
    sums = all_reduce(sums, dist.ReduceOp.SUM, group, "the partials' normaliser and weighted sum")
    mine = (parts.best_key >= 0) & (parts.best == gbest)
    candidate = torch.where(mine, parts.best_key, torch.full_like(parts.best_key, _NO_KEY))
    key = all_reduce(candidate, dist.ReduceOp.MIN, group, "the provenance key")
    key = torch.where(key == _NO_KEY, torch.full_like(key, -1), key)
    return SoftmaxPartials(gmax, sums[:, 0], sums[:, 1:], gbest, key)
