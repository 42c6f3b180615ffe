"""Attribution and exposure: which training images each sample copies, and how much (docs/theory.md §7).

The recorded provenance of a patch machine (the largest-weight key at the last step,
usually at P = 3) is decided among thousands of near-identical small patches and
identifies no source. Attribution asks a sharper question of the *final* image, so
that machine and network samples go through the same function:

1. :func:`nearest_patches`: per sample pixel, the ``top`` distinct training images
   whose best admissible patch of size ``P_attr`` is nearest (exact search, streamed
   over the training set, bounded memory; the ELS dictionary of docs/theory.md §3.3).
2. :func:`attribute`: each pixel is credited to its nearest image, or marked
   :data:`COMMON` (a near-constant patch, or one that the ``common_k``-th best
   distinct image matches within ``margin``) or :data:`NOVEL` (no training patch
   within ``match_tol``); credited pixels with the same image and the same offset
   (source location minus pixel location) form 4-connected regions.
3. :func:`sample_summaries` and :func:`exposure`: per sample (shares, top sources,
   largest copied region) and per training image (samples, pixels, largest region,
   top-1% share beside its uniform and chance references).
4. :func:`agreement`: attribution vs a recorded provenance, on credited pixels.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ._validate import check_choice, check_images, check_patch_size
from .dictionary import admissible_centres, patch_offsets
from .metrics import fraction_summary, wilson_interval

__all__ = [
    "COMMON", "NOVEL", "DEFAULT_P_ATTR", "DEFAULT_COMMON_K", "DEFAULT_MARGIN", "DEFAULT_FLAT_TOL",
    "DEFAULT_MATCH_TOL", "nearest_patches", "attribute", "connected_regions", "sample_summaries", "exposure",
    "agreement", "run_summary",
]

#: Label of a pixel whose patch is shared by many training images (not credited to one).
COMMON = -1
#: Label of a pixel with no training patch within ``match_tol`` (not a copy of anything).
NOVEL = -2

#: Patch size of the evidence (docs/theory.md §7, "Attribution and exposure"): on 28x28
#: Fashion-MNIST, 7 is the smallest size at which most non-constant pixels have a decisive
#: nearest image, while a 7x7 window still fits inside a copied block.
DEFAULT_P_ATTR = 7
#: The runner-up that decides "common": the ``k``-th best distinct image (2 = the second best).
DEFAULT_COMMON_K = 2
#: RMS margin (per patch value, images in [-1, 1]) by which the best image must beat the k-th.
DEFAULT_MARGIN = 0.02
#: A patch whose in-image values span at most this range is near-constant, hence common.
DEFAULT_FLAT_TOL = 0.1
#: Best RMS patch distance above which a pixel is NOVEL (copied from nothing).
DEFAULT_MATCH_TOL = 0.1


# --------------------------------------------------------------------------- #
# nearest patches


def _patches(images: torch.Tensor, P: int, boundary: str, dtype) -> tuple[torch.Tensor, int]:
    """Weighted patches ``[n, H*W, D]`` of ``images [n, C, H, W]`` (zero-extended or wrapped; reduced
    support of docs/theory.md §2 with sqrt-weights, so a squared L2 distance is the patch distance),
    and the number of patch values ``C * sum(w_r) * sum(w_c)``."""
    n, C, H, W = images.shape
    dr, wr = patch_offsets(P, H, boundary)
    dc, wc = patch_offsets(P, W, boundary)
    x = images.to(dtype)
    rows = torch.arange(H)[:, None] + torch.tensor(dr)[None, :]  # [H, len(dr)]
    cols = torch.arange(W)[:, None] + torch.tensor(dc)[None, :]
    if boundary == "zeros":
        pr, pc = len(dr) // 2, len(dc) // 2
        x = torch.nn.functional.pad(x, (pc, pc, pr, pr))
        rows, cols = rows + pr, cols + pc
    else:
        rows, cols = rows % H, cols % W
    rows, cols = rows.to(images.device), cols.to(images.device)
    # [n, C, H, len(dr), W, len(dc)]
    p = x[:, :, rows[:, :, None, None], cols[None, None, :, :]]
    w = (torch.tensor(wr, dtype=dtype)[:, None] * torch.tensor(wc, dtype=dtype)[None, :]).sqrt().to(images.device)
    p = p * w[None, None, None, :, None, :]
    p = p.permute(0, 2, 4, 1, 3, 5).reshape(n, H * W, -1)
    return p, C * sum(wr) * sum(wc)


def _axis_groups(A: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """Positions with identical admissible sets: ``[(query positions, key positions)]`` of ``A [size, size]``."""
    groups: dict = {}
    for r in range(A.shape[0]):
        keys = tuple(torch.nonzero(A[r]).reshape(-1).tolist())
        groups.setdefault(keys, []).append(r)
    return [(q, list(k)) for k, q in groups.items()]


def nearest_patches(samples: torch.Tensor, data: torch.Tensor, P: int, *, boundary: str = "zeros",
                    keys: str = "all", top: int = DEFAULT_COMMON_K, budget: int = 1 << 23) -> dict:
    """The ``top`` nearest distinct training images of every pixel's patch (exact, float64).

    samples: [B, C, H, W]; data: [N, C, H, W]. For each pixel ``x`` and image ``mu`` the
    image's best key is ``min_{y in D_x} |Pi_x s - Pi_y phi^mu|_w^2`` over the admissible
    centres of ELS (docs/theory.md §3.3: ``boundary``, ``keys``), ties to the lowest ``y``;
    images are ranked by (distance, id). The dictionary splits into groups of pixels with
    the same admissible set (on the zero boundary: the interior block and each edge
    row/column), each compared with its keys by one matmul per chunk of images
    (``|q|^2 + |k|^2 - 2 q.k``, at most ``budget`` distances at a time); the winners'
    distances are then recomputed from differences, so an exact copy has distance 0.

    Returns ``distance [B, H, W, top]`` float64 (squared, ascending), ``image [B, H, W, top]``,
    ``location [B, H, W, top]`` (flat ``r*W + c`` of the image's best key) int64, and
    ``n_values`` (values per patch, for RMS distances ``sqrt(distance / n_values)``).
    """
    samples, data = check_images("samples", samples), check_images("data", data)
    if samples.shape[1:] != data.shape[1:]:
        raise ValueError(f"samples {list(samples.shape)} and data {list(data.shape)} differ in C, H or W")
    P = check_patch_size(P, "P")
    boundary = check_choice("boundary", boundary, ("zeros", "circular"))
    keys = check_choice("keys", keys, ("all", "valid"))
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= data.shape[0]:
        raise ValueError(f"top must be an int in 1..{data.shape[0]} (the training set size); got {top!r}")
    B, C, H, W = samples.shape
    N, dev, f64 = data.shape[0], samples.device, torch.float64
    q, n_values = _patches(samples, P, boundary, f64)  # [B, HW, D]
    best_d = torch.full((B, H * W, top), float("inf"), dtype=f64, device=dev)
    best_i = torch.full((B, H * W, top), -1, dtype=torch.int64, device=dev)
    best_y = torch.full((B, H * W, top), -1, dtype=torch.int64, device=dev)
    groups = []
    for qr, kr in _axis_groups(admissible_centres(H, P, "els", boundary, keys)):
        for qc, kc in _axis_groups(admissible_centres(W, P, "els", boundary, keys)):
            qpos = torch.tensor([r * W + c for r in qr for c in qc], device=dev)
            kpos = torch.tensor([r * W + c for r in kr for c in kc], device=dev)
            groups.append((qpos, kpos))
    per_chunk = max(1, budget // max(1, B * max(len(qp) * len(kp) for qp, kp in groups)))
    for start in range(0, N, per_chunk):
        chunk = data[start:start + per_chunk].to(dev)
        k, _ = _patches(chunk, P, boundary, f64)  # [n, HW, D]
        n = k.shape[0]
        ids = torch.arange(start, start + n, device=dev)
        for qpos, kpos in groups:
            qg, kg = q[:, qpos], k[:, kpos]  # [B, nq, D], [n, nk, D]
            d = (qg * qg).sum(-1)[:, :, None] + (kg * kg).sum(-1).reshape(1, 1, -1) \
                - 2 * qg.reshape(-1, qg.shape[-1]).matmul(kg.reshape(-1, kg.shape[-1]).T).reshape(B, len(qpos), -1)
            dmin, arg = d.clamp_min(0).reshape(B, len(qpos), n, len(kpos)).min(-1)  # first minimum: lowest y
            cat_d = torch.cat([best_d[:, qpos], dmin], -1)
            cat_i = torch.cat([best_i[:, qpos], ids.expand(B, len(qpos), n)], -1)
            cat_y = torch.cat([best_y[:, qpos], kpos[arg]], -1)
            # Stable: among equal distances the earlier entries (lower ids) stay first.
            order = torch.sort(cat_d, dim=-1, stable=True).indices[..., :top]
            best_d[:, qpos] = cat_d.gather(-1, order)
            best_i[:, qpos] = cat_i.gather(-1, order)
            best_y[:, qpos] = cat_y.gather(-1, order)
    # Exact distances of the winners, from differences.
    exact = torch.empty_like(best_d)
    for t in range(top):
        kt = _winner_patches(data, best_i[..., t], best_y[..., t], P, boundary, dev)
        exact[..., t] = ((q - kt) ** 2).sum(-1)
    # Re-rank exactly; ties keep the lower id.
    order = torch.from_numpy(np.lexsort((best_i.cpu().numpy(), exact.cpu().numpy()), axis=-1)).to(dev)
    shape = (B, H, W, top)
    return {"distance": exact.gather(-1, order).reshape(shape), "image": best_i.gather(-1, order).reshape(shape),
            "location": best_y.gather(-1, order).reshape(shape), "n_values": int(n_values), "P": P,
            "boundary": boundary, "keys": keys}


def _winner_patches(data, mu, y, P, boundary, dev) -> torch.Tensor:
    """Patches ``[B, HW, D]`` of training image ``mu[b, x]`` at location ``y[b, x]``, one image at a time."""
    B, HW = mu.shape
    out = None
    for img in torch.unique(mu).tolist():
        p, _ = _patches(data[img:img + 1].to(dev), P, boundary, torch.float64)
        if out is None:
            out = torch.zeros(B, HW, p.shape[-1], dtype=torch.float64, device=dev)
        sel = mu == img
        out[sel] = p[0][y[sel]]
    return out
