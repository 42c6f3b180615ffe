"""Training sets: the ``Dataset`` container and loaders for common file formats.

Every loader returns images as float32 tensors ``[N, C, H, W]`` in ``[-1, 1]``
(the package convention) and labels as int64 ``[N]`` (or ``None``).

Sources ``load_dataset`` understands (detected from the path):

- ``None``: the embedded Fashion-MNIST subset shipped with the package
  (300 training and 50 test images per class).
- a directory holding IDX files as MNIST and Fashion-MNIST ship them
  (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-...`` for the test split).
- a single IDX file (``.gz`` or raw); a labels file beside it
  (``...-labels-idx1-ubyte``) is used when present.
- an ``.npz`` archive: images under ``train_images``/``images``/``x``/``x_train``
  (or ``test_images``/``x_test`` for ``split="test"``), labels under
  ``train_labels``/``labels``/``y``/``y_train`` (``test_labels``/``y_test``),
  optional ``class_names``.
- an ``.npy`` array, opened memory-mapped so that ``limit`` and ``shard`` only
  read the rows they need; labels come from a sibling file (``x.npy`` ->
  ``x_labels.npy``; ``train_images.npy`` -> ``train_labels.npy``).
- a folder of PNG/JPEG images; if it has sub-folders, each sub-folder is a
  class (sorted by name). A folder with ``train``/``test`` sub-folders is
  treated as split into those parts.

``split`` selects a part only where the source has parts (embedded data, IDX
directories, npz archives with test keys, image folders with train/test
sub-folders); a single file or a plain folder *is* the data set.

Array layouts: ``[N, H, W]`` becomes ``[N, 1, H, W]``; ``[N, H, W, 1|3]``
(channels-last) becomes ``[N, 1|3, H, W]``; other 4-D arrays are taken as
``[N, C, H, W]`` already (so is an ambiguous ``[N, 3, H, 3]``).

Pixel values (``value_range=None``, automatic):

- uint8 and other integer arrays are taken as 0..255;
- bool arrays as 0..1;
- float arrays as ``[-1, 1]`` if they have a negative value, else as ``[0, 255]``
  if they have a value above 1, else as ``[0, 1]``. For a memory-mapped
  The decision is made on the first 4096 rows of the whole array (the same
  rows for every shard, so every rank converts the same way, and a memory-mapped
  ``.npy`` is not read in full).

The chosen range is mapped linearly onto ``[-1, 1]``; a loaded value outside it
is a ValueError (pass ``value_range=(low, high)`` to state the range instead).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from creativity_fast.classes import resolve_class_label
from creativity_fast.io import atomic_open, load_npz

__all__ = [
    "Dataset",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "embedded_dataset_path",
    "load_dataset",
    "load_fashion_mnist_full",
    "read_idx",
    "write_idx",
    "shard_bounds",
    "to_unit_range",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# IDX files name the test split "t10k" (MNIST's 10k test images).
_IDX_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
# Rows of a memory-mapped array inspected to decide its value range.
_PROBE_ROWS = 4096


# ---------------------------------------------------------------------------
# The container
# ---------------------------------------------------------------------------


@dataclass(eq=False)  # eq=False: comparing tensors with == is elementwise, not a bool
class Dataset:
    """A set of images with optional labels.

    images: [N, C, H, W] float32 in [-1, 1].
    labels: [N] int64, or None for unlabelled data.
    class_names: names indexed by label, or None.
    name: short human-readable name (e.g. "fashion_mnist_subset:train").
    source: where the data came from (a path, or "embedded:..."/"synthetic:...").
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None
    name: str = "dataset"
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(self.images).__name__}")
        if self.images.ndim != 4:
            raise ValueError(f"images must have shape [N, C, H, W], got {list(self.images.shape)}")
        if self.images.dtype != torch.float32:
            raise TypeError(f"images must be float32, got {self.images.dtype}")
        if self.labels is not None:
            if not isinstance(self.labels, torch.Tensor):
                raise TypeError(f"labels must be a torch.Tensor or None, got {type(self.labels).__name__}")
            if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
                raise TypeError(f"labels must be a 1-D int64 tensor, got {self.labels.dtype} {list(self.labels.shape)}")
            if self.labels.shape[0] != self.images.shape[0]:
                raise ValueError(f"labels has {self.labels.shape[0]} entries but images has {self.images.shape[0]}")
        if self.class_names is not None:
            self.class_names = list(self.class_names)
            if not all(isinstance(item, str) for item in self.class_names):
                raise TypeError("class_names must be a list of str")
            if self.labels is not None and self.labels.numel() > 0:
                low, high = int(self.labels.min()), int(self.labels.max())
                if low < 0 or high >= len(self.class_names):
                    raise ValueError(
                        f"labels range over {low}..{high} but class_names has {len(self.class_names)} names"
                    )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        labels = "None" if self.labels is None else f"[{len(self)}]"
        classes = "None" if self.class_names is None else f"{len(self.class_names)} names"
        return (
            f"Dataset(name={self.name!r}, images={list(self.images.shape)}, labels={labels}, "
            f"class_names={classes}, source={self.source!r})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: Any) -> "Dataset":
        """The images at ``indices`` (ints, a slice, or a bool mask of length N), in that order."""
        if isinstance(indices, slice):
            selected_images = self.images[indices]
            selected_labels = None if self.labels is None else self.labels[indices]
        else:
            index = _as_index_tensor(indices, len(self))
            selected_images = self.images.index_select(0, index)
            selected_labels = None if self.labels is None else self.labels.index_select(0, index)
        return Dataset(selected_images, selected_labels, self.class_names, self.name, self.source)

    def with_class(self, label: int | str) -> "Dataset":
        """The images whose label is ``label`` (an int, or a class name)."""
        if self.labels is None:
            raise ValueError(f"dataset {self.name!r} has no labels, so with_class(label={label!r}) cannot select")
        label_id = resolve_class_label(label, self.class_names, argument="label")
        mask = self.labels == label_id
        if not bool(mask.any()):
            present = sorted(set(self.labels.tolist()))
            raise ValueError(f"label={label!r} does not occur in dataset {self.name!r}; labels present: {present}")
        return self.subset(mask)

    def shard(self, rank: int, world_size: int) -> "Dataset":
        """Contiguous part ``rank`` of ``world_size`` near-equal parts (may be empty)."""
        start, stop = shard_bounds(len(self), rank, world_size)
        return self.subset(slice(start, stop))


def _as_index_tensor(indices: Any, num_items: int) -> torch.Tensor:
    """Turn ints / an int array / a bool mask into an int64 index tensor, checked against num_items."""
    index = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if index.dtype == torch.bool:
        if index.shape != (num_items,):
            raise ValueError(f"indices as a bool mask must have shape [{num_items}], got {list(index.shape)}")
        return index.nonzero().flatten()
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if index.is_floating_point() or index.is_complex():
        raise TypeError(f"indices must be integers or a bool mask, got {index.dtype}")
    index = index.to(torch.int64).flatten()
    if int(index.min()) < -num_items or int(index.max()) >= num_items:
        raise ValueError(f"indices must lie in [-{num_items}, {num_items}), got {int(index.min())}..{int(index.max())}")
    return index % max(num_items, 1)


def shard_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """Start and stop of part ``rank`` when ``num_items`` rows are split in ``world_size`` contiguous parts.

    Part sizes differ by at most one (the first ``num_items % world_size`` parts
    get one more), as ``numpy.array_split`` does; parts may be empty.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    base, extra = divmod(int(num_items), int(world_size))
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return start, stop


# ---------------------------------------------------------------------------
# IDX files (the MNIST / Fashion-MNIST format)
# ---------------------------------------------------------------------------

# IDX type codes -> numpy dtypes. Multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype.newbyteorder(">") if dtype.itemsize > 1 else dtype: code for code, dtype in _IDX_DTYPES.items()}


def _read_up_to(handle: Any, num_bytes: int, path: Path) -> bytes:
    """Read at most num_bytes, in chunks (a bogus header cannot make us allocate a huge buffer)."""
    chunks: list[bytes] = []
    remaining = num_bytes
    try:
        while remaining > 0:
            chunk = handle.read(min(remaining, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip stream
        raise ValueError(f"cannot read IDX file {path} (truncated or corrupt gzip data): {exc}") from exc
    return b"".join(chunks)


def _parse_idx_header(header: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse the magic number and dimensions; returns (dtype, dims, header length)."""
    if len(header) < 4:
        raise ValueError(f"{path} is not an IDX file: shorter than the 4-byte magic number")
    if header[0] != 0 or header[1] != 0:
        raise ValueError(f"{path} is not an IDX file: magic number must start with two zero bytes")
    code, ndim = header[2], header[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: unknown data type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{path} is not an IDX file: zero dimensions")
    header_length = 4 + 4 * ndim
    if len(header) < header_length:
        raise ValueError(f"{path} is truncated: its header needs {header_length} bytes, file has {len(header)}")
    dims = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return _IDX_DTYPES[code], dims, header_length


def read_idx(path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into an array of the shape its header gives.

    A raw file is memory-mapped when ``mmap`` (only the rows used are read);
    a gzip file is decompressed into memory. Raises ValueError naming the path
    if the header is malformed or the data size does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as handle:
                head = _read_up_to(handle, 4, path)
                ndim = head[3] if len(head) == 4 else 0
                dtype, dims, _ = _parse_idx_header(head + _read_up_to(handle, 4 * ndim, path), path)
                expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
                # One byte more than promised, to detect trailing data.
                payload = _read_up_to(handle, expected + 1, path)
        except gzip.BadGzipFile as exc:
            raise ValueError(f"{path} is not a valid gzip file: {exc}") from exc
        _check_idx_size(len(payload), expected, path)
        return np.frombuffer(payload, dtype=dtype).reshape(dims)

    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(4 + 4 * 255)
    dtype, dims, header_length = _parse_idx_header(header, path)
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    _check_idx_size(file_size - header_length, expected, path)
    if not mmap or expected == 0:
        with open(path, "rb") as handle:
            handle.seek(header_length)
            return np.frombuffer(handle.read(expected), dtype=dtype).reshape(dims)
    return np.memmap(path, dtype=dtype, mode="r", offset=header_length, shape=dims)


def _check_idx_size(actual: int, expected: int, path: Path) -> None:
    if actual < expected:
        raise ValueError(f"{path} is truncated: header promises {expected} data bytes, file has {actual}")
    if actual > expected:
        raise ValueError(f"{path} is malformed: more data than its header promises ({expected} bytes)")


def write_idx(path: str | os.PathLike, array: Any) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``), atomically.

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    """
    array = np.asarray(array)
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"array must have 1 to 255 dimensions, got {array.ndim}")
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big_endian not in _IDX_CODES:
        raise TypeError(f"array dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, _IDX_CODES[big_endian], array.ndim])
    header += b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=big_endian).tobytes()
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        handle.write(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


def _find_idx_file(directory: Path, prefix: str, kind: str) -> Path | None:
    """Locate e.g. train-images-idx3-ubyte[.gz] (or the "train-images.idx3-ubyte" spelling)."""
    rank = "3" if kind == "images" else "1"
    for stem in (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"):
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _has_idx_files(directory: Path) -> bool:
    return any(_find_idx_file(directory, prefix, "images") for prefix in _IDX_SPLIT_PREFIX.values())


# ---------------------------------------------------------------------------
# Array normalisation: layout and value range
# ---------------------------------------------------------------------------


def _as_nchw(array: np.ndarray, *, what: str, channels_last: bool | None = None) -> np.ndarray:
    """View an image array as [N, C, H, W] (no copy; works on memory maps).

    channels_last: the layout of a 4-D array if known; None guesses it: a last
    dimension of 1 or 3 means channels-last unless dimension 1 is also 1 or 3
    (then [N, C, H, W] is assumed).
    """
    if array.ndim == 3:
        return array[:, None, :, :]
    if array.ndim == 4:
        if channels_last is None:
            channels_last = array.shape[3] in (1, 3) and array.shape[1] not in (1, 3)
        return array.transpose(0, 3, 1, 2) if channels_last else array
    raise ValueError(f"{what} must have shape [N, H, W], [N, H, W, C] or [N, C, H, W], got {list(array.shape)}")


def _auto_value_range(probe: np.ndarray, *, what: str) -> tuple[float, float]:
    """Decide the value range of an array from its dtype and (for floats) a sample of its values."""
    if probe.dtype == np.bool_:
        return (0.0, 1.0)
    if np.issubdtype(probe.dtype, np.integer):
        return (0.0, 255.0)
    if not np.issubdtype(probe.dtype, np.floating):
        raise TypeError(f"{what} must hold integers or floats, got dtype {probe.dtype}")
    if probe.size == 0:
        return (-1.0, 1.0)
    low, high = float(np.min(probe)), float(np.max(probe))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{what} contains NaN or infinite values")
    if low < 0:
        return (-1.0, 1.0)
    if high > 1:
        return (0.0, 255.0)
    return (0.0, 1.0)


def to_unit_range(
    array: np.ndarray, value_range: tuple[float, float] | None = None, *, what: str = "images"
) -> torch.Tensor:
    """Convert an image array to a float32 tensor in [-1, 1].

    array: [N, C, H, W] (any numeric dtype).
    value_range: (low, high) mapped onto (-1, 1); None decides it from the
    dtype and values (see the module docstring).
    Raises ValueError (mentioning ``what``) on non-finite or out-of-range values.
    """
    if value_range is None:
        value_range = _auto_value_range(array, what=what)
    low, high = _check_value_range(value_range)
    # A private copy: the input may be a read-only memory map or the caller's array.
    values = np.array(array, dtype=np.float32, copy=True)
    if values.size:
        if not np.isfinite(values).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        found_low, found_high = float(values.min()), float(values.max())
        # A little slack for values written as float32 after a round trip.
        slack = 1e-5 * (high - low)
        if found_low < low - slack or found_high > high + slack:
            raise ValueError(
                f"{what} has values in [{found_low:g}, {found_high:g}], outside the value range "
                f"({low:g}, {high:g}); pass value_range=(low, high) to state the range"
            )
    # In place, to hold one float copy of a possibly large array.
    values -= np.float32(low)
    values *= np.float32(2.0 / (high - low))
    values -= np.float32(1.0)
    np.clip(values, -1.0, 1.0, out=values)
    return torch.from_numpy(values)


def _check_value_range(value_range: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (low, high), got {value_range!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(f"value_range must be finite with high > low, got {value_range!r}")
    return low, high


def _as_labels(labels: Any, num_items: int, *, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_items:
        raise ValueError(f"{what} must have shape [{num_items}] to match the images, got {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must hold integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------
# Row selection: classes, limit, shard (applied in that order)
# ---------------------------------------------------------------------------


def _class_ids(classes: Any, class_names: Sequence[str] | None) -> list[int]:
    if isinstance(classes, (torch.Tensor, np.ndarray)):
        classes = classes.tolist()
    if isinstance(classes, (str, int, np.integer)):
        classes = [classes]
    try:
        items = list(classes)
    except TypeError:
        raise TypeError(f"classes must be a label, a class name, or a list of them, got {classes!r}") from None
    if not items:
        raise ValueError("classes must not be empty (use None for all classes)")
    return [resolve_class_label(item, class_names, argument="classes") for item in items]


def _select_rows(
    num_items: int,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    *,
    classes: Any,
    limit: int | None,
    shard: tuple[int, int] | None,
) -> np.ndarray:
    """Indices (ascending) of the rows kept by the class filter, then ``limit``, then ``shard``."""
    rows = np.arange(num_items, dtype=np.int64)
    if classes is not None:
        if labels is None:
            raise ValueError(f"classes={classes!r} needs labels, but this data set has none")
        wanted = _class_ids(classes, class_names)
        rows = rows[np.isin(labels, wanted)]
        if rows.size == 0:
            raise ValueError(f"classes={classes!r} selects no images; labels present: {sorted(set(labels.tolist()))}")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        rows = rows[:limit]
    if shard is not None:
        try:
            rank, world_size = shard
        except (TypeError, ValueError):
            raise ValueError(f"shard must be a pair (rank, world_size), got {shard!r}") from None
        start, stop = shard_bounds(rows.size, rank, world_size)
        rows = rows[start:stop]
    return rows


def _take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows], using a slice when the rows are contiguous (cheapest read of a memory map)."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return array[int(rows[0]) : int(rows[-1]) + 1]
    return array[rows]


def _dataset_from_arrays(
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    *,
    name: str,
    source: str,
    classes: Any,
    limit: int | None,
    shard: tuple[int, int] | None,
    value_range: tuple[float, float] | None,
    what: str,
) -> Dataset:
    images = _as_nchw(images, what=what)
    if labels is not None:
        labels = _as_labels(labels, images.shape[0], what=f"labels of {what}")
    rows = _select_rows(images.shape[0], labels, class_names, classes=classes, limit=limit, shard=shard)
    if value_range is None:
        # Decide on a fixed leading block, so every shard of a data set converts the same way.
        value_range = _auto_value_range(np.asarray(images[:_PROBE_ROWS]), what=what)
    tensor = to_unit_range(_take_rows(images, rows), value_range, what=what)
    label_tensor = None if labels is None else torch.from_numpy(labels[rows])
    names = None if class_names is None else [str(item) for item in class_names]
    return Dataset(tensor.contiguous(), label_tensor, names, name, source)


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def embedded_dataset_path() -> Path:
    """Path of the embedded Fashion-MNIST subset (``fashion_mnist_subset.npz``)."""
    return Path(__file__).resolve().parent / "embedded" / "fashion_mnist_subset.npz"


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


_NPZ_IMAGE_KEYS = {"train": ("train_images", "images", "x", "x_train"), "test": ("test_images", "x_test")}
_NPZ_LABEL_KEYS = {"train": ("train_labels", "labels", "y", "y_train"), "test": ("test_labels", "y_test")}


def _npz_arrays(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    arrays = load_npz(path)
    image_key = next((key for key in _NPZ_IMAGE_KEYS[split] if key in arrays), None)
    if image_key is None:
        raise ValueError(
            f"{path} has no images for split={split!r}: expected one of the keys "
            f"{list(_NPZ_IMAGE_KEYS[split])}, found {sorted(arrays)}"
        )
    label_key = next((key for key in _NPZ_LABEL_KEYS[split] if key in arrays), None)
    class_names = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise ValueError(f"{path}: class_names must be a 1-D string array, got {names.dtype} {list(names.shape)}")
        class_names = [str(item) for item in names.tolist()]
    return arrays[image_key], (arrays[label_key] if label_key else None), class_names


def _open_npy(path: Path) -> np.ndarray:
    """Open an .npy memory-mapped, converting numpy's errors into ValueErrors naming the path."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read {path} as an .npy array (truncated or malformed?): {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path} is not a single .npy array")
    return array


def _npy_labels_path(path: Path) -> Path | None:
    """The labels file beside an images .npy: x.npy -> x_labels.npy, train_images.npy -> train_labels.npy."""
    candidates = [path.with_name(f"{path.stem}_labels.npy")]
    if "images" in path.stem:
        candidates.insert(0, path.with_name(path.stem.replace("images", "labels") + ".npy"))
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def _idx_labels_path(path: Path) -> Path | None:
    """The labels file beside an IDX images file (train-images-idx3-ubyte -> train-labels-idx1-ubyte)."""
    name = path.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    candidate = path.with_name(name)
    return candidate if name != path.name and candidate.is_file() else None


def _image_folder_files(root: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Image files of a folder, with labels and class names if it has class sub-folders."""
    entries = sorted(entry for entry in root.iterdir() if not entry.name.startswith("."))
    files = [entry for entry in entries if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES]
    class_dirs = [entry for entry in entries if entry.is_dir()]
    if not class_dirs:
        if not files:
            raise ValueError(f"{root} holds no IDX, PNG or JPEG files")
        return files, None, None
    if files:
        raise ValueError(
            f"{root} mixes image files with class sub-folders; put every image in a class sub-folder"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        class_files = sorted(
            entry for entry in class_dir.iterdir()
            if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith(".")
        )
        paths.extend(class_files)
        labels.extend([label] * len(class_files))
    if not paths:
        raise ValueError(f"{root} has class sub-folders but no PNG or JPEG files in them")
    return paths, labels, [class_dir.name for class_dir in class_dirs]


def _read_images(paths: Sequence[Path]) -> np.ndarray:
    """Decode image files into a uint8 array [N, H, W] (all grey) or [N, H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    grey_modes = {"1", "L", "LA"}
    try:
        modes = []
        for path in paths:
            with Image.open(path) as image:  # opening reads only the header
                modes.append(image.mode)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image file: {exc}") from exc
    target_mode = "L" if all(mode in grey_modes for mode in modes) else "RGB"
    decoded: list[np.ndarray] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(target_mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ValueError(f"cannot read image file {path}: {exc}") from exc
        if decoded and pixels.shape != decoded[0].shape:
            raise ValueError(
                f"image {path} has size {pixels.shape[:2]}, but {paths[0]} has {decoded[0].shape[:2]}; "
                "all images of a data set must have the same size"
            )
        decoded.append(pixels)
    if not decoded:
        return np.zeros((0, 1, 1), dtype=np.uint8)
    return np.stack(decoded)


def _load_image_folder(
    root: Path, split: str, *, classes: Any, limit: int | None, shard: tuple[int, int] | None,
    value_range: tuple[float, float] | None,
) -> Dataset:
    name = root.name
    if any((root / part).is_dir() for part in SPLITS):
        if not (root / split).is_dir():
            raise ValueError(f"{root} has split sub-folders but none for split={split!r}")
        root, name = root / split, f"{root.name}:{split}"
    paths, labels, class_names = _image_folder_files(root)
    label_array = None if labels is None else np.asarray(labels, dtype=np.int64)
    # Select before decoding, so a shard only reads its own files.
    rows = _select_rows(len(paths), label_array, class_names, classes=classes, limit=limit, shard=shard)
    # Decoded pictures are [N, H, W] or [N, H, W, 3]: channels-last, whatever their sizes.
    pixels = _as_nchw(_read_images([paths[row] for row in rows]), what=f"images in {root}", channels_last=True)
    images = to_unit_range(pixels, value_range or (0.0, 255.0), what=f"images in {root}")
    return Dataset(
        images.contiguous(),
        None if label_array is None else torch.from_numpy(label_array[rows]),
        class_names,
        name,
        str(root),
    )


def _load_idx_directory(
    root: Path, split: str, *, class_names: Sequence[str] | None = None, **selection: Any
) -> Dataset:
    prefix = _IDX_SPLIT_PREFIX[split]
    images_path = _find_idx_file(root, prefix, "images")
    if images_path is None:
        raise ValueError(f"{root} has no IDX images for split={split!r} (expected {prefix}-images-idx3-ubyte[.gz])")
    labels_path = _find_idx_file(root, prefix, "labels")
    labels = None if labels_path is None else read_idx(labels_path)
    if class_names is None and "fashion" in root.name.lower():
        class_names = FASHION_MNIST_CLASSES
    return _dataset_from_arrays(
        read_idx(images_path), labels, class_names,
        name=f"{root.name}:{split}", source=str(images_path), what=f"images in {images_path}", **selection,
    )


def load_dataset(
    path: str | os.PathLike | None = None,
    *,
    split: str = "train",
    classes: int | str | Iterable[int | str] | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    value_range: tuple[float, float] | None = None,
) -> Dataset:
    """Load a training (or test) set as images [N, C, H, W] float32 in [-1, 1].

    path: None for the embedded Fashion-MNIST subset, else an IDX directory or
        file, an ``.npz``, an ``.npy`` or an image folder (see the module docstring).
    split: "train" or "test"; used where the source has parts.
    classes: a label, a class name, or a list of them; keeps only those images
        (labels keep their original values).
    limit: keep at most the first ``limit`` images (after the class filter).
    shard: (rank, world_size): keep contiguous part ``rank`` of the selected
        rows (after ``limit``), as ``Dataset.shard`` does; may be empty.
    value_range: (low, high) of the stored pixel values; None decides it
        from the dtype and values.
    """
    split = _check_split(split)
    selection = dict(classes=classes, limit=limit, shard=shard, value_range=value_range)
    if path is None:
        embedded = embedded_dataset_path()
        if not embedded.is_file():
            raise FileNotFoundError(
                f"the embedded data set is missing ({embedded}); reinstall creativity_fast "
                "or rebuild it with scripts/make_embedded_data.py"
            )
        images, labels, class_names = _npz_arrays(embedded, split)
        return _dataset_from_arrays(
            images, labels, class_names, name=f"fashion_mnist_subset:{split}",
            source=f"embedded:{embedded}", what=f"images in {embedded}", **selection,
        )

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.is_dir():
        if _has_idx_files(path):
            return _load_idx_directory(path, split, **selection)
        return _load_image_folder(path, split, **selection)

    name = path.name.lower()
    if name.endswith(".npz"):
        images, labels, class_names = _npz_arrays(path, split)
        return _dataset_from_arrays(
            images, labels, class_names, name=f"{path.stem}:{split}", source=str(path),
            what=f"images in {path}", **selection,
        )
    if name.endswith(".npy"):
        images = _open_npy(path)
        labels_path = _npy_labels_path(path)
        labels = None if labels_path is None else np.asarray(_open_npy(labels_path))
        return _dataset_from_arrays(
            images, labels, None, name=path.stem, source=str(path), what=f"images in {path}", **selection
        )
    if "idx" in name or name.endswith("-ubyte") or name.endswith("-ubyte.gz"):
        images = read_idx(path)
        if images.ndim < 3:
            raise ValueError(f"{path} holds {images.ndim}-D data, not images [N, H, W]")
        labels_path = _idx_labels_path(path)
        labels = None if labels_path is None else read_idx(labels_path)
        return _dataset_from_arrays(
            images, labels, None, name=path.name.split("-")[0] if "-" in path.name else path.stem,
            source=str(path), what=f"images in {path}", **selection,
        )
    if name.endswith(IMAGE_SUFFIXES):
        raise ValueError(f"{path} is a single image; pass the folder that holds the images")
    raise ValueError(
        f"cannot tell the format of {path}: expected an IDX file or directory, .npz, .npy, or an image folder"
    )


def load_fashion_mnist_full(
    root: str | os.PathLike = FASHION_MNIST_ROOT,
    *,
    split: str = "train",
    classes: int | str | Iterable[int | str] | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
) -> Dataset:
    """The full Fashion-MNIST set (60,000 train / 10,000 test images, 1x28x28) from its IDX files.

    On Debian and Ubuntu the files come with ``apt-get install dataset-fashion-mnist``.
    """
    split = _check_split(split)
    root = Path(root).expanduser()
    prefix = _IDX_SPLIT_PREFIX[split]
    if not root.is_dir() or _find_idx_file(root, prefix, "images") is None:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {root}. Install them with "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download "
            "train-images-idx3-ubyte.gz etc. from https://github.com/zalandoresearch/fashion-mnist "
            "and pass their directory as root"
        )
    dataset = _load_idx_directory(
        root, split, class_names=FASHION_MNIST_CLASSES, classes=classes, limit=limit, shard=shard, value_range=None
    )
    dataset.name = f"fashion_mnist:{split}"
    return dataset
