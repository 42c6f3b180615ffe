"""Machines over a training set sharded by rank (docs/theory.md §4.2): the sharded forms of the registry.

- :class:`DistributedPatchMachine` (ideal / local / els): ``PatchMachine`` whose operator
  call is this rank's partials merged over every rank (``shards``);
- AELS (:func:`sharded_aels`): ``AELSDenoiser.from_parts`` with the sharded ELS machine
  and a :class:`ShardedAttentionPrior` (in-degree of this rank's images, embedding
  centre from the mean image of the *whole* set);
- PELS (:class:`DistributedPELSDenoiser`): the paired-patch step over the sharded ELS
  machine; training partners of this rank's images, attention centre from the whole set;
- :class:`DistributedGaussianDenoiser`: the moments of the whole set by all-reduce.

They keep the denoiser contract, so samplers, metrics and the CLI use them unchanged.
Calling one is a collective: every rank calls with the same ``z``, ``sigma`` and
``class_labels``, in the same order. Gradients do not flow through them.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import registry
from ..attention import AELSDenoiser, AttentionPrior
from ..classes import TrainingClasses
from ..denoisers import GaussianDenoiser, PatchMachine, PatchSize
from ..ops import decode_best_key
from ..partials import finalize_partials
from ..reference import mean_patch_of_mean_image
from ..paired import PairedPosterior, TrainingPartners
from .shards import all_reduce_partials, paired_patch_posterior_partials, patch_posterior_partials
from .world import all_reduce_sum, locate_shard, world


def shard_classes(shard, labels, class_label, *, offset: Optional[int], image_ids, group) -> TrainingClasses:
    """``TrainingClasses`` of this rank's shard ``[n, C, H, W]`` (may be empty) with global image ids.

    ``image_ids [n]`` (any disjoint split), else ``offset + arange(n)``; with neither, the
    offset is found with a collective (shards in rank order).
    """
    if image_ids is None and offset is None:
        offset = locate_shard(shard.shape[0], group).start
    if image_ids is None:
        image_ids = torch.arange(int(offset), int(offset) + shard.shape[0])
    return TrainingClasses(shard, labels, class_label, image_ids=image_ids, sharded=True, group=group)


class DistributedPatchMachine(PatchMachine):
    """IS / LS / ELS machine over a training set sharded by rank (docs/theory.md §3.1-3.3, §4.2).

    Args:
        data: [n, C, H, W] this rank's shard (may be empty).
        mode, P, boundary, keys, labels, class_label, key_logw, backend, record_stats: as ``PatchMachine``
            (``labels`` [n] and ``key_logw`` [n, H, W] or [n] are the shard's).
        offset: global index of ``data[0]`` (default: found with a collective, shards in rank order).
        image_ids: [n] global index of each shard image instead of ``offset`` (any disjoint split).
        group: the process group (default: the default group).

    The output (and ``last_stats``, with global image ids) equals ``PatchMachine`` on the
    whole training set up to float rounding.
    """

    def __init__(self, data, mode: str = "els", P: PatchSize = 3, *, offset: Optional[int] = None,
                 image_ids=None, group=None, boundary: str = "zeros", keys: str = "all", labels=None,
                 class_label: Optional[int] = None, key_logw=None, backend: str = "auto",
                 record_stats: bool = False):
        classes = shard_classes(data, labels, class_label, offset=offset, image_ids=image_ids, group=group)
        super().__init__(classes, mode, P, boundary=boundary, keys=keys, key_logw=key_logw, backend=backend,
                         record_stats=record_stats)
        self.group = group

    def posterior(self, z: torch.Tensor, sigma: torch.Tensor, P: int, label: Optional[int]):
        """Merged ``(x0_hat, lse, argmax)`` over every rank's keys for one class and patch size."""
        data, ids = self.classes.subset_with_ids(label)
        with torch.no_grad():
            parts = patch_posterior_partials(z, data, sigma, P, mode=self.mode, boundary=self.boundary,
                                             keys=self.keys, key_logw=self.key_logw_for(P, label),
                                             backend=self.backend, image_ids=ids)
            parts = all_reduce_partials(parts, self.group)
        if not bool((parts.sum > 0).all()):
            what = "the training set" if label is None else f"class_label {label}"
            raise ValueError(f"{what} has no admissible training key on any rank")
        x0_hat, lse, best_key = finalize_partials(parts)  # float64: the merge adds no rounding of its own
        return x0_hat.to(z.dtype), lse.to(z.dtype), decode_best_key(best_key, *z.shape[2:])


def _global_mean_image(data: torch.Tensor, group) -> torch.Tensor:
    """Mean training image [C, H, W] (float64) over every rank's shard."""
    C, H, W = data.shape[1:]
    packed = torch.cat([torch.tensor([float(data.shape[0])], dtype=torch.float64, device=data.device),
                        data.double().sum(0).reshape(-1)])
    packed = all_reduce_sum(packed, group, "the mean image")
    if packed[0] == 0:
        raise ValueError("the training set is empty on every rank")
    return (packed[1:] / packed[0]).reshape(C, H, W)


class _GlobalMeanCentre:
    """``center(Pa)``: the mean patch of the *whole* training set's mean image, from one all-reduce
    of the image sums (made on every rank, also one with an empty shard); needs ``data``,
    ``group``, ``_mean_image`` and the ``_centers`` cache of the class it is mixed into."""

    def center(self, Pa: int) -> torch.Tensor:
        if Pa not in self._centers:
            if self._mean_image is None:
                self._mean_image = _global_mean_image(self.data, self.group)
            self._centers[Pa] = mean_patch_of_mean_image(self._mean_image, Pa).to(self.data.dtype)
        return self._centers[Pa]


class ShardedAttentionPrior(_GlobalMeanCentre, AttentionPrior):
    """``AttentionPrior`` of this rank's images: the attention runs within each training image, so
    the in-degree of a shard image is computed on its rank; the embedding centre is the mean
    patch of the whole set (an all-reduce of the image sums, on every rank, also an empty one)."""

    def __init__(self, data, lam: float = 1.0, *, group=None, **kwargs):
        super().__init__(data, lam, **kwargs)
        self.group = group
        self._mean_image: Optional[torch.Tensor] = None

    def in_degree(self, Pa: int) -> torch.Tensor:
        from ..attention import training_in_degree

        center = self.center(Pa)  # collective on every rank, also with an empty shard
        if self.data.shape[0] == 0:
            return self.data.new_zeros(0, *self.data.shape[2:])
        return training_in_degree(self.data, Pa, exclude=self.exclude, tau=self.tau, center=center,
                                  backend=self.backend, cache=False)


class ShardedTrainingPartners(_GlobalMeanCentre, TrainingPartners):
    """``TrainingPartners`` of this rank's images: attention runs within each training image, so a
    shard image's partners are computed on its rank; the centre is the mean patch of the whole set
    (an all-reduce, on every rank, also an empty one)."""

    def __init__(self, data, *, group=None, **kwargs):
        super().__init__(data, **kwargs)
        self.group = group
        self._mean_image: Optional[torch.Tensor] = None
        self._partners: dict[int, torch.Tensor] = {}

    def partners(self, Pa: int) -> torch.Tensor:
        from ..attention import training_partners

        if Pa not in self._partners:
            center = self.center(Pa)  # collective on every rank, also with an empty shard
            if self.data.shape[0] == 0:
                self._partners[Pa] = torch.zeros(0, *self.data.shape[2:], dtype=torch.long, device=self.data.device)
            else:
                self._partners[Pa] = training_partners(self.data, Pa, exclude=self.exclude, center=center,
                                                       backend=self.backend, cache=False)
        return self._partners[Pa]


class DistributedPELSDenoiser(PairedPosterior, DistributedPatchMachine):
    """Paired-patch machine (docs/theory.md §3.7) over a sharded training set.

    Options as ``paired.PELSDenoiser`` plus ``offset``, ``image_ids`` and ``group``; ``data`` is
    this rank's shard (may be empty). The query partners are computed on every rank alike
    (the same ``z``, the whole set's centre; with ``attend_on="x0"`` on the merged ELS
    estimate); each rank's paired partials over its keys merge exactly, as ELS's do.
    """

    def __init__(self, data, P: PatchSize = 3, *, offset: Optional[int] = None, image_ids=None, group=None,
                 beta: float = 1.0, P2: Optional[int] = None, attention_P: Optional[int] = None,
                 exclude: Optional[int] = None, attend_on: str = "z", backend: str = "auto", **options):
        DistributedPatchMachine.__init__(self, data, "els", P, offset=offset, image_ids=image_ids, group=group,
                                         backend=backend, **options)
        partners = ShardedTrainingPartners(data, group=group, exclude=exclude, backend=backend)
        self._configure(partners, beta, P2, attention_P, attend_on)

    def paired_posterior(self, z, sigma, P, label, query_partner, key_partner):
        """Merged ``(x0_hat, lse, argmax)`` over every rank's keys for one class and patch size."""
        data, ids = self.classes.subset_with_ids(label)
        with torch.no_grad():
            parts = paired_patch_posterior_partials(z, data, sigma, P, query_partner, key_partner, beta=self.beta,
                                                    P2=self.partner_window(P), boundary=self.boundary,
                                                    keys=self.keys, backend=self.backend, image_ids=ids)
            parts = all_reduce_partials(parts, self.group)
        if not bool((parts.sum > 0).all()):
            what = "the training set" if label is None else f"class_label {label}"
            raise ValueError(f"{what} has no admissible training key on any rank")
        x0_hat, lse, best_key = finalize_partials(parts)
        return x0_hat.to(z.dtype), lse.to(z.dtype), decode_best_key(best_key, *z.shape[2:])


class DistributedGaussianDenoiser(GaussianDenoiser):
    """Gaussian (Wiener) machine, docs/theory.md §3.5, with the moments of the whole sharded training set.

    The mean is an all-reduce of the image sums and counts; the covariance an all-reduce
    of the centred ``sum (x - mean)(x - mean)^T`` (float64, ``D x D`` with ``D = C*H*W``);
    then each rank does the same eigendecomposition. Arguments as ``GaussianDenoiser``
    plus ``offset``, ``image_ids`` and ``group``; ``data`` is this rank's shard (may be empty).
    """

    def __init__(self, data, *, offset: Optional[int] = None, image_ids=None, group=None, labels=None,
                 class_label: Optional[int] = None):
        ids = torch.zeros(data.shape[0], dtype=torch.long) if image_ids is None else image_ids  # ids unused
        super().__init__(TrainingClasses(data, labels, class_label, image_ids=ids, sharded=True, group=group))
        self.group = group

    def _sum(self, t: torch.Tensor, what: str) -> torch.Tensor:
        return all_reduce_sum(t, self.group, what)

    # __call__ is GaussianDenoiser's: it asks for the moments of the same classes in the same
    # order on every rank (the groups depend only on the call's class_labels), so the
    # collectives in ``moments`` line up.


# --------------------------------------------------------------------------- #
# The sharded forms registered in ``registry`` (same options as the plain machines)


def sharded_ideal(shard, *, offset=None, image_ids=None, group=None, **options) -> DistributedPatchMachine:
    return DistributedPatchMachine(shard, "ideal", 1, offset=offset, image_ids=image_ids, group=group, **options)


def sharded_local(shard, P: PatchSize = 3, *, offset=None, image_ids=None, group=None,
                  **options) -> DistributedPatchMachine:
    return DistributedPatchMachine(shard, "local", P, offset=offset, image_ids=image_ids, group=group, **options)


def sharded_els(shard, P: PatchSize = 3, *, offset=None, image_ids=None, group=None,
                **options) -> DistributedPatchMachine:
    return DistributedPatchMachine(shard, "els", P, offset=offset, image_ids=image_ids, group=group, **options)


def sharded_aels(shard, P: PatchSize = 3, *, offset=None, image_ids=None, group=None, lam: float = 1.0,
                 gamma: float = 0.0, tau: Optional[float] = None, attention_P: Optional[int] = None,
                 exclude: Optional[int] = None, backend: str = "auto", **options) -> AELSDenoiser:
    """AELS (docs/theory.md §3.4) over a sharded training set, composed from the sharded parts."""
    prior = ShardedAttentionPrior(shard, lam, group=group, attention_P=attention_P, exclude=exclude, tau=tau,
                                  backend=backend)
    els = DistributedPatchMachine(shard, "els", P, offset=offset, image_ids=image_ids, group=group,
                                  key_logw=prior, backend=backend, **options)
    return AELSDenoiser.from_parts(els, prior, gamma=gamma)


def sharded_pels(shard, P: PatchSize = 3, *, offset=None, image_ids=None, group=None,
                 **options) -> DistributedPELSDenoiser:
    return DistributedPELSDenoiser(shard, P, offset=offset, image_ids=image_ids, group=group, **options)


def shard_denoiser(machine: str, data, *, labels=None, key_logw=None, group=None, **options):
    """Sharded machine from the *whole* training set in memory: keep this rank's contiguous part.

    For data that fit in memory (tests, notebooks); large sets should be loaded per
    rank with ``load_dataset(path, shard=(rank, world_size))`` and given to
    ``registry.make_sharded_denoiser``. Without a process group this is the sharded machine
    on all of ``data`` (a world of one).
    """
    from ..data.loaders import shard_bounds

    me = world(group)
    start, stop = shard_bounds(data.shape[0], me.rank, me.size)
    if labels is not None:
        options["labels"] = torch.as_tensor(labels).reshape(-1)[start:stop]
    if key_logw is not None:
        options["key_logw"] = key_logw[start:stop]
    return registry.make_sharded_denoiser(machine, data[start:stop], offset=start, group=group, **options)
