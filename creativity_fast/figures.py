"""Figures of the analyses: provenance mosaics, samples per machine, sweep and novelty plots.

Every writer is atomic (``io.atomic_open``). Provenance panels are drawn with numpy
and Pillow; plots use matplotlib's Agg backend (imported on first use).
"""

from __future__ import annotations

import colorsys
import io as _pyio
import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from . import io
from .viz import to_uint8

__all__ = [
    "id_colours", "offset_colours", "provenance_panels", "save_provenance_png", "save_samples_by_machine",
    "plot_sweep", "plot_nn_distances", "save_figure", "plot_training_log",
]

_GOLDEN = 0.618033988749895


def id_colours(ids: np.ndarray) -> np.ndarray:
    """A fixed colour per training-image id (golden-ratio hues): ``ids [...]`` -> uint8 ``[..., 3]``.

    The same id has the same colour in every sample and every figure.
    """
    ids = np.asarray(ids, dtype=np.int64)
    flat = ids.reshape(-1)
    table = {}
    for value in np.unique(flat):
        h = (int(value) * _GOLDEN) % 1.0
        s = 0.55 + 0.4 * ((int(value) * 0.37) % 1.0)
        v = 0.65 + 0.35 * ((int(value) * 0.71) % 1.0)
        table[int(value)] = [round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)]
    out = np.array([table[int(v)] for v in flat], dtype=np.uint8)
    return out.reshape(*ids.shape, 3)


def offset_colours(dr: np.ndarray, dc: np.ndarray, max_norm: float) -> np.ndarray:
    """Source offsets as colours: hue = direction, saturation grows with length (0.35 at the
    shortest, 1 at ``max_norm``); a zero offset is white."""
    dr, dc = np.asarray(dr, dtype=np.float64), np.asarray(dc, dtype=np.float64)
    hue = (np.arctan2(dr, dc) / (2 * math.pi)) % 1.0
    norm = np.hypot(dr, dc)
    sat = np.where(norm > 0, 0.35 + 0.65 * np.clip(norm / max(max_norm, 1e-9), 0, 1), 0.0)
    rgb = np.array([colorsys.hsv_to_rgb(h, s, 1.0) for h, s in zip(hue.reshape(-1), sat.reshape(-1))])
    return np.round(255 * rgb).astype(np.uint8).reshape(*dr.shape, 3)


