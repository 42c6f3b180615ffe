"""Metrics of memorization, novelty and consistency (docs/theory.md §7).

- :func:`nearest_neighbours`: the ``k`` nearest training images of each sample in L2,
  streamed over the training set in chunks (exact distances for the winners).
- :func:`memorization`: ``d(NN1) / d(NN2) < 1/3`` (Gu et al.), per sample and as a
  fraction with a Wilson 95% interval.
- :func:`novelty`: nearest-neighbour distances of samples beside those of held-out
  real images (the distance a genuinely new image from the data distribution has).
- :func:`compute_provenance` / :func:`provenance_summary`: the patch mosaic: per pixel the
  training image and location of the largest-weight key; distinct sources per sample,
  fraction of pixels taken from another location.
- :func:`local_consistency`: fraction of pixels equal (within ``tol``) to the centre of
  their nearest admissible training patch (the ELS paper's theorem for sigma -> 0).
- :func:`global_consistency`: on twin glyphs, whether all glyphs found in a sample are
  the same (``data.synthetic.find_glyphs``), with the chance rate of each fraction
  (:func:`glyph_chance_rates`, :func:`same_glyph_chance`).
- :func:`wilson_interval`, :func:`bootstrap_interval`: 95% intervals.
- :func:`analyze_samples`: all of the above in one JSON-ready dict.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from ._validate import check_images
from .ops import patch_posterior_mean

__all__ = [
    "MEMORIZATION_THRESHOLD", "nearest_neighbours", "memorization", "novelty", "compute_provenance",
    "provenance_summary", "local_consistency", "global_consistency", "wilson_interval",
    "bootstrap_interval", "fraction_summary", "analyze_samples", "same_glyph_chance", "glyph_chance_rates",
]

#: Gu et al.'s memorization rule: a sample is memorized when d(NN1) / d(NN2) < 1/3.
MEMORIZATION_THRESHOLD = 1.0 / 3.0


# --------------------------------------------------------------------------- #
# intervals


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (good at 0 and 1, unlike the normal one)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..n={n}; got {successes}")
    z = _normal_quantile(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def _normal_quantile(q: float) -> float:
    """Inverse standard normal CDF (bisection on erf; plenty for interval constants)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def bootstrap_interval(values, statistic: Callable = np.median, *, n_boot: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(values)`` (seeded, so reproducible).

    ``n_boot`` resamples of size ``n`` with replacement from ``numpy.random.default_rng(seed)`` (NaN and
    inf dropped first); the interval is the ``(1 -+ confidence) / 2`` quantiles (linear interpolation) of
    the resampled statistics. ``np.median`` and ``np.mean`` run on all resamples at once.
    """
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be a positive int; got {n_boot}")
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.size, size=(int(n_boot), values.size))
    if statistic is np.median or statistic is np.mean:
        stats = statistic(values[draws], axis=1)
    else:
        stats = np.array([statistic(values[row]) for row in draws])
    alpha = (1 - confidence) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def fraction_summary(flags) -> dict:
    """``{"fraction", "count", "n", "ci95": [lo, hi]}`` of a boolean sequence (Wilson interval)."""
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    k, n = int(flags.sum()), int(flags.size)
    return {"fraction": k / n if n else float("nan"), "count": k, "n": n, "ci95": list(wilson_interval(k, n))}


def _distribution(values) -> dict:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return {"n": 0}
    q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(q[2]), "q05": float(q[0]), "q25": float(q[1]),
            "q75": float(q[3]), "q95": float(q[4]), "median_ci95": list(bootstrap_interval(v))}


# --------------------------------------------------------------------------- #
# nearest neighbours and memorization


def nearest_neighbours(samples: torch.Tensor, data: torch.Tensor, k: int = 2, *, chunk_size: int = 4096,
                       exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest training images of every sample in L2.

    samples: [B, C, H, W]; data: [N, C, H, W] (same C, H, W). The training set is
    streamed in chunks of ``chunk_size`` images with a running top-k (float64
    ``|a|^2 + |b|^2 - 2<a, b>``), then the winners' distances are recomputed exactly
    from the differences, so an exact copy has distance 0.
    ``exclude_self``: samples are ``data`` itself; skip each image's own index.

    Returns ``(distances [B, k] float64 ascending, indices [B, k] int64)``.
    """
    samples, data = check_images("samples", samples), check_images("data", data)
    if samples.shape[1:] != data.shape[1:]:
        raise ValueError(f"samples {list(samples.shape)} and data {list(data.shape)} differ in C, H or W")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    N = data.shape[0] - (1 if exclude_self else 0)
    if k > N:
        raise ValueError(f"k={k} nearest neighbours asked of a training set with {N} candidates")
    B = samples.shape[0]
    q = samples.reshape(B, -1).to(torch.float64)
    q_sq = (q * q).sum(1, keepdim=True)
    spare = min(N, k + 4)  # candidates kept for the exact re-ranking
    best_d = torch.full((B, spare), float("inf"), dtype=torch.float64, device=samples.device)
    best_i = torch.full((B, spare), -1, dtype=torch.int64, device=samples.device)
    rows = torch.arange(B, device=samples.device)
    for start in range(0, data.shape[0], chunk_size):
        x = data[start:start + chunk_size].reshape(-1, q.shape[1]).to(torch.float64)
        d = (q_sq + (x * x).sum(1)[None, :] - 2 * q @ x.T).clamp_min(0)
        if exclude_self:
            own = rows - start
            inside = (own >= 0) & (own < x.shape[0])
            d[rows[inside], own[inside]] = float("inf")
        ids = torch.arange(start, start + x.shape[0], device=samples.device).expand(B, -1)
        cat_d, cat_i = torch.cat([best_d, d], 1), torch.cat([best_i, ids], 1)
        best_d, order = cat_d.topk(spare, dim=1, largest=False, sorted=True)
        best_i = cat_i.gather(1, order)
    exact = (data.reshape(data.shape[0], -1).to(torch.float64)[best_i.clamp_min(0)] - q[:, None, :]).norm(dim=2)
    exact = exact.masked_fill(best_i < 0, float("inf"))
    # Re-rank exactly; ties keep the lower index.
    order = torch.from_numpy(np.lexsort((best_i.cpu().numpy(), exact.cpu().numpy()), axis=1)).to(samples.device)
    return exact.gather(1, order)[:, :k], best_i.gather(1, order)[:, :k]


def memorization(samples: torch.Tensor, data: torch.Tensor, *, threshold: float = MEMORIZATION_THRESHOLD,
                 chunk_size: int = 4096) -> dict:
    """Gu et al.'s memorization test: ``ratio = d(NN1) / d(NN2)``, memorized when ``ratio < threshold``.

    Returns a dict of tensors ``ratio [B]``, ``memorized [B]`` bool, ``nn_distance [B, 2]``,
    ``nn_index [B, 2]``, and ``summary`` (fraction memorized with a Wilson 95% interval).
    ``0 / 0`` (a sample equal to two identical training images) counts as memorized.
    """
    d, i = nearest_neighbours(samples, data, 2, chunk_size=chunk_size)
    ratio = torch.where(d[:, 0] == 0, torch.zeros_like(d[:, 0]), d[:, 0] / d[:, 1])
    memorized = ratio < threshold
    return {"ratio": ratio, "memorized": memorized, "nn_distance": d, "nn_index": i,
            "summary": fraction_summary(memorized.cpu().numpy())}


def novelty(samples: torch.Tensor, data: torch.Tensor, heldout: Optional[torch.Tensor] = None, *,
            chunk_size: int = 4096) -> dict:
    """Nearest-training-image distances of samples and, when given, of held-out real images.

    Per-pixel RMS distance ``d / sqrt(C*H*W)`` is reported as well (comparable across
    image sizes). ``relative_median`` = median sample distance / median held-out
    distance: about 1 means as far from the training set as new real images, near 0
    means copies.
    """
    D = math.sqrt(samples[0].numel())
    d, _ = nearest_neighbours(samples, data, 1, chunk_size=chunk_size)
    out = {"sample_nn_distance": d[:, 0], "summary": {"sample": _distribution(d[:, 0].cpu().numpy()),
                                                      "sample_rms": _distribution(d[:, 0].cpu().numpy() / D)}}
    if heldout is not None and heldout.shape[0] > 0:
        h, _ = nearest_neighbours(heldout, data, 1, chunk_size=chunk_size)
        out["heldout_nn_distance"] = h[:, 0]
        out["summary"]["heldout"] = _distribution(h[:, 0].cpu().numpy())
        med_h = float(h[:, 0].median())
        out["summary"]["relative_median"] = float(d[:, 0].median()) / med_h if med_h > 0 else float("nan")
    return out


# --------------------------------------------------------------------------- #
# provenance and local consistency


def compute_provenance(samples: torch.Tensor, data: torch.Tensor, P: int, *, mode: str = "els",
                       boundary: str = "zeros", keys: str = "all", sigma: float = 1.0,
                       key_logw: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
    """Largest-weight key ``(mu, y)`` of every pixel: ``[B, H, W, 2]`` int64.

    Without ``key_logw`` the argmax does not depend on ``sigma``: it is the nearest
    admissible training patch. Applied to final samples this recovers the mosaic a
    sampler's last step recorded (up to the difference between the final image and the
    last noisy state).
    """
    return patch_posterior_mean(samples, data, float(sigma), P, mode=mode, boundary=boundary, keys=keys,
                                key_logw=key_logw, return_stats=True, backend=backend).argmax


def provenance_summary(provenance: torch.Tensor) -> dict:
    """Per-sample mosaic statistics of ``provenance [B, H, W, 2]`` = (training image, flat location).

    Returns ``n_sources [B]`` (distinct training images used), ``moved_fraction [B]`` (pixels
    whose source location differs from their own), ``top_source_share [B]`` (share of pixels
    from the most used image) and a ``summary`` dict.
    """
    if provenance.dim() != 4 or provenance.shape[-1] != 2:
        raise ValueError(f"provenance must be [B, H, W, 2]; got {list(provenance.shape)}")
    B, H, W, _ = provenance.shape
    mu = provenance[..., 0].reshape(B, -1)
    loc = provenance[..., 1].reshape(B, -1)
    own = torch.arange(H * W, device=provenance.device)[None, :]
    n_sources = torch.tensor([int(row.unique().numel()) for row in mu])
    top_share = torch.tensor([float(row.unique(return_counts=True)[1].max()) / (H * W) for row in mu])
    moved = (loc != own).to(torch.float64).mean(1)
    return {"n_sources": n_sources, "moved_fraction": moved, "top_source_share": top_share,
            "summary": {"n_sources": _distribution(n_sources.numpy()),
                        "moved_fraction": _distribution(moved.cpu().numpy()),
                        "top_source_share": _distribution(top_share.numpy()),
                        "single_source": fraction_summary((n_sources == 1).numpy())}}


def local_consistency(samples: torch.Tensor, data: torch.Tensor, P: int, *, mode: str = "els",
                      boundary: str = "zeros", keys: str = "all", tol: float = 0.05,
                      provenance: Optional[torch.Tensor] = None, backend: str = "auto") -> dict:
    """Fraction of pixels equal (max over channels ``|diff| <= tol``) to the centre of their
    nearest admissible training patch (docs/theory.md §7; the ELS theorem as sigma -> 0).

    ``provenance`` may give the nearest keys (else computed with :func:`compute_provenance`).
    Returns ``fraction [B]``, ``consistent [B, H, W]`` bool and a ``summary``.
    """
    if provenance is None:
        provenance = compute_provenance(samples, data, P, mode=mode, boundary=boundary, keys=keys, backend=backend)
    B, C, H, W = samples.shape
    mu, loc = provenance[..., 0].reshape(-1), provenance[..., 1].reshape(-1)
    centres = data.reshape(data.shape[0], C, H * W)[mu, :, loc].reshape(B, H, W, C).permute(0, 3, 1, 2)
    ok = ((samples - centres.to(samples.dtype)).abs().amax(1) <= tol)
    frac = ok.reshape(B, -1).to(torch.float64).mean(1)
    return {"fraction": frac, "consistent": ok,
            "summary": {"pixel_fraction": _distribution(frac.cpu().numpy()),
                        "fully_consistent": fraction_summary((frac == 1).cpu().numpy())}}


# --------------------------------------------------------------------------- #
# global consistency on twin glyphs


def global_consistency(samples: torch.Tensor, *, alphabet: Optional[int] = None,
                       threshold: Optional[float] = None) -> dict:
    """Twin-glyph global consistency (docs/theory.md §7) from the glyphs ``find_glyphs`` detects.

    Per sample: ``glyphs`` (ids in reading order), ``consistent`` (at least one glyph and
    all the same: the consistency measure of docs/theory.md §7), ``twin`` (at least two glyphs, all the same: the
    training images' structure), ``mixed`` (two or more different glyphs) and ``n_glyphs``.
    The summary gives each fraction with a Wilson 95% interval, ``same_given_two`` (among the samples
    with two or more glyphs, the fraction whose glyphs are all the same), ``chance`` (the chance rate of
    each of these fractions, :func:`glyph_chance_rates`) and the glyph-count histogram.
    """
    from .data.synthetic import DEFAULT_ALPHABET, DEFAULT_GLYPH_THRESHOLD, find_glyphs

    glyphs = find_glyphs(samples, alphabet=alphabet or DEFAULT_ALPHABET,
                         threshold=DEFAULT_GLYPH_THRESHOLD if threshold is None else threshold)
    n = np.array([len(g) for g in glyphs])
    distinct = np.array([len(set(g)) for g in glyphs])
    consistent = (n >= 1) & (distinct == 1)
    twin = (n >= 2) & (distinct == 1)
    mixed = distinct >= 2
    hist = {str(c): int((n == c).sum()) for c in sorted(set(n.tolist()))}
    return {"glyphs": glyphs, "n_glyphs": n, "consistent": consistent, "twin": twin, "mixed": mixed,
            "summary": {"consistent": fraction_summary(consistent), "twin": fraction_summary(twin),
                        "mixed": fraction_summary(mixed), "no_glyph": fraction_summary(n == 0),
                        "same_given_two": fraction_summary(twin[n >= 2]),
                        "chance": glyph_chance_rates(glyphs, alphabet or DEFAULT_ALPHABET),
                        "glyph_count_histogram": hist}}


def _glyph_frequencies(glyphs, alphabet: int) -> np.ndarray:
    """``p [alphabet]``: the frequency of each glyph id among all detected glyphs (zeros when none)."""
    counts = np.zeros(int(alphabet), dtype=np.float64)
    for g in glyphs:
        for gid in g:
            gid = int(gid)
            if not 0 <= gid < counts.size:
                raise ValueError(f"glyph id {gid} is outside the alphabet 0..{counts.size - 1}")
            counts[gid] += 1
    return counts / counts.sum() if counts.sum() else counts


def glyph_chance_rates(glyphs, alphabet: int) -> dict:
    """Chance rates of the twin-glyph consistency fractions of :func:`global_consistency`.

    ``glyphs``: per sample, the detected glyph ids (``find_glyphs``). The null model keeps each
    sample's glyph count ``k`` and draws its ``k`` ids independently from the row's own glyph
    frequencies ``p`` (all detected glyphs of these samples), so the ``k`` glyphs are all the same
    with probability ``s_k = sum_g p_g^k`` (``s_1 = 1``). The chance rate of each fraction is its
    expectation under that model:

    - ``consistent`` (>= 1 glyph, all the same; over all samples): ``mean_i [k_i >= 1] s_{k_i}``;
    - ``twin`` (>= 2 glyphs, all the same; over all samples): ``mean_i [k_i >= 2] s_{k_i}``;
    - ``mixed`` (two or more different ids; over all samples): ``mean_i [k_i >= 2] (1 - s_{k_i})``;
    - ``same_given_two`` (all the same among the samples with ``k >= 2``): ``mean_{i: k_i >= 2} s_{k_i}``
      (``1 / alphabet`` for pairs of uniform glyphs; NaN when no sample holds two glyphs).

    NaN everywhere when there are no samples; ``no_glyph`` has no chance rate (it depends on ``k`` only).
    """
    glyphs = [list(g) for g in glyphs]
    if not glyphs:
        nan = float("nan")
        return {"consistent": nan, "twin": nan, "mixed": nan, "same_given_two": nan}
    p = _glyph_frequencies(glyphs, alphabet)
    k = np.array([len(g) for g in glyphs])
    same = np.array([float((p ** n).sum()) if n >= 1 else 0.0 for n in k])
    two = k >= 2
    return {"consistent": float(np.where(k >= 1, same, 0.0).mean()),
            "twin": float(np.where(two, same, 0.0).mean()),
            "mixed": float(np.where(two, 1.0 - same, 0.0).mean()),
            "same_given_two": float(same[two].mean()) if two.any() else float("nan")}


def same_glyph_chance(glyphs, alphabet: int) -> float:
    """Chance rate of "all glyphs the same" among samples with two or more glyphs.

    ``glyphs``: per sample, the detected glyph ids (``find_glyphs``). With ``p_g`` the frequency of
    glyph ``g`` among all detected glyphs of these samples, a sample with ``k >= 2`` glyphs drawn
    independently from ``p`` is all-same with probability ``sum_g p_g^k``; the chance rate is the
    mean of that over the samples with ``k >= 2`` (NaN when there are none). It is what the
    same-glyph rate would be if the glyphs of one image were chosen without regard to each other,
    with the row's own glyph frequencies (``1 / alphabet`` for two uniform glyphs).
    ``glyph_chance_rates(glyphs, alphabet)["same_given_two"]``.
    """
    return glyph_chance_rates(glyphs, alphabet)["same_given_two"]


# --------------------------------------------------------------------------- #
# everything at once


def analyze_samples(samples: torch.Tensor, data: torch.Tensor, *, P: Optional[int] = None, mode: str = "els",
                    boundary: str = "zeros", keys: str = "all", provenance: Optional[torch.Tensor] = None,
                    heldout: Optional[torch.Tensor] = None, glyphs: bool = False, alphabet: Optional[int] = None,
                    tol: float = 0.05, backend: str = "auto", return_provenance: bool = False) -> dict:
    """All docs/theory.md §7 metrics of ``samples [B,C,H,W]`` against ``data [N,C,H,W]``.

    ``P``/``mode``/``boundary``/``keys`` define the admissible patches for provenance and
    local consistency (``mode="ideal"``: whole images; ``P=None`` skips both unless
    ``provenance`` is given). Returns ``{"summary": {...}, "per_sample": {...}}``; both
    are JSON-serialisable through ``io.save_json``. ``return_provenance`` adds the
    ``[B, H, W, 2]`` provenance used (given, or the nearest admissible patches) under
    ``"provenance"``. The tensors go in on one device (the computation runs there); the
    per-sample tensors come back on it, the summary is plain numbers.
    """
    samples = check_images("samples", samples)
    data = check_images("data", data).to(samples.dtype)
    summary: dict = {"n_samples": int(samples.shape[0]), "n_train": int(data.shape[0])}
    per: dict = {}
    mem = memorization(samples, data)
    summary["memorization"] = mem["summary"]
    summary["nn_ratio"] = _distribution(mem["ratio"].cpu().numpy())
    per.update(nn_ratio=mem["ratio"], memorized=mem["memorized"], nn_index=mem["nn_index"][:, 0],
               nn_distance=mem["nn_distance"][:, 0])
    nov = novelty(samples, data, heldout)
    summary["novelty"] = nov["summary"]
    nearest = None
    if P is not None:
        nearest = compute_provenance(samples, data, P, mode=mode, boundary=boundary, keys=keys, backend=backend)
        loc = local_consistency(samples, data, P, tol=tol, provenance=nearest)
        summary["local_consistency"] = loc["summary"]
        per["local_consistency"] = loc["fraction"]
    if provenance is None:
        provenance = nearest
    if provenance is not None:
        prov = provenance_summary(provenance)
        summary["provenance"] = prov["summary"]
        per.update(n_sources=prov["n_sources"], moved_fraction=prov["moved_fraction"])
    if glyphs:
        glob = global_consistency(samples.cpu(), alphabet=alphabet)
        summary["global_consistency"] = glob["summary"]
        per.update(glyphs=[list(map(int, g)) for g in glob["glyphs"]], globally_consistent=glob["consistent"],
                   twin=glob["twin"], mixed=glob["mixed"])
    result = {"summary": summary, "per_sample": per}
    if return_provenance:
        result["provenance"] = provenance
    return result
