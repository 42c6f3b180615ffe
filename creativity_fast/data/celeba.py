"""CelebA as released: ``img_align_celeba/`` (``000001.jpg`` ...) and, beside it, ``list_eval_partition.txt``.

The partition file has one line per image, ``<image name> <partition>`` with
partition 0 (train), 1 (valid) or 2 (test); the comma-separated
``list_eval_partition.csv`` of the Kaggle copy (header ``image_id,partition``) is
read as well. ``split="train"`` keeps partition 0 and ``split="test"`` partition 2;
the validation images (partition 1) belong to neither split. Without a partition
file the folder is the data set, whatever the split (as for any plain image
folder). CelebA is unlabelled here (its attributes are not classes).
"""

from __future__ import annotations

from pathlib import Path

from creativity_fast.data.images import image_files

__all__ = ["CELEBA_FOLDER", "PARTITION_FILES", "SPLIT_PARTITION", "celeba_files", "find_celeba_dir"]

CELEBA_FOLDER = "img_align_celeba"
PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")
SPLIT_PARTITION = {"train": 0, "test": 2}


def find_celeba_dir(path: Path) -> Path | None:
    """The ``img_align_celeba`` folder: ``path`` itself or ``path/img_align_celeba``.

    The Kaggle copy nests it (``img_align_celeba/img_align_celeba/``); an
    ``img_align_celeba`` folder holding no images but such a sub-folder is descended into.
    """
    if path.name == CELEBA_FOLDER and path.is_dir():
        folder = path
    elif (path / CELEBA_FOLDER).is_dir():
        folder = path / CELEBA_FOLDER
    else:
        return None
    nested = folder / CELEBA_FOLDER
    if nested.is_dir() and not image_files(folder):
        folder = nested
    return folder


def _partition_file(folder: Path, given: Path) -> Path | None:
    places = [given, *folder.parents[:2], folder]
    for place in places:
        for name in PARTITION_FILES:
            if (place / name).is_file():
                return place / name
    return None


def read_partition(path: Path) -> dict[str, int]:
    """``{image name: partition}`` from ``list_eval_partition.txt`` (or ``.csv``)."""
    partition: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            value = int(fields[1])
        except ValueError:
            if number == 1 and partition == {}:  # a header line (image_id,partition)
                continue
            raise ValueError(f"{path}, line {number}: expected '<image name> <0|1|2>', got {line.strip()!r}") from None
        if value not in (0, 1, 2):
            raise ValueError(f"{path}, line {number}: partition must be 0, 1 or 2, got {value}")
        partition[fields[0]] = value
    return partition


def celeba_files(path: Path, split: str) -> tuple[list[Path], str, str]:
    """``(image files, name, source)`` of the CelebA ``split`` at ``path`` (see the module docstring).

    Images listed in the partition file but missing from the folder are skipped
    (a folder may hold a subset); an image the partition file does not list is an error.
    """
    folder = find_celeba_dir(path)
    if folder is None:
        raise ValueError(f"{path} is not a CelebA folder (no {CELEBA_FOLDER}/)")
    files = image_files(folder)
    if not files:
        raise ValueError(f"{folder} holds no PNG or JPEG files")
    partition_path = _partition_file(folder, path)
    if partition_path is None:
        return files, "celeba", str(folder)
    partition = read_partition(partition_path)
    unlisted = [f.name for f in files if f.name not in partition]
    if unlisted:
        raise ValueError(
            f"{partition_path} does not list {len(unlisted)} image(s) of {folder} (e.g. {unlisted[0]}); "
            "is it the partition file of these images?"
        )
    wanted = SPLIT_PARTITION[split]
    selected = [f for f in files if partition[f.name] == wanted]
    if not selected:
        raise ValueError(f"{folder}: no image is in partition {wanted} (split={split!r}) of {partition_path}")
    return selected, f"celeba:{split}", str(folder)