def _grey_rgb(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [-1, 1] -> [H, W, 3] uint8."""
    pixels = to_uint8(image[None])[0]  # [C, H, W]
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return pixels.transpose(1, 2, 0)


def provenance_panels(sample: torch.Tensor, provenance: torch.Tensor, max_norm: Optional[float] = None) -> np.ndarray:
    """One row: sample | source image ids colour-coded | source offsets; ``[H, 3W + 2, 3]`` uint8.

    sample: [C, H, W]; provenance: [H, W, 2] = (training image, flat location r*W + c).
    max_norm: offset length of full saturation (default: the longest offset in this sample).
    """
    C, H, W = sample.shape
    prov = provenance.detach().cpu().numpy()
    ids, loc = prov[..., 0], prov[..., 1]
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    dr, dc = loc // W - rows, loc % W - cols
    if max_norm is None:
        max_norm = max(1.0, float(np.hypot(dr, dc).max()))
    offsets = offset_colours(dr, dc, max_norm)
    gap = np.full((H, 1, 3), 255, dtype=np.uint8)
    return np.concatenate([_grey_rgb(sample), gap, id_colours(ids), gap, offsets], axis=1)


def save_provenance_png(samples: torch.Tensor, provenance: torch.Tensor, path, *, max_rows: int = 8,
                        scale: int = 8) -> Path:
    """PNG of up to ``max_rows`` samples, one row each: sample | source ids | source offsets.

    Source ids: one colour per training image (:func:`id_colours`). Offsets: the source
    location minus the pixel's own, hue = direction, saturation = distance relative to the
    longest offset in the figure (white = same place).
    """
    n = min(max_rows, samples.shape[0])
    H, W = samples.shape[2:]
    loc = provenance[:n, ..., 1].detach().cpu().numpy()
    rr, cc = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    max_norm = max(1.0, float(np.hypot(loc // W - rr, loc % W - cc).max()))
    rows = [provenance_panels(samples[i], provenance[i], max_norm) for i in range(n)]
    sep = np.full((1, rows[0].shape[1], 3), 255, dtype=np.uint8)
    parts = []
    for row in rows:
        parts += [row, sep]
    grid = np.concatenate(parts[:-1], axis=0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return io.save_png(path, grid)


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buffer = _pyio.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    with io.atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def _pyplot():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_samples_by_machine(groups: Mapping[str, torch.Tensor], path, *, per_row: int = 16,
                            captions: Optional[Mapping[str, str]] = None) -> Path:
    """One row of ``per_row`` samples per machine, labelled: ``groups`` maps a name to ``[B, C, H, W]``."""
    from .viz import image_grid

    plt = _pyplot()
    names = list(groups)
    fig, axes = plt.subplots(len(names), 1, figsize=(per_row * 0.75, 1.15 * len(names) + 0.3), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        images = groups[name][:per_row]
        grid = image_grid(images, nrow=per_row, padding=1, pad_value=128)
        ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        label = name if captions is None or name not in captions else f"{name}\n{captions[name]}"
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    return save_figure(fig, path)


def plot_sweep(rows: Sequence[Mapping], params: Sequence[str], metrics: Mapping[str, str], path, *,
               group: str = "machine") -> Path:
    """Each metric against each parameter.

    In the panel of parameter ``p``, one line per ``group`` value and combination of the
    other parameters (e.g. "aels lam=1 gamma=0" against P); a row without ``p`` (e.g. the
    ideal machine has no P) is drawn as a dashed horizontal line. ``metrics`` maps a row
    key to an axis label; missing or NaN values are skipped.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), len(params), figsize=(4.2 * len(params), 2.8 * len(metrics)),
                             squeeze=False)

    def fmt(v):
        return f"{v:g}" if isinstance(v, (int, float)) else str(v)

    for i, (metric, label) in enumerate(metrics.items()):
        for j, param in enumerate(params):
            ax = axes[i, j]
            lines: dict = {}
            flat: dict = {}
            for r in rows:
                value = r.get(metric)
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                others = " ".join(f"{q}={fmt(r[q])}" for q in params if q != param and r.get(q) is not None)
                name = f"{r.get(group)} {others}".strip()
                if r.get(param) is None:
                    flat.setdefault(name, []).append(float(value))
                else:
                    lines.setdefault(name, {}).setdefault(float(r[param]), []).append(float(value))
            for name, pts in sorted(lines.items()):
                xs = sorted(pts)
                ax.plot(xs, [float(np.mean(pts[x])) for x in xs], marker="o", label=name)
            for k, (name, values) in enumerate(sorted(flat.items())):
                ax.axhline(float(np.mean(values)), linestyle="--", color=f"C{(len(lines) + k) % 10}", label=name)
            ax.set_xlabel(param)
            if j == 0:
                ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_nn_distances(sample_d, heldout_d, path, *, title: str = "") -> Path:
    """Histogram of nearest-training-image distances: samples vs held-out real images."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    sample_d = np.asarray(sample_d, dtype=np.float64)
    values = [sample_d] + ([np.asarray(heldout_d, dtype=np.float64)] if heldout_d is not None else [])
    hi = max(float(v.max()) for v in values if v.size) if any(v.size for v in values) else 1.0
    bins = np.linspace(0, hi * 1.05 + 1e-9, 30)
    ax.hist(sample_d, bins=bins, alpha=0.6, label="samples")
    if heldout_d is not None:
        ax.hist(np.asarray(heldout_d), bins=bins, alpha=0.6, label="held-out real")
    ax.set_xlabel("L2 distance to nearest training image")
    ax.set_ylabel("count")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend()
    return save_figure(fig, path)


def plot_training_log(log_path, path, *, title: str = "", batch_size: Optional[int] = None,
                      n_train: Optional[int] = None) -> Path:
    """Loss curve of a ``training_log.jsonl`` (one ``{"step", "loss", ...}`` per line) as a PNG.

    Loss on a log scale against the step; with ``batch_size`` and ``n_train`` a top axis in epochs.
    """
    import json

    rows = []
    for line in Path(log_path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    if not rows:
        raise ValueError(f"{log_path} has no logged steps")
    steps = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([r["loss"] for r in rows], dtype=float)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("eps-prediction MSE (mean over log interval)")
    if batch_size and n_train:
        per_epoch = n_train / batch_size
        top = ax.secondary_xaxis("top", functions=(lambda s: s / per_epoch, lambda e: e * per_epoch))
        top.set_xlabel("epoch")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
