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
- the CIFAR-10 binary release: the folder ``cifar-10-batches-bin`` (holding
  ``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``,
  ``batches.meta.txt``) or a folder holding it; batch files are memory-mapped
  and only the selected records are read (``data/cifar.py``).
- CelebA: the ``img_align_celeba`` folder or a folder holding it, unlabelled;
  with ``list_eval_partition.txt`` beside it, train is partition 0 and test
  partition 2 (the validation partition 1 is in neither) (``data/celeba.py``).
- a Hugging Face ``datasets`` folder written by ``save_to_disk``
  (``state.json`` + ``dataset_info.json``, or ``dataset_dict.json`` with one
  folder per split); needs the optional ``datasets`` package
  (``data/hf_datasets.py``).

Folders are recognised in this order: CIFAR-10, CelebA, Hugging Face, IDX,
image folder.

``split`` selects a part only where the source has parts (embedded data, IDX
directories, npz archives with test keys, image folders with train/test
sub-folders, CIFAR-10, CelebA with a partition file, Hugging Face
``DatasetDict`` folders); a single file or a plain folder *is* the data set.

Array layouts: ``[N, H, W]`` becomes ``[N, 1, H, W]``; ``[N, H, W, 1|3]``
(channels-last) becomes ``[N, 1|3, H, W]``; other 4-D arrays are taken as
``[N, C, H, W]`` already (so is an ambiguous ``[N, 3, H, 3]``).

Pixel values (``value_range=None``, automatic):

- uint8 and other integer arrays are taken as 0..255;
- bool arrays as 0..1;
- float arrays as ``[-1, 1]`` if they have a negative value, else as ``[0, 255]``
  if they have a value above 1, else as ``[0, 1]``. The decision is made on
  the first 4096 rows of the whole array (the same rows for every shard, so
  every rank converts the same way, and a memory-mapped ``.npy`` is not read in
  full).

The chosen range is mapped linearly onto ``[-1, 1]``; a loaded value outside it
is a ValueError (pass ``value_range=(low, high)`` to state the range instead).

``resize=S`` makes every image ``S x S`` by bilinear interpolation after the
values are mapped onto ``[-1, 1]``: antialiased when downsampling, plain
bilinear when upsampling, clamped to ``[-1, 1]``; rows are read, converted and
resized in chunks (``data/resize.py``; docs/theory.md §8).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from creativity_fast.classes import resolve_class_label
from creativity_fast.data.arrays import as_labels, as_nchw, auto_value_range, to_unit_range
from creativity_fast.data.celeba import celeba_files, find_celeba_dir
from creativity_fast.data.cifar import cifar10_source, find_cifar10_dir
from creativity_fast.data.dataset import Dataset, shard_bounds
from creativity_fast.data.hf_datasets import hf_source, is_hf_dataset_dir
from creativity_fast.data.idx import IDX_SPLIT_PREFIX, find_idx_file, has_idx_files, read_idx, write_idx
from creativity_fast.data.images import IMAGE_SUFFIXES, image_files, image_source
from creativity_fast.data.resize import RowSource, check_resize, convert_rows
from creativity_fast.io import load_npz

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
# Rows of a memory-mapped array inspected to decide its value range.
_PROBE_ROWS = 4096


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
    resize: int | None = None,
) -> Dataset:
    images = as_nchw(images, what=what)
    if labels is not None:
        labels = as_labels(labels, images.shape[0], what=f"labels of {what}")
    # Decide on a fixed leading block, so every shard of a data set converts the same way.
    stored_range = None if value_range is not None else auto_value_range(np.asarray(images[:_PROBE_ROWS]), what=what)
    rows_source = RowSource(
        images.shape[0], lambda rows: _take_rows(images, rows), labels, class_names, name, source, what, stored_range
    )
    return _dataset_from_source(
        rows_source, classes=classes, limit=limit, shard=shard, value_range=value_range, resize=resize
    )


def _dataset_from_source(
    rows_source: RowSource,
    *,
    classes: Any,
    limit: int | None,
    shard: tuple[int, int] | None,
    value_range: tuple[float, float] | None,
    resize: int | None,
) -> Dataset:
    """Select rows (classes, limit, shard), then read, convert and resize them in chunks."""
    src = rows_source
    rows = _select_rows(src.num_items, src.labels, src.class_names, classes=classes, limit=limit, shard=shard)
    if src.prepare is not None:
        src.prepare(rows)
    tensor = convert_rows(src.fetch, rows, value_range or src.value_range, size=resize, what=src.what)
    label_tensor = None if src.labels is None else torch.from_numpy(np.asarray(src.labels, dtype=np.int64)[rows])
    names = None if src.class_names is None else [str(item) for item in src.class_names]
    return Dataset(tensor.contiguous(), label_tensor, names, src.name, src.source)


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
        class_files = image_files(class_dir)
        paths.extend(class_files)
        labels.extend([label] * len(class_files))
    if not paths:
        raise ValueError(f"{root} has class sub-folders but no PNG or JPEG files in them")
    return paths, labels, [class_dir.name for class_dir in class_dirs]


