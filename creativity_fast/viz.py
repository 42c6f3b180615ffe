"""Image grids for looking at samples."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from creativity_fast.io import save_png

__all__ = ["to_uint8", "image_grid", "save_image_grid"]


def to_uint8(images: Any) -> np.ndarray:
    """Map images in [-1, 1] to uint8 0..255 (values outside are clipped).

    images: [B, C, H, W] torch tensor or numpy array. Returns [B, C, H, W] uint8.
    """
    if hasattr(images, "detach"):  # torch.Tensor
        images = images.detach().cpu().float().numpy()
    array = np.asarray(images, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError("images contains NaN or infinite values")
    return np.round((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _check_int(value: Any, argument: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value!r}")
    return int(value)


def image_grid(
    images: Any, nrow: int | None = None, padding: int = 2, scale: int = 1, pad_value: int = 255
) -> np.ndarray:
    """Tile images into one uint8 picture.

    images: [B, C, H, W] in [-1, 1], C = 1 or 3 (torch tensor or numpy array).
    nrow: images per row (default: ceil(sqrt(B)), a near-square grid).
    padding: pixels of ``pad_value`` between and around images (not scaled).
    scale: nearest-neighbour upscaling factor of each image, so small
        (e.g. 28x28) images stay sharp and visible.
    Returns [h, w] uint8 for C = 1, [h, w, 3] for C = 3, with
    h = rows * (H * scale + padding) + padding and likewise w.
    """
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"images must have shape [B, C, H, W], got {list(getattr(images, 'shape', []))}")
    count, channels = int(images.shape[0]), int(images.shape[1])
    if count == 0:
        raise ValueError("images must hold at least one image")
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {channels}")
    nrow = math.ceil(math.sqrt(count)) if nrow is None else _check_int(nrow, "nrow", 1)
    padding, scale = _check_int(padding, "padding", 0), _check_int(scale, "scale", 1)
    pad_value = _check_int(pad_value, "pad_value", 0)
    if pad_value > 255:
        raise ValueError(f"pad_value must be in 0..255, got {pad_value}")

    pixels = to_uint8(images)
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)  # nearest-neighbour upscaling
    tile_h, tile_w = pixels.shape[2], pixels.shape[3]
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    grid = np.full(
        (channels, rows * (tile_h + padding) + padding, columns * (tile_w + padding) + padding),
        pad_value,
        dtype=np.uint8,
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (tile_h + padding)
        left = padding + column * (tile_w + padding)
        grid[:, top : top + tile_h, left : left + tile_w] = pixels[index]
    return grid[0] if channels == 1 else grid.transpose(1, 2, 0).copy()


def save_image_grid(
    images: Any, path: str | os.PathLike, nrow: int | None = None, scale: int = 4, padding: int = 2
) -> Path:
    """Write ``image_grid(images, nrow, padding, scale)`` to ``path`` as a PNG, atomically.

    images: [B, C, H, W] in [-1, 1]. Returns the path written.
    """
    return save_png(path, image_grid(images, nrow=nrow, padding=padding, scale=scale))
