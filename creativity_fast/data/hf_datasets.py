"""Hugging Face ``datasets`` folders written by ``save_to_disk`` (needs the optional ``datasets`` package).

A ``Dataset`` folder holds ``state.json`` and ``dataset_info.json`` beside its
Arrow files; a ``DatasetDict`` folder holds ``dataset_dict.json`` and one such
folder per split (``split`` picks ``train`` or ``test``). The image column is the
first column of feature type ``Image``, else one named ``image`` or ``img``
(``Image`` columns are decoded here with Pillow, other columns are taken as pixel
arrays); the label column is the first ``ClassLabel`` column, else one named
``label`` or ``labels``. Class names come from the ``ClassLabel`` feature; a
label column that is -1 (no label) on every row leaves the set unlabelled.

``tests/test_data_formats.py`` round-trips a set through ``save_to_disk`` when
``datasets`` is installed and skips that test otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from creativity_fast.data.arrays import as_nchw, auto_value_range
from creativity_fast.data.images import image_source
from creativity_fast.data.resize import RowSource

__all__ = ["hf_source", "is_hf_dataset_dir"]

IMAGE_NAMES = ("image", "img")
LABEL_NAMES = ("label", "labels")


def is_hf_dataset_dir(path: Path) -> bool:
    """Whether ``path`` looks like a ``save_to_disk`` folder (no import of ``datasets`` needed)."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _load(path: Path, split: str):
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"{path} is a Hugging Face datasets folder (save_to_disk); reading it needs the optional "
            "'datasets' package (pip install datasets)"
        ) from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path} has no split {split!r}; it has {sorted(loaded)}")
        return datasets, loaded[split], f"{path.name}:{split}"
    return datasets, loaded, path.name


def _pick(features: dict, kind: type, names: tuple[str, ...]) -> str | None:
    typed = [name for name, feature in features.items() if isinstance(feature, kind)]
    if typed:
        return typed[0]
    return next((name for name in names if name in features), None)


def hf_source(path: Path, split: str) -> RowSource:
    """The ``split`` of a ``save_to_disk`` folder as a ``RowSource``."""
    datasets, table, name = _load(path, split)
    features = dict(table.features)
    image_column = _pick(features, datasets.Image, IMAGE_NAMES)
    if image_column is None:
        raise ValueError(
            f"{path}: no image column (no feature of type Image and none named {' or '.join(IMAGE_NAMES)}); "
            f"columns: {sorted(features)}"
        )
    label_column = _pick(features, datasets.ClassLabel, LABEL_NAMES)
    labels = class_names = None
    if label_column is not None:
        labels = np.asarray(list(table[label_column]))
        feature = features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            class_names = list(feature.names)
        if labels.size and (labels < 0).all():  # ClassLabel's -1 "no label" on every row (e.g. a test split)
            labels = None
    what = f"images in {path} (column {image_column!r})"
    if isinstance(features[image_column], datasets.Image):
        encoded = table.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))

        def get_items(rows: np.ndarray) -> list[Any]:
            cells = encoded[[int(row) for row in rows]][image_column] if rows.size else []
            return [cell["bytes"] if cell.get("bytes") is not None else cell["path"] for cell in cells]

        return image_source(get_items, len(table), labels, class_names, name=name, source=str(path), what=what)

    arrays = table.select_columns([image_column]).with_format("numpy")

    def fetch(rows: np.ndarray) -> np.ndarray:
        block = np.asarray(arrays[[int(row) for row in rows]][image_column]) if rows.size else np.zeros((0, 1, 1))
        return as_nchw(block, what=what)

    probe = fetch(np.arange(min(len(table), 4096), dtype=np.int64))
    return RowSource(len(table), fetch, labels, class_names, name, str(path), what, auto_value_range(probe, what=what))
