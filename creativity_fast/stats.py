"""Statistics of a network-versus-machine comparison (docs/calibration.md, "Statistics").

Per seed (one network sample ``n`` and one machine sample ``m`` from the same noise, all
pixels and channels flattened), :func:`creativity_fast.calibration.agreement` gives

- ``r``: Pearson's correlation of ``n`` and ``m`` (what the released evaluation code of
  Kamb & Ganguli computes and its tables report);
- ``r^2 = r * r``: the squared correlation (the text of the paper says "r^2" in places);
  it is the R^2 of the best *affine* fit of ``n`` by ``m``;
- ``R^2 = 1 - sum (n - m)^2 / sum (n - mean n)^2``: the coefficient of determination of
  the network sample by the machine sample used as is (no fitted scale or offset). It
  can be negative, and ``R^2 <= r^2``.

Over seeds this module summarises them: the median with a seeded percentile bootstrap
95% interval (:func:`bootstrap_median_ci`), the fraction of seeds on which a machine
beats a baseline with a Wilson score interval (:func:`wilson_interval`), and the
per-seed paired difference with its median and interval (:func:`summarize`).
Everything is deterministic for a given ``seed`` of the bootstrap.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from .metrics import bootstrap_interval, wilson_interval as _wilson

__all__ = ["BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "bootstrap_median_ci", "wilson_interval", "median_summary",
           "win_fraction", "summarize", "per_seed_rows"]

#: Bootstrap resamples and generator seed used by ``compare`` (recorded in its JSON).
BOOTSTRAP_RESAMPLES = 10000
BOOTSTRAP_SEED = 0


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[np.isfinite(x)]


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    return level


def bootstrap_median_ci(values, *, level: float = 0.95, n_boot: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval for the median of ``values [n]`` (NaN and inf dropped):
    :func:`creativity_fast.metrics.bootstrap_interval` with ``np.median``. One finite value gives
    ``(v, v)``; none gives ``(nan, nan)``."""
    return bootstrap_interval(values, np.median, n_boot=n_boot, confidence=_check_level(level), seed=seed)


def wilson_interval(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k / n`` (:func:`creativity_fast.metrics.wilson_interval`)."""
    return _wilson(k, n, _check_level(level))


def median_summary(values, *, level: float = 0.95, n_boot: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> dict:
    """``{"median", "ci": [lo, hi], "n"}`` of the finite entries of ``values``."""
    x = _finite(values)
    lo, hi = bootstrap_median_ci(x, level=level, n_boot=n_boot, seed=seed)
    return {"median": float(np.median(x)) if x.size else math.nan, "ci": [lo, hi], "n": int(x.size)}


def win_fraction(a, b, *, level: float = 0.95) -> dict:
    """Fraction of seeds with ``a > b`` (strictly; seeds where either is NaN are dropped) and its
    Wilson interval: ``{"fraction", "wins", "n", "ci": [lo, hi]}``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold one value per seed each; got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    wins, n = int((a[ok] > b[ok]).sum()), int(ok.sum())
    lo, hi = wilson_interval(wins, n, level=level)
    return {"fraction": wins / n if n else math.nan, "wins": wins, "n": n, "ci": [lo, hi]}


def summarize(r: Mapping[str, Sequence[float]], R2: Mapping[str, Sequence[float]], *,
              baseline: Optional[str] = "ideal", level: float = 0.95, n_boot: int = BOOTSTRAP_RESAMPLES,
              seed: int = BOOTSTRAP_SEED) -> dict:
    """Every statistic of a comparison, per machine (``r[name], R2[name]: [n_seeds]``).

    Returns ``{"level", "bootstrap": {...}, "machines": {name: {"r", "r_squared", "R2"}}, "versus": {...}}``
    where ``r``, ``r_squared`` (``r*r`` per seed) and ``R2`` are :func:`median_summary` dicts, and, when
    ``baseline`` is one of the machines, ``versus[name]`` (every other machine) holds
    ``"beats": win_fraction(r[name], r[baseline])`` and ``"difference": median_summary(r[name] - r[baseline])``
    (the per-seed paired difference of ``r``).
    """
    kw = dict(level=level, n_boot=n_boot, seed=seed)
    machines = {}
    for name, values in r.items():
        rv = np.asarray(values, dtype=np.float64)
        machines[name] = {"r": median_summary(rv, **kw), "r_squared": median_summary(rv * rv, **kw),
                          "R2": median_summary(R2[name], **kw)}
    versus: Dict[str, dict] = {}
    if baseline is not None and baseline in r:
        base = np.asarray(r[baseline], dtype=np.float64)
        for name, values in r.items():
            if name == baseline:
                continue
            rv = np.asarray(values, dtype=np.float64)
            versus[name] = {"baseline": baseline, "beats": win_fraction(rv, base, level=level),
                            "difference": median_summary(rv - base, **kw)}
    return {"level": level, "bootstrap": {"method": "percentile", "resamples": int(n_boot), "seed": int(seed)},
            "machines": machines, "versus": versus}


def per_seed_rows(seeds: Sequence[int], classes: Sequence[Optional[int]], r: Mapping[str, Sequence[float]],
                  R2: Mapping[str, Sequence[float]]) -> list[dict]:
    """One row per seed: ``seed``, ``class`` and, per machine, ``r_<name>``, ``r2_<name>`` (= r^2) and
    ``R2_<name>`` (coefficient of determination)."""
    rows = []
    for i, s in enumerate(seeds):
        row = {"seed": int(s), "class": "" if classes[i] is None else int(classes[i])}
        for name in r:
            v = float(r[name][i])
            row[f"r_{name}"] = v
            row[f"r2_{name}"] = v * v
            row[f"R2_{name}"] = float(R2[name][i])
        rows.append(row)
    return rows
