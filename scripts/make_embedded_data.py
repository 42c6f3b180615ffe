#!/usr/bin/env python3
"""Build the embedded default data set: a class-balanced Fashion-MNIST subset.

Reads the IDX files of Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``) and writes
``creativity_fast/data/embedded/fashion_mnist_subset.npz`` with

    train_images         [3000, 28, 28] uint8   300 per class
    train_labels         [3000]         int64
    test_images          [500, 28, 28]  uint8   50 per class (from the official test set)
    test_labels          [500]          int64
    class_names          [10]           unicode
    source_indices       [3000]         int64   rows of the original training set
    test_source_indices  [500]          int64   rows of the original test set
    seed                 []             int64

The choice is deterministic (seeded); images keep their original order.
Fashion-MNIST is MIT-licensed (Copyright (c) 2017 Zalando SE); the notice
ships beside the file as LICENSE-fashion-mnist.txt.

Usage: python scripts/make_embedded_data.py [--root DIR] [--out FILE] [--seed N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout, without installing the package

from creativity_fast.data.loaders import (  # noqa: E402
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    _find_idx_file,
    read_idx,
)
from creativity_fast.io import save_npz  # noqa: E402

TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 50
DEFAULT_SEED = 20170825  # Fashion-MNIST's release date; any fixed value would do
DEFAULT_OUT = REPO_ROOT / "creativity_fast" / "data" / "embedded" / "fashion_mnist_subset.npz"


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices holding exactly ``per_class`` random rows of every label in ``labels``."""
    chosen = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if rows.size < per_class:
            raise ValueError(f"class {label} has only {rows.size} images, need {per_class}")
        chosen.append(rng.choice(rows, size=per_class, replace=False))
    # Original order keeps classes interleaved, so any prefix is roughly balanced too.
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def load_split(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx_file(root, prefix, "images")
    labels_path = _find_idx_file(root, prefix, "labels")
    if images_path is None or labels_path is None:
        raise SystemExit(
            f"Fashion-MNIST IDX files for '{prefix}' not found in {root}; "
            "install them with `sudo apt-get install dataset-fashion-mnist`"
        )
    images, labels = np.asarray(read_idx(images_path)), np.asarray(read_idx(labels_path))
    if images.shape[1:] != (28, 28) or images.dtype != np.uint8 or labels.shape != (images.shape[0],):
        raise SystemExit(f"unexpected IDX contents in {root}: images {images.shape} {images.dtype}, labels {labels.shape}")
    return images, labels.astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(FASHION_MNIST_ROOT), help="directory of the IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz path")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    train_images, train_labels = load_split(args.root, "train")
    test_images, test_labels = load_split(args.root, "t10k")
    train_rows = balanced_indices(train_labels, TRAIN_PER_CLASS, rng)
    test_rows = balanced_indices(test_labels, TEST_PER_CLASS, rng)

    save_npz(
        args.out,
        train_images=train_images[train_rows],
        train_labels=train_labels[train_rows],
        test_images=test_images[test_rows],
        test_labels=test_labels[test_rows],
        class_names=np.array(FASHION_MNIST_CLASSES, dtype=np.str_),
        source_indices=train_rows,
        test_source_indices=test_rows,
        seed=np.int64(args.seed),
    )
    size_mb = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mb:.2f} MiB): {train_rows.size} train, {test_rows.size} test images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
