"""Class-conditional training sets: one helper for every machine, sharded or not, and the CLI.

A class-conditional machine restricts its softmax to the training images of the sampled
class (docs/theory.md §2). :class:`TrainingClasses` holds a machine's training images,
their labels and global image ids, hands out per-class subsets and groups a batch by
the class of each sample. :func:`resolve_class_label` turns an int, a numeric string or
a class name into an int label, and :func:`class_indices` finds a class's images
(both also serve ``Dataset.with_class`` and ``--class``). :func:`seed_classes` gives each
seed of a class-conditional ``compare``/``calibrate`` run its class (docs/calibration.md).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ._validate import check_images


def resolve_class_label(label, class_names: Optional[Sequence[str]] = None, *, argument: str = "class_label") -> int:
    """An int label from an int, a numeric string or a class name (looked up in ``class_names``)."""
    if isinstance(label, str):
        if class_names is not None and label in class_names:
            return list(class_names).index(label)
        try:
            return int(label)
        except ValueError:
            names = f"; class names: {', '.join(class_names)}" if class_names else ""
            raise ValueError(f"{argument}={label!r} is neither a label nor a class name{names}") from None
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise TypeError(f"{argument} must be an int label or a class name, got {label!r}")
    return int(label)


def class_indices(labels: torch.Tensor, label: int, *, argument: str = "class_label") -> torch.Tensor:
    """Indices of the entries of ``labels [N]`` equal to ``label``; ValueError naming the labels
    present when there is none."""
    index = (labels == int(label)).nonzero().reshape(-1)
    if index.numel() == 0:
        raise ValueError(f"{argument} {int(label)} has no training images; "
                         f"labels present: {sorted(set(labels.tolist()))}")
    return index


class TrainingClasses:
    """A machine's training images ``data [n, C, H, W]`` with optional ``labels [n]``.

    Args:
        data: the training images (this rank's shard when ``sharded``; may then be empty).
        labels: [n] int labels, or None (then only unconditional use).
        class_label: the default class of every sample (None: the whole set).
        image_ids: [n] global index of each image (sharded machines; default ``arange(n)``).
        sharded: ``data`` is one shard of a training set split over the ranks of ``group``;
            a class may be absent from a shard, and absence from the whole set is checked
            with a collective.
        group: the process group of a sharded set (default group when None).
    """

    def __init__(self, data, labels=None, class_label: Optional[int] = None, *, image_ids=None,
                 sharded: bool = False, group=None):
        self.data = check_images("data", data, allow_empty=sharded)
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1).long()
            if labels.shape[0] != self.data.shape[0]:
                raise ValueError(f"labels has {labels.shape[0]} entries but data has {self.data.shape[0]} images")
        self.labels = labels
        self.class_label = None if class_label is None else int(class_label)
        n = self.data.shape[0]
        if image_ids is None:
            image_ids = torch.arange(n, device=self.data.device)
        else:
            image_ids = torch.as_tensor(image_ids).reshape(-1).long().to(self.data.device)
            if image_ids.shape[0] != n:
                raise ValueError(f"image_ids has {image_ids.shape[0]} entries but the shard has {n} images")
        self.image_ids = image_ids
        self.sharded = sharded
        self.group = group
        self._subsets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.class_label is not None and sharded:  # fail early on an absent class
            self.check_present([self.class_label])
        elif self.class_label is not None:
            self.subset(self.class_label)

    def _require_labels(self) -> torch.Tensor:
        if self.labels is None:
            raise ValueError("class-conditional sampling needs the training labels (labels=...)")
        return self.labels

    def check_present(self, labels: Sequence[int]) -> None:
        """ValueError, on every rank alike, when a class has no image in any rank's shard (a collective)."""
        from .distributed.world import all_reduce_sum

        have = self._require_labels()
        counts = torch.tensor([int((have == c).sum()) for c in labels], dtype=torch.int64)
        counts = all_reduce_sum(counts, self.group, "the class counts")
        absent = [c for c, k in zip(labels, counts.tolist()) if k == 0]
        if absent:
            raise ValueError(f"class_label {absent[0]} has no training images on any rank")

    def indices(self, label: Optional[int]) -> Optional[torch.Tensor]:
        """Local indices of one class's images (None for the whole set; may be empty in a shard)."""
        if label is None:
            return None
        if self.sharded:
            return (self._require_labels() == int(label)).nonzero().reshape(-1)
        return class_indices(self._require_labels(), label)

    def subset_with_ids(self, label: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, global image ids)`` of one class (the whole set for ``None``)."""
        if label is None:
            return self.data, self.image_ids
        label = int(label)
        if label not in self._subsets:
            index = self.indices(label)
            self._subsets[label] = (self.data[index], self.image_ids[index.to(self.image_ids.device)])
        return self._subsets[label]

    def subset(self, label: Optional[int]) -> torch.Tensor:
        """Training images of one class (all images for ``None``)."""
        return self.subset_with_ids(label)[0]

    def global_ids(self, label: Optional[int], local: torch.Tensor) -> torch.Tensor:
        """Global image ids of positions ``local`` within ``subset(label)``."""
        return self.subset_with_ids(label)[1].to(local.device)[local]

    def select(self, label: Optional[int], per_image: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The rows of a per-image tensor ``[n, ...]`` (e.g. key_logw) that belong to ``subset(label)``."""
        if per_image is None or label is None:
            return per_image
        return per_image[self.indices(label).to(per_image.device)]

    def groups(self, batch: int, class_labels) -> list[tuple[Optional[int], torch.Tensor]]:
        """``(label, sample indices)`` groups; one group when not class-conditional per sample."""
        if class_labels is None:
            return [(self.class_label, torch.arange(batch))]
        class_labels = torch.as_tensor(class_labels).reshape(-1).long()
        if class_labels.shape[0] != batch:
            raise ValueError(f"class_labels has {class_labels.shape[0]} entries for a batch of {batch}")
        return [(int(c), (class_labels == c).nonzero().reshape(-1)) for c in class_labels.unique()]


_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """SplitMix64 (Steele, Lea & Flood 2014) of a non-negative int: a fixed 64-bit mixing function,
    ``x + 0x9E3779B97F4A7C15`` then two xor-shift-multiply rounds and a final xor-shift."""
    z = (int(x) + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def seed_classes(seeds: Sequence[int], labels_present: Sequence[int]) -> list[int]:
    """The class of each seed in a class-conditional comparison: ``sorted(labels_present)[splitmix64(seed) % K]``.

    ``K`` is the number of distinct labels. The rule is pure integer arithmetic, so it gives the same
    class for a seed on every run and machine and for any batch, and it is independent of the seed's
    initial noise (a ``torch.Generator`` seeded with the seed). Over many seeds every class is drawn
    about equally often (the modulo bias is below ``K / 2**64``).
    """
    present = sorted({int(c) for c in labels_present})
    if not present:
        raise ValueError("class-conditional sampling needs at least one labelled training image")
    out = []
    for s in seeds:
        s = int(s)
        if s < 0:
            raise ValueError(f"seeds must be non-negative ints; got {s}")
        out.append(present[splitmix64(s) % len(present)])
    return out