def _image_paths_source(
    paths: Sequence[Path], labels: Sequence[int] | None, class_names: Sequence[str] | None, *, name: str, source: str
) -> RowSource:
    # Rows are selected before decoding, so a shard only reads its own files.
    return image_source(
        lambda rows: [paths[row] for row in rows], len(paths),
        None if labels is None else np.asarray(labels, dtype=np.int64), class_names,
        name=name, source=source, what=f"images in {source}",
    )


def _load_image_folder(root: Path, split: str, **selection: Any) -> Dataset:
    name = root.name
    if any((root / part).is_dir() for part in SPLITS):
        if not (root / split).is_dir():
            raise ValueError(f"{root} has split sub-folders but none for split={split!r}")
        root, name = root / split, f"{root.name}:{split}"
    paths, labels, class_names = _image_folder_files(root)
    return _dataset_from_source(_image_paths_source(paths, labels, class_names, name=name, source=str(root)),
                                **selection)


def _load_idx_directory(
    root: Path, split: str, *, class_names: Sequence[str] | None = None, **selection: Any
) -> Dataset:
    prefix = IDX_SPLIT_PREFIX[split]
    images_path = find_idx_file(root, prefix, "images")
    if images_path is None:
        raise ValueError(f"{root} has no IDX images for split={split!r} (expected {prefix}-images-idx3-ubyte[.gz])")
    labels_path = find_idx_file(root, prefix, "labels")
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
    resize: int | None = None,
) -> Dataset:
    """Load a training (or test) set as images [N, C, H, W] float32 in [-1, 1].

    path: None for the embedded Fashion-MNIST subset, else an IDX directory or
        file, an ``.npz``, an ``.npy``, an image folder, the CIFAR-10 binary
        release, a CelebA folder or a Hugging Face ``save_to_disk`` folder (see
        the module docstring).
    split: "train" or "test"; used where the source has parts.
    classes: a label, a class name, or a list of them; keeps only those images
        (labels keep their original values).
    limit: keep at most the first ``limit`` images (after the class filter).
    shard: (rank, world_size): keep contiguous part ``rank`` of the selected
        rows (after ``limit``), as ``Dataset.shard`` does; may be empty.
    value_range: (low, high) of the stored pixel values; None decides it
        from the dtype and values.
    resize: None, or S to make every image S x S with
        ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
        after mapping the values onto [-1, 1]: ``antialias=True`` when
        downsampling (S below the height or the width), ``antialias=False`` when
        upsampling (e.g. 28 -> 32, where antialiasing would change nothing but
        float rounding); the result is clamped to [-1, 1] (the antialiased
        filter can overshoot by one float ulp). Non-square images are stretched.
        Rows are converted and resized in chunks (docs/theory.md §8).
    """
    split = _check_split(split)
    selection = dict(classes=classes, limit=limit, shard=shard, value_range=value_range, resize=check_resize(resize))
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
        cifar_root = find_cifar10_dir(path)
        if cifar_root is not None:
            return _dataset_from_source(cifar10_source(cifar_root, split), **selection)
        if find_celeba_dir(path) is not None:
            paths, name, source = celeba_files(path, split)
            return _dataset_from_source(_image_paths_source(paths, None, None, name=name, source=source), **selection)
        if is_hf_dataset_dir(path):
            return _dataset_from_source(hf_source(path, split), **selection)
        if has_idx_files(path):
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
    resize: int | None = None,
) -> Dataset:
    """The full Fashion-MNIST set (60,000 train / 10,000 test images, 1x28x28) from its IDX files.

    On Debian and Ubuntu the files come with ``apt-get install dataset-fashion-mnist``.
    ``resize`` as for ``load_dataset``.
    """
    split = _check_split(split)
    root = Path(root).expanduser()
    prefix = IDX_SPLIT_PREFIX[split]
    if not root.is_dir() or find_idx_file(root, prefix, "images") is None:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {root}. Install them with "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download "
            "train-images-idx3-ubyte.gz etc. from https://github.com/zalandoresearch/fashion-mnist "
            "and pass their directory as root"
        )
    dataset = _load_idx_directory(
        root, split, class_names=FASHION_MNIST_CLASSES, classes=classes, limit=limit, shard=shard, value_range=None,
        resize=check_resize(resize),
    )
    dataset.name = f"fashion_mnist:{split}"
    return dataset
