"""The training set sharded over processes with ``torch.distributed`` (docs/theory.md §4.2, §9).

Every machine here is a softmax over training keys, so it splits exactly over disjoint
parts of the training set: each rank holds one contiguous shard of the images,
computes the streaming-softmax partials over its keys, and the partials merge exactly
by log-sum-exp over the ranks.

- ``world``: the process group (``init_from_env`` under ``torchrun``), timeouts and
  one-line rank errors (``DistributedError``), the collectives;
- ``shards``: the partials of one shard with global key ids
  (``patch_posterior_partials``, ``paired_patch_posterior_partials``) and their merge over ranks (``all_reduce_partials``);
  the algebra of partials itself is ``creativity_fast.partials``;
- ``machines``: the sharded forms of the registered machines (``registry``), built with
  ``make_sharded_denoiser(name, shard, ...)`` or, from the whole set in memory,
  ``shard_denoiser(name, data, ...)``. Machines without a sharded form
  (``is_shardable(name)`` false: the peer machines) run replicated.

Every rank must make the same calls in the same order (same seeds, same batches): the
machines call collectives inside ``__call__``.
"""

from ..partials import (SoftmaxPartials, empty_partials, finalize_partials, merge_partials, merge_partials_list,
                        partials_from_mean)
from ..registry import is_shardable, make_sharded_denoiser, sharded_machine_names
from .machines import (DistributedGaussianDenoiser, DistributedPatchMachine, DistributedPELSDenoiser,
                       ShardedAttentionPrior, ShardedTrainingPartners, shard_denoiser)
from .shards import (all_reduce_partials, key_logits, paired_key_logits, paired_patch_posterior_partials,
                     patch_posterior_partials)
from .world import (DEFAULT_TIMEOUT_S, DistributedError, ShardInfo, World, all_reduce_sum, broadcast_ints,
                    init_from_env, is_distributed, launched_by_torchrun, locate_shard, shutdown, tag_rank, world)

__all__ = [
    "DEFAULT_TIMEOUT_S", "DistributedError", "DistributedGaussianDenoiser", "DistributedPatchMachine",
    "DistributedPELSDenoiser", "ShardInfo", "ShardedAttentionPrior", "ShardedTrainingPartners", "SoftmaxPartials", "World", "all_reduce_partials", "all_reduce_sum",
    "broadcast_ints", "empty_partials", "finalize_partials", "init_from_env", "is_distributed", "is_shardable",
    "key_logits", "launched_by_torchrun", "locate_shard", "make_sharded_denoiser", "merge_partials",
    "merge_partials_list", "paired_key_logits", "paired_patch_posterior_partials", "partials_from_mean",
    "patch_posterior_partials", "shard_denoiser",
    "sharded_machine_names", "shutdown", "tag_rank", "world",
]
