"""Image files (PNG/JPEG) as rows of a data set: listing, colour mode, decoding in chunks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from creativity_fast.data.arrays import as_nchw
from creativity_fast.data.resize import RowSource

__all__ = ["IMAGE_SUFFIXES", "decode_images", "image_files", "image_mode", "image_source", "read_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# An image: a file path, or its encoded bytes (e.g. from a Hugging Face data set).
ImageItem = Union[str, Path, bytes]
_GREY_MODES = {"1", "L", "LA"}


def image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG files directly in ``folder`` (hidden ones skipped), sorted by name."""
    return sorted(
        entry for entry in folder.iterdir()
        if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith(".")
    )


def _open(item: ImageItem):
    from PIL import Image

    return Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)


def _describe(item: ImageItem) -> str:
    return f"<{len(item)} encoded bytes>" if isinstance(item, bytes) else str(item)


def image_mode(items: Sequence[ImageItem]) -> str:
    """"L" if every image is grey (modes 1, L, LA), else "RGB"; reads only the headers."""
    from PIL import UnidentifiedImageError

    for item in items:
        try:
            with _open(item) as image:  # opening reads only the header
                if image.mode not in _GREY_MODES:
                    return "RGB"
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read image file: {exc}") from exc
    return "L"


def decode_images(items: Sequence[ImageItem], mode: str) -> np.ndarray:
    """Decode images into a uint8 array [N, H, W] (mode "L") or [N, H, W, 3] (mode "RGB")."""
    from PIL import UnidentifiedImageError

    decoded: list[np.ndarray] = []
    for item in items:
        try:
            with _open(item) as image:
                pixels = np.asarray(image.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ValueError(f"cannot read image file {_describe(item)}: {exc}") from exc
        if decoded and pixels.shape != decoded[0].shape:
            raise ValueError(
                f"image {_describe(item)} has size {pixels.shape[:2]}, but {_describe(items[0])} has "
                f"{decoded[0].shape[:2]}; all images of a data set must have the same size"
            )
        decoded.append(pixels)
    if not decoded:
        return np.zeros((0, 1, 1) if mode == "L" else (0, 1, 1, 3), dtype=np.uint8)
    return np.stack(decoded)


def read_images(items: Sequence[ImageItem]) -> np.ndarray:
    """Decode image files into a uint8 array [N, H, W] (all grey) or [N, H, W, 3]."""
    return decode_images(items, image_mode(items))


def image_source(
    get_items: Callable[[np.ndarray], Sequence[ImageItem]],
    num_items: int,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    *,
    name: str,
    source: str,
    what: str,
) -> RowSource:
    """A ``RowSource`` of encoded images; ``get_items(rows)`` gives the files (or bytes) of those rows.

    The colour mode is decided once from the headers of all selected images, so
    every chunk decodes the same way; values are 0..255.
    """
    state = {"mode": None}

    def prepare(rows: np.ndarray) -> None:
        step = 4096
        modes = [image_mode(get_items(rows[start : start + step])) for start in range(0, rows.size, step)]
        state["mode"] = "RGB" if "RGB" in modes else "L"

    def fetch(rows: np.ndarray) -> np.ndarray:
        mode = state["mode"] or image_mode(get_items(rows))
        # Decoded pictures are [N, H, W] or [N, H, W, 3]: channels-last, whatever their sizes.
        return as_nchw(decode_images(get_items(rows), mode), what=what, channels_last=True)

    return RowSource(num_items, fetch, labels, class_names, name, source, what, (0.0, 255.0), prepare)
