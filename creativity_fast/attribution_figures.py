"""Pictures of the attribution (docs/theory.md §7, "Attribution and exposure"): each sample beside
its top sources with the copied regions outlined, and the exposure histogram (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .figures import _grey_rgb, _pyplot, id_colours, save_figure

__all__ = ["save_attribution_png", "plot_exposure"]


def _outline(ax, pixels: Sequence[Sequence[int]], colour, shift=(0, 0), width: float = 1.6) -> None:
    """Draw the outer border of a set of ``[r, c]`` pixels (moved by ``shift``) as line segments."""
    from matplotlib.collections import LineCollection

    cells = {(int(r) + shift[0], int(c) + shift[1]) for r, c in pixels}
    segments = []
    for r, c in cells:
        if (r - 1, c) not in cells:
            segments.append([(c - 0.5, r - 0.5), (c + 0.5, r - 0.5)])
        if (r + 1, c) not in cells:
            segments.append([(c - 0.5, r + 0.5), (c + 0.5, r + 0.5)])
        if (r, c - 1) not in cells:
            segments.append([(c - 0.5, r - 0.5), (c - 0.5, r + 0.5)])
        if (r, c + 1) not in cells:
            segments.append([(c + 0.5, r - 0.5), (c + 0.5, r + 0.5)])
    ax.add_collection(LineCollection(segments, colors=[colour], linewidths=width))


def save_attribution_png(samples: torch.Tensor, data: torch.Tensor, att: dict, per_sample: list, path, *,
                         max_rows: int = 8, n_sources: int = 3, min_region: int = 4) -> Path:
    """One row per sample (up to ``max_rows``): the sample, then its ``n_sources`` top sources.

    samples: [B, C, H, W]; data: [N, C, H, W]; ``att`` from ``attribution.attribute`` and
    ``per_sample`` from ``attribution.sample_summaries``. Every copied region of at least
    ``min_region`` pixels from a shown source is outlined in that source's colour
    (``figures.id_colours``), on the sample where it sits and on the source where it was
    read (moved by its offset); the title gives the source's share of the sample.
    """
    plt = _pyplot()
    n = min(max_rows, samples.shape[0])
    fig, axes = plt.subplots(n, 1 + n_sources, figsize=(1.9 * (1 + n_sources), 2.0 * n), squeeze=False)
    for b in range(n):
        s = per_sample[b]
        top = s["top_sources"][:n_sources]
        ax = axes[b, 0]
        ax.imshow(_grey_rgb(samples[b].cpu()), interpolation="nearest")
        ax.set_title(f"sample {b}: {s['n_sources']} src\ncommon {s['common']:.0%} novel {s['novel']:.0%}", fontsize=7)
        for j in range(n_sources):
            sax = axes[b, 1 + j]
            sax.set_xticks([])
            sax.set_yticks([])
            if j >= len(top):
                sax.axis("off")
                continue
            mu = top[j]["image"]
            colour = id_colours(np.array([mu]))[0] / 255.0
            sax.imshow(_grey_rgb(data[mu].cpu()), interpolation="nearest")
            sax.set_title(f"#{mu}: {top[j]['share']:.0%}", fontsize=7, color=colour)
            for g in att["regions"][b]:
                if g["image"] == mu and g["size"] >= min_region:
                    _outline(ax, g["pixels"], colour)
                    _outline(sax, g["pixels"], colour, shift=tuple(g["offset"]))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, path)


def plot_exposure(pixels: np.ndarray, path, *, n_samples: Optional[int] = None, title: str = "") -> Path:
    """Histogram of copied pixels per training image (``pixels [N]``), images never copied counted apart."""
    plt = _pyplot()
    pixels = np.asarray(pixels, dtype=np.int64)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    exposed = pixels[pixels > 0]
    if exposed.size:
        bins = np.unique(np.round(np.geomspace(1, exposed.max() + 1, 30)).astype(np.int64))
        ax.hist(exposed, bins=bins)
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels copied from one training image" + (f" (over {n_samples} samples)" if n_samples else ""))
    ax.set_ylabel("training images")
    ax.set_title((title + "\n" if title else "") + f"{exposed.size} of {pixels.size} images copied, "
                 f"{int((pixels == 0).sum())} never", fontsize=8)
    return save_figure(fig, path)
