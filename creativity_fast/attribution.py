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
from . import reference
from .dictionary import admissible_centres
from .metrics import bootstrap_interval, fraction_summary

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
#: Fashion-MNIST, exact copies of training images have 0.34 / 0.69 / 0.78 / 0.84 of their
#: non-flat pixels credited to themselves at P = 3 / 5 / 7 / 9: 7 is where the gain flattens,
#: while a 7x7 window still fits inside a copied block.
DEFAULT_P_ATTR = 7
#: The runner-up that decides "common": the ``k``-th best distinct image (2 = the second best).
DEFAULT_COMMON_K = 2
#: RMS margin (per patch value, images in [-1, 1]) by which the best image must beat the k-th.
DEFAULT_MARGIN = 0.05
#: A patch whose in-image values span at most this range is near-constant, hence common.
DEFAULT_FLAT_TOL = 0.1
#: Best RMS patch distance above which a pixel is NOVEL (copied from nothing).
DEFAULT_MATCH_TOL = 0.1


# --------------------------------------------------------------------------- #
# nearest patches


def _patches(images: torch.Tensor, P: int, boundary: str, dtype) -> tuple[torch.Tensor, int]:
    """Weighted patches ``[n, H*W, D]`` of ``images [n, C, H, W]`` (the reference's patch geometry:
    zero-extended or wrapped, the reduced support of docs/theory.md §2, with sqrt-weights, so a
    squared L2 distance is the patch distance), and the number of patch values ``C * sum(w)``."""
    n, C, H, W = images.shape
    x = images.to(dtype)
    rows, cols, pad, weights = reference._patch_geometry(H, W, C, P, boundary, x)
    return reference.extract_patches(x, rows, cols, pad) * weights.sqrt(), int(round(float(weights.sum())))


def _query_groups(H: int, W: int, P: int, boundary: str, keys: str, dev) -> list:
    """``[(query pixels, key pixels, penalty [nq, nk] or None)]`` covering every query pixel once.

    The dictionary is separable, so pixels whose row and column admit the same key sets
    share one: the largest such block (the interior on the zero boundary, everything on the
    circular one) is compared with its keys directly; every other pixel (the edge rows and
    columns) goes into one more group with all keys and ``+inf`` on the inadmissible ones.
    """
    Ar = admissible_centres(H, P, "els", boundary, keys)
    Ac = admissible_centres(W, P, "els", boundary, keys)
    blocks = []
    for qr, kr in _axis_groups(Ar):
        for qc, kc in _axis_groups(Ac):
            blocks.append(([r * W + c for r in qr for c in qc], [r * W + c for r in kr for c in kc]))
    blocks.sort(key=lambda b: -len(b[0]) * len(b[1]))
    main_q, main_k = blocks[0]
    groups = [(torch.tensor(main_q, device=dev), torch.tensor(main_k, device=dev), None)]
    rest = sorted(x for b in blocks[1:] for x in b[0])
    if rest:
        qpos = torch.tensor(rest)
        allowed = Ar[qpos // W][:, :, None] & Ac[qpos % W][:, None, :]  # [nq, H, W]
        penalty = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, float("inf"))
        groups.append((qpos.to(dev), torch.arange(H * W, device=dev), penalty.reshape(len(rest), H * W).to(dev)))
    return groups


