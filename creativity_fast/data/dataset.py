"""The ``Dataset`` container of a training set, and its row selections (subset, class, shard)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from creativity_fast.classes import class_indices, resolve_class_label

__all__ = ["Dataset", "shard_bounds"]


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
        return self.subset(class_indices(self.labels, label_id, argument="label"))

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
