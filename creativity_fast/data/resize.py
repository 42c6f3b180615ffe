"""Row sources read in chunks, and the optional square resize of loaded images (docs/theory.md §8).

A ``RowSource`` describes a data set whose rows can be read a few at a time (a
memory-mapped array, image files, CIFAR-10 batch files, a Hugging Face data set).
``convert_rows`` reads the selected rows in chunks, maps each chunk onto
``[-1, 1]`` and, if asked, resizes it, so that a large memory-mapped set is never
held in memory at its full size as floats.

Resize rule (``resize_images``): every image becomes ``S x S`` by bilinear
interpolation, ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)``, applied after the values are mapped onto ``[-1, 1]``.

- Downsampling (``S`` smaller than the height or the width) uses ``antialias=True``:
  a triangle filter widened to the scale factor, so every source pixel counts
  (plain bilinear would sample only the 4 nearest pixels and alias).
- Upsampling in both axes (e.g. 28 -> 32) uses ``antialias=False``: there the
  antialiased filter is the plain bilinear one (it differs only by float rounding,
  at most 1 ulp), so the exact plain bilinear result is used.
- Both filters have non-negative weights that sum to one, so a resized value is a
  convex combination of input values and cannot leave ``[-1, 1]`` except by float
  rounding (the antialiased weights overshoot by one ulp, e.g. ``1 + 1.2e-7``);
  the result is clamped to ``[-1, 1]``.
- Non-square images are stretched to a square (no cropping).
- An image already ``S x S`` is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from creativity_fast.data.arrays import to_unit_range

__all__ = ["CHUNK_BYTES", "RowSource", "check_resize", "convert_rows", "resize_images"]

# Float32 bytes of the full-size images converted at once.
CHUNK_BYTES = 1 << 26


@dataclass
class RowSource:
    """A data set read by rows.

    fetch(rows): the images at ``rows`` (ascending int64 indices) as an array
        ``[n, C, H, W]`` of stored values.
    value_range: the stored range used when the caller states none.
    prepare(rows): called once with all selected rows before any fetch (e.g. to
        decide the colour mode of image files from their headers).
    """

    num_items: int
    fetch: Callable[[np.ndarray], np.ndarray]
    labels: np.ndarray | None
    class_names: Sequence[str] | None
    name: str
    source: str
    what: str
    value_range: tuple[float, float] | None = (0.0, 255.0)
    prepare: Callable[[np.ndarray], None] | None = None


def check_resize(size: Any) -> int | None:
    """``size`` as a positive int, or None (no resizing)."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"resize must be a positive int (the side of the square images) or None, got {size!r}")
    return int(size)


def resize_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize images ``[N, C, H, W]`` in ``[-1, 1]`` to ``[N, C, size, size]`` (see the module docstring)."""
    size = check_resize(size)
    if size is None or tuple(images.shape[2:]) == (size, size):
        return images
    if images.shape[0] == 0:
        return images.new_zeros((0, images.shape[1], size, size))
    downsampling = size < images.shape[2] or size < images.shape[3]
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=downsampling)
    return out.clamp_(-1.0, 1.0).contiguous()


def convert_rows(
    fetch: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    value_range: tuple[float, float] | None,
    *,
    size: int | None = None,
    what: str = "images",
    chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    """The images at ``rows`` as float32 ``[len(rows), C, S, S]`` in ``[-1, 1]``, read and converted in chunks.

    Chunks hold about ``chunk_bytes`` of full-size float32 images; each is mapped
    onto ``[-1, 1]`` (``to_unit_range``, elementwise, so the result does not depend
    on the chunking), then resized to ``size`` if given. All images must share one
    size unless ``size`` is given.
    """
    size = check_resize(size)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return resize_images(to_unit_range(fetch(rows), value_range, what=what), size)
    per_row = max(1, int(np.prod(fetch(rows[:1]).shape[1:])) * 4)
    step = max(1, int(chunk_bytes) // per_row)
    out: torch.Tensor | None = None
    for start in range(0, rows.size, step):
        block = resize_images(to_unit_range(fetch(rows[start : start + step]), value_range, what=what), size)
        if out is None:
            out = torch.empty((rows.size, *block.shape[1:]), dtype=torch.float32)
        elif block.shape[1:] != out.shape[1:]:
            raise ValueError(
                f"{what}: rows {start}.. have shape {list(block.shape[1:])}, earlier rows {list(out.shape[1:])}; "
                "all images of a data set must have the same size"
            )
        out[start : start + block.shape[0]] = block
    assert out is not None
    return out