def _axis_groups(A: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """Positions with identical admissible sets: ``[(query positions, key positions)]`` of ``A [size, size]``."""
    groups: dict = {}
    for r in range(A.shape[0]):
        keys = tuple(torch.nonzero(A[r]).reshape(-1).tolist())
        groups.setdefault(keys, []).append(r)
    return [(q, list(k)) for k, q in groups.items()]


def nearest_patches(samples: torch.Tensor, data: torch.Tensor, P: int, *, boundary: str = "zeros",
                    keys: str = "all", top: int = DEFAULT_COMMON_K, budget: int = 1 << 24,
                    progress: bool = False) -> dict:
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
    ``progress``: a bar over the training images searched.
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
    groups = _query_groups(H, W, P, boundary, keys, dev)
    per_chunk = max(1, budget // max(1, B * max(len(qp) * len(kp) for qp, kp, _ in groups)))
    from tqdm.auto import tqdm
    bar = tqdm(total=N, disable=not progress, desc=f"attribute P={P}", unit="img", leave=False)
    for start in range(0, N, per_chunk):
        chunk = data[start:start + per_chunk].to(dev)
        k, _ = _patches(chunk, P, boundary, f64)  # [n, HW, D]
        n = k.shape[0]
        ids = torch.arange(start, start + n, device=dev)
        for qpos, kpos, penalty in groups:
            qg, kg = q[:, qpos], k[:, kpos]  # [B, nq, D], [n, nk, D]
            # |k|^2 - 2 q.k in one fused addmm; |q|^2 does not change which key or image is nearest.
            d = torch.addmm((kg * kg).sum(-1).reshape(1, -1), qg.reshape(-1, qg.shape[-1]),
                            kg.reshape(-1, kg.shape[-1]).T, alpha=-2)
            d = d.reshape(B, len(qpos), n, len(kpos))
            if penalty is not None:
                d = d + penalty[None, :, None, :]  # +inf on inadmissible keys
            dmin, arg = d.min(-1)  # first minimum: lowest y
            dmin = (dmin + (qg * qg).sum(-1)[:, :, None]).clamp_min(0)
            cat_d = torch.cat([best_d[:, qpos], dmin], -1)
            cat_i = torch.cat([best_i[:, qpos], ids.expand(B, len(qpos), n)], -1)
            cat_y = torch.cat([best_y[:, qpos], kpos[arg]], -1)
            # Stable: among equal distances the earlier entries (lower ids) stay first.
            order = torch.sort(cat_d, dim=-1, stable=True).indices[..., :top]
            best_d[:, qpos] = cat_d.gather(-1, order)
            best_i[:, qpos] = cat_i.gather(-1, order)
            best_y[:, qpos] = cat_y.gather(-1, order)
        bar.update(n)
    bar.close()
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


# --------------------------------------------------------------------------- #
# credit, common, novel; regions


def _check_tol(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0; got {value!r}")
    return float(value)


def _patch_range(samples: torch.Tensor, P: int) -> torch.Tensor:
    """Max minus min of the in-image values (all channels) of each pixel's P x P window: ``[B, H, W]``."""
    m = (P - 1) // 2
    x = samples.to(torch.float64)
    hi = torch.nn.functional.max_pool2d(x, P, stride=1, padding=m).amax(1)  # pads with -inf: in-image only
    lo = -torch.nn.functional.max_pool2d(-x, P, stride=1, padding=m).amax(1)
    return hi - lo


def attribute(samples: torch.Tensor, data: torch.Tensor, P_attr: int = DEFAULT_P_ATTR, *, boundary: str = "zeros",
              keys: str = "all", common_k: int = DEFAULT_COMMON_K, margin: float = DEFAULT_MARGIN,
              flat_tol: float = DEFAULT_FLAT_TOL, match_tol: Optional[float] = DEFAULT_MATCH_TOL,
              budget: int = 1 << 24, progress: bool = False) -> dict:
    """Credit every pixel of ``samples [B, C, H, W]`` to one training image of ``data [N, C, H, W]``, or not.

    With ``rms_j = sqrt(d_j / n_values)`` the RMS patch distance (per value, images in
    [-1, 1]) of the j-th nearest distinct image (:func:`nearest_patches` at ``P_attr``),
    a pixel is (docs/theory.md §7, "Attribution and exposure"):

    - :data:`COMMON` if its ``P_attr`` window is near-constant (in-image values span
      ``<= flat_tol``: background, plain fabric);
    - else :data:`NOVEL` if ``rms_1 > match_tol`` (no training patch is close; ``None``: never);
    - else :data:`COMMON` if ``rms_k - rms_1 <= margin`` with ``k = common_k`` (at least
      ``k`` distinct images hold the patch about equally well);
    - else credited to the nearest image ``mu`` at offset ``(dr, dc)`` = source centre
      minus pixel.

    Returns ``label [B, H, W]`` (image id, COMMON or NOVEL), ``source [B, H, W, 2]`` (nearest
    image and flat location, for every pixel), ``offset [B, H, W, 2]`` (dr, dc), ``rms [B, H, W, k]``,
    ``flat [B, H, W]`` bool, ``regions`` (:func:`connected_regions` per sample) and the parameters.
    """
    samples, data = check_images("samples", samples), check_images("data", data)
    P_attr = check_patch_size(P_attr, "P_attr")
    if isinstance(common_k, bool) or not isinstance(common_k, int) or not 2 <= common_k <= data.shape[0]:
        raise ValueError(f"common_k must be an int in 2..{data.shape[0]} (the training set size); got {common_k!r}")
    margin, flat_tol = _check_tol("margin", margin), _check_tol("flat_tol", flat_tol)
    match_tol = None if match_tol is None else _check_tol("match_tol", match_tol)
    near = nearest_patches(samples, data, P_attr, boundary=boundary, keys=keys, top=common_k, budget=budget,
                           progress=progress)
    B, C, H, W = samples.shape
    rms = (near["distance"] / near["n_values"]).sqrt()
    flat = _patch_range(samples, P_attr) <= flat_tol
    novel = torch.zeros_like(flat) if match_tol is None else rms[..., 0] > match_tol
    common = flat | (~novel & (rms[..., -1] - rms[..., 0] <= margin))
    mu, y = near["image"][..., 0], near["location"][..., 0]
    label = mu.clone()
    label[novel] = NOVEL
    label[common] = COMMON
    rows = torch.arange(H, device=mu.device)[:, None]
    cols = torch.arange(W, device=mu.device)[None, :]
    offset = torch.stack([y // W - rows, y % W - cols], -1)
    out = {"label": label, "source": torch.stack([mu, y], -1), "offset": offset, "rms": rms, "flat": flat,
           "params": {"P_attr": P_attr, "boundary": near["boundary"], "keys": near["keys"], "common_k": common_k,
                      "margin": margin, "flat_tol": flat_tol, "match_tol": match_tol,
                      "offset_tolerance": 0, "connectivity": 4}}
    out["regions"] = [connected_regions(label[b], offset[b]) for b in range(B)]
    return out


def connected_regions(label: torch.Tensor, offset: torch.Tensor) -> list[dict]:
    """4-connected regions of credited pixels with the same image and the identical offset.

    label: [H, W] (image id, or a negative sentinel: not part of any region); offset: [H, W, 2].
    Returns ``[{"image", "offset": [dr, dc], "size", "pixels": [[r, c], ...]}]``, largest first
    (ties: lower image id, then first pixel in reading order).
    """
    if label.dim() != 2 or offset.shape != (*label.shape, 2):
        raise ValueError(f"label must be [H, W] and offset [H, W, 2]; got {list(label.shape)}, {list(offset.shape)}")
    lab = label.cpu().numpy()
    off = offset.cpu().numpy()
    H, W = lab.shape
    seen = np.zeros((H, W), dtype=bool)
    regions = []
    for r0 in range(H):
        for c0 in range(W):
            if seen[r0, c0] or lab[r0, c0] < 0:
                continue
            key = (lab[r0, c0], off[r0, c0, 0], off[r0, c0, 1])
            stack, pixels = [(r0, c0)], []
            seen[r0, c0] = True
            while stack:
                r, c = stack.pop()
                pixels.append([r, c])
                for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if 0 <= rr < H and 0 <= cc < W and not seen[rr, cc] and lab[rr, cc] == key[0] \
                            and off[rr, cc, 0] == key[1] and off[rr, cc, 1] == key[2]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
            pixels.sort()
            regions.append({"image": int(key[0]), "offset": [int(key[1]), int(key[2])], "size": len(pixels),
                            "pixels": pixels})
    regions.sort(key=lambda g: (-g["size"], g["image"], g["pixels"][0]))
    return regions


# --------------------------------------------------------------------------- #
# per sample, per training image, per run


def _region_max_diff(sample: torch.Tensor, data: torch.Tensor, region: dict) -> float:
    """Largest |sample - source| over the region's pixels and channels, the source read at the offset."""
    px = torch.tensor(region["pixels"], dtype=torch.long)
    dr, dc = region["offset"]
    src = data[region["image"]][:, px[:, 0] + dr, px[:, 1] + dc].to(torch.float64).cpu()
    own = sample[:, px[:, 0], px[:, 1]].to(torch.float64).cpu()
    return float((own - src).abs().max())


def sample_summaries(att: dict, samples: torch.Tensor, data: torch.Tensor, *, top_sources: int = 5) -> list[dict]:
    """Per-sample attribution of :func:`attribute`'s result ``att`` on ``samples [B, C, H, W]``, ``data [N, C, H, W]``.

    Each: ``credited``/``common``/``novel`` (pixel fractions), ``n_sources`` (distinct credited
    images, COMMON and NOVEL excluded), ``shares`` (``[[image, pixels], ...]`` every credited
    image, most pixels first), ``top_sources`` (the first ``top_sources`` with their
    ``share`` of all pixels), ``largest_region`` (``image``, ``offset`` [dr, dc], ``size``,
    ``max_abs_diff`` between the sample and the source at the offset; None without one) and
    ``n_regions``.
    """
    label = att["label"].cpu()
    B, H, W = label.shape
    out = []
    for b in range(B):
        lab = label[b].reshape(-1)
        ids, counts = lab[lab >= 0].unique(return_counts=True)
        order = sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0]))
        regions = att["regions"][b]
        largest = None
        if regions:
            g = regions[0]
            largest = {"image": g["image"], "offset": g["offset"], "size": g["size"],
                       "max_abs_diff": _region_max_diff(samples[b], data, g)}
        out.append({"credited": float((lab >= 0).double().mean()), "common": float((lab == COMMON).double().mean()),
                    "novel": float((lab == NOVEL).double().mean()), "n_sources": len(order),
                    "shares": [[i, c] for i, c in order],
                    "top_sources": [{"image": i, "pixels": c, "share": c / (H * W)} for i, c in order[:top_sources]],
                    "largest_region": largest, "n_regions": len(regions)})
    return out


def exposure(att: dict, n_train: int, *, top: int = 10, draws: int = 200, seed: int = 0) -> dict:
    """Per training image: in how many samples it is credited, pixels copied, largest copied region.

    Returns ``n_samples [N]``, ``pixels [N]``, ``largest_region [N]`` (int64 numpy arrays) and a
    ``summary``: ``most_exposed`` (the ``top`` images by pixels: id, samples, pixels, largest
    region and where), ``images_exposed``, ``copied_pixels``, and ``top1pct_share``: the share
    of copied pixels held by the ``k = ceil(N / 100)`` most exposed images, beside the
    ``uniform`` reference ``k / N`` and the ``chance`` one (mean and 95% range over ``draws``
    seeded draws that give every copied region, with its size, to a uniformly random image).
    """
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
        raise ValueError(f"n_train must be a positive int; got {n_train!r}")
    label = att["label"].cpu().numpy()
    if label.size and label.max() >= n_train:
        raise ValueError(f"n_train={n_train} but the attribution credits image {int(label.max())}")
    B = label.shape[0]
    n_samples = np.zeros(n_train, dtype=np.int64)
    pixels = np.zeros(n_train, dtype=np.int64)
    largest = np.zeros(n_train, dtype=np.int64)
    where: dict = {}
    sizes = []
    for b in range(B):
        lab = label[b].reshape(-1)
        lab = lab[lab >= 0]
        pixels += np.bincount(lab, minlength=n_train)
        n_samples[np.unique(lab)] += 1
        for g in att["regions"][b]:
            sizes.append(g["size"])
            if g["size"] > largest[g["image"]]:
                largest[g["image"]] = g["size"]
                where[g["image"]] = {"sample": b, "offset": g["offset"]}
    order = sorted(range(n_train), key=lambda i: (-pixels[i], i))
    most = [{"image": i, "n_samples": int(n_samples[i]), "pixels": int(pixels[i]),
             "largest_region": int(largest[i]), "largest_region_at": where.get(i)} for i in order[:top] if pixels[i] > 0]
    total = int(pixels.sum())
    k = max(1, math.ceil(n_train / 100))
    share = float(np.sort(pixels)[::-1][:k].sum() / total) if total else float("nan")
    rng = np.random.default_rng(seed)
    sizes_a = np.asarray(sizes, dtype=np.int64)
    chance = []
    for _ in range(draws if total else 0):
        t = np.bincount(rng.integers(0, n_train, size=sizes_a.size), weights=sizes_a, minlength=n_train)
        chance.append(np.sort(t)[::-1][:k].sum() / total)
    summary = {"images_exposed": int((pixels > 0).sum()), "copied_pixels": total, "n_train": n_train,
               "most_exposed": most,
               "top1pct_share": {"k": k, "share": share, "uniform": k / n_train,
                                 "chance_mean": float(np.mean(chance)) if chance else float("nan"),
                                 "chance_95": [float(np.quantile(chance, 0.025)), float(np.quantile(chance, 0.975))]
                                 if chance else [float("nan")] * 2}}
    return {"n_samples": n_samples, "pixels": pixels, "largest_region": largest, "summary": summary}


def agreement(att: dict, provenance: torch.Tensor, data: Optional[torch.Tensor] = None,
              samples: Optional[torch.Tensor] = None, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Attribution vs a recorded ``provenance [B, H, W, 2]`` (image, flat location).

    Meaningful when ``att`` was computed at the patch size of the step that recorded
    ``provenance`` (docs/theory.md §7, "Validating attribution against provenance"). Returns:

    - ``image``, ``image_and_location``: on the *credited* pixels (where attribution names a
      source), the credited image is the recorded one (and its best key the recorded
      location); Wilson 95% intervals (``metrics.fraction_summary``);
    - ``all_pixels``: over every pixel, ``image`` and ``image_and_location`` of the nearest
      image (``source``) whatever its label; with ``data [N, C, H, W]`` also ``patch_content``
      (the nearest training patch holds exactly the recorded patch's values: identical
      patches, such as the all-background ones of many images, cannot be told apart), and
      with ``samples [B, C, H, W]`` too ``verdict``: the label is consistent with the recorded
      source (credited: the same image; common: the recorded patch is within ``margin`` RMS
      of the nearest, so it is one of the near-equal candidates the rule refused to choose
      among; novel: the recorded patch is farther than ``match_tol`` too). Each with a Wilson
      interval over pixels and, since the pixels of one sample are not independent, a
      percentile bootstrap over *samples* (``ci95_by_sample``; ``n_boot`` seeded draws);
    - ``credited_fraction``.
    """
    label = att["label"]
    if provenance.shape != (*label.shape, 2):
        raise ValueError(f"provenance must be [B, H, W, 2] = {[*label.shape, 2]}; got {list(provenance.shape)}")
    if samples is not None and data is None:
        raise ValueError("samples needs data (the recorded patches are read from it)")
    prov = provenance.to(label.device)
    credited = label >= 0
    same_mu = (label == prov[..., 0])[credited]
    same_both = (same_mu & (att["source"][..., 1] == prov[..., 1])[credited])
    src = att["source"]
    flags = {"image": src[..., 0] == prov[..., 0],
             "image_and_location": (src[..., 0] == prov[..., 0]) & (src[..., 1] == prov[..., 1])}
    if data is not None:
        B, H, W = label.shape
        params = att["params"]
        P, boundary, dev = params["P_attr"], params["boundary"], label.device
        nearest = _winner_patches(data, src[..., 0].reshape(B, -1), src[..., 1].reshape(B, -1), P, boundary, dev)
        recorded = _winner_patches(data, prov[..., 0].reshape(B, -1), prov[..., 1].reshape(B, -1), P, boundary, dev)
        flags["patch_content"] = ((nearest - recorded).abs().amax(-1) == 0).reshape(B, H, W) | flags["image_and_location"]
        if samples is not None:
            q, n_values = _patches(samples.to(dev), P, boundary, torch.float64)
            rms_rec = (((q - recorded) ** 2).sum(-1) / n_values).sqrt().reshape(B, H, W)
            rms_near = att["rms"][..., 0]
            match_tol = params["match_tol"]
            verdict = torch.where(label == COMMON, rms_rec - rms_near <= params["margin"] + 1e-12,
                                  torch.zeros_like(credited))
            verdict |= credited & (label == prov[..., 0])
            if match_tol is not None:
                verdict |= (label == NOVEL) & (rms_rec > match_tol)
            flags["verdict"] = verdict
    all_pixels = {}
    for name, f in flags.items():
        per_sample = f.reshape(f.shape[0], -1).double().mean(1).cpu().numpy()
        all_pixels[name] = {**fraction_summary(f.cpu().numpy()),
                            "ci95_by_sample": list(bootstrap_interval(per_sample, np.mean, n_boot=n_boot, seed=seed)),
                            "per_sample": [float(v) for v in per_sample]}
    return {"image": fraction_summary(same_mu.cpu().numpy()),
            "image_and_location": fraction_summary(same_both.cpu().numpy()),
            "all_pixels": all_pixels, "credited_fraction": float(credited.double().mean())}


def _dist(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max())}


def run_summary(att: dict, samples: torch.Tensor, data: torch.Tensor, *, top_sources: int = 5,
                exposure_result: Optional[dict] = None) -> dict:
    """Everything JSON-ready: ``params``, ``per_sample`` (:func:`sample_summaries`), ``exposure``
    (:func:`exposure`'s summary) and ``summary`` (distributions over samples of ``n_sources``,
    ``credited``, ``common``, ``novel``, ``largest_region`` size and ``top_source_share``).
    ``exposure_result``: :func:`exposure` of ``att`` when the caller already computed it."""
    per = sample_summaries(att, samples, data, top_sources=top_sources)
    exp = exposure(att, int(data.shape[0])) if exposure_result is None else exposure_result
    summary = {"n_samples": len(per), "n_train": int(data.shape[0]),
               "n_sources": _dist([p["n_sources"] for p in per]),
               "credited": _dist([p["credited"] for p in per]), "common": _dist([p["common"] for p in per]),
               "novel": _dist([p["novel"] for p in per]),
               "largest_region": _dist([p["largest_region"]["size"] if p["largest_region"] else 0 for p in per]),
               "top_source_share": _dist([p["top_sources"][0]["share"] if p["top_sources"] else 0.0 for p in per])}
    return {"params": att["params"], "summary": summary, "per_sample": per, "exposure": exp["summary"]}
