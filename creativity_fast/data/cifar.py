"""The CIFAR-10 binary release (``cifar-10-batches-bin/``), read memory-mapped, batch file by batch file.

Layout: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train), ``test_batch.bin``
(test), ``batches.meta.txt`` (one class name per line). Each record is 3073 bytes:
a label byte, then 1024 red, 1024 green and 1024 blue bytes (row-major 32x32).
The pickled "python version" of the release is never read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from creativity_fast.data.resize import RowSource

__all__ = ["CIFAR10_CLASSES", "CIFAR10_FOLDER", "RECORD_BYTES", "cifar10_source", "find_cifar10_dir"]

CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
RECORD_BYTES = 1 + 3 * 32 * 32
_TRAIN_FILE = re.compile(r"data_batch_(\d+)\.bin$")


def _is_batches_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "test_batch.bin").is_file() or any(_TRAIN_FILE.match(p.name) for p in path.glob("data_batch_*.bin"))
    )


def find_cifar10_dir(path: Path) -> Path | None:
    """The folder holding the CIFAR-10 batch files: ``path`` itself, or ``path/cifar-10-batches-bin``."""
    if _is_batches_dir(path):
        return path
    inner = path / CIFAR10_FOLDER
    return inner if _is_batches_dir(inner) else None


def _batch_files(root: Path, split: str) -> list[Path]:
    if split == "test":
        files = [root / "test_batch.bin"] if (root / "test_batch.bin").is_file() else []
    else:
        numbered = [(int(m.group(1)), p) for p in root.glob("data_batch_*.bin") if (m := _TRAIN_FILE.match(p.name))]
        files = [p for _, p in sorted(numbered)]
    if not files:
        expected = "test_batch.bin" if split == "test" else "data_batch_1.bin .. data_batch_5.bin"
        raise ValueError(f"{root} has no CIFAR-10 batch files for split={split!r} (expected {expected})")
    return files


def _open_batch(path: Path) -> np.ndarray:
    """A batch file memory-mapped as uint8 records [n, 3073]; a ValueError naming the file if malformed."""
    size = path.stat().st_size
    if size == 0 or size % RECORD_BYTES:
        raise ValueError(
            f"{path} is truncated or malformed: its size, {size} bytes, is not a positive multiple of the "
            f"CIFAR-10 record size {RECORD_BYTES} (1 label byte + 3072 pixel bytes)"
        )
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(size // RECORD_BYTES, RECORD_BYTES))


def _class_names(root: Path) -> list[str]:
    meta = root / "batches.meta.txt"
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    names = [line.strip() for line in meta.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"{meta} lists no class names")
    return names


def cifar10_source(root: Path, split: str) -> RowSource:
    """The CIFAR-10 ``split`` of the batch folder ``root`` as a ``RowSource`` (images [N, 3, 32, 32] uint8).

    Labels (one byte per record) are read at once; pixels only for the rows fetched.
    Class names come from ``batches.meta.txt`` (the standard ten if it is missing).
    """
    files = _batch_files(root, split)
    batches = [_open_batch(path) for path in files]
    starts = np.cumsum([0] + [batch.shape[0] for batch in batches])
    labels = np.concatenate([np.asarray(batch[:, 0]) for batch in batches]).astype(np.int64)
    class_names = _class_names(root)
    if labels.size and int(labels.max()) >= len(class_names):
        bad = int(np.searchsorted(starts, int(np.argmax(labels >= len(class_names))), side="right")) - 1
        raise ValueError(
            f"{files[bad]} has label {int(labels.max())}, but {len(class_names)} class names are known "
            f"({root / 'batches.meta.txt'}); is this a CIFAR-10 binary file?"
        )

    def fetch(rows: np.ndarray) -> np.ndarray:
        which = np.searchsorted(starts, rows, side="right") - 1
        parts = []
        for index in np.unique(which):  # rows ascend, so groups come in file order
            local = rows[which == index] - starts[index]
            batch = batches[index]
            if local[-1] - local[0] + 1 == local.size:  # contiguous: a slice reads only those records
                records = batch[int(local[0]) : int(local[-1]) + 1]
            else:
                records = batch[local]
            parts.append(np.asarray(records[:, 1:]).reshape(-1, 3, 32, 32))
        if not parts:
            return np.zeros((0, 3, 32, 32), dtype=np.uint8)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return RowSource(
        int(starts[-1]), fetch, labels, class_names, name=f"cifar10:{split}", source=str(root),
        what=f"CIFAR-10 images in {root}", value_range=(0.0, 255.0),
    )
