"""Streaming-softmax partials: the state of one softmax over a set of keys, and its algebra.

Every machine of the project is a softmax over training keys per query pixel, so
it can be computed over any split of the keys and merged exactly
(docs/theory.md §4.2). Per query pixel the partials over a key set K are

    m = max_k l_k,   s = sum_k exp(l_k - m),   w = sum_k exp(l_k - m) centre_k,
    best = max_k l_k with its key id (lowest id on ties),

and two disjoint sets merge by log-sum-exp: ``M = max(m_a, m_b)``,
``S = s_a e^{m_a - M} + s_b e^{m_b - M}``, ``W`` likewise; finally
``x0_hat = W / S`` and ``lse = M + log S``.

The reference streams chunks of training images through :class:`RunningSoftmax`;
sharded machines merge the partials of ranks (``distributed.shards``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch


class SoftmaxPartials(NamedTuple):
    """Mergeable streaming-softmax state per query pixel.

    ``max [B,H,W]`` the running max logit, ``sum [B,H,W]`` ``sum exp(logit - max)``,
    ``weighted [B,C,H,W]`` ``sum exp(logit - max) * centre``, ``best [B,H,W]`` the
    largest logit and ``best_key [B,H,W]`` its key id ``mu * H * W + y``.
    """

    max: torch.Tensor
    sum: torch.Tensor
    weighted: torch.Tensor
    best: torch.Tensor
    best_key: torch.Tensor


class RunningSoftmax:
    """Online softmax over key chunks for a block of queries ``[..., K]`` (flash-attention style).

    Written without in-place updates so that autograd can differentiate through it.
    """

    def __init__(self, query_shape, channels, like: torch.Tensor):
        kw = dict(dtype=like.dtype, device=like.device)
        self.max = torch.full(query_shape, float("-inf"), **kw)
        self.sum = torch.zeros(query_shape, **kw)
        self.weighted = torch.zeros(*query_shape, channels, **kw)
        self.best = torch.full(query_shape, float("-inf"), **kw)
        self.best_key = torch.full(query_shape, -1, dtype=torch.int64, device=like.device)

    def update(self, logits: torch.Tensor, weight_centres: Callable[[torch.Tensor], torch.Tensor],
               key_ids: torch.Tensor) -> None:
        """Fold in one chunk.

        logits: [..., K]; weight_centres(p [..., K]) -> [..., C] computes ``p @ centres``;
        key_ids: int64 broadcastable to logits, the global key id of each column.
        """
        chunk_max, chunk_arg = logits.detach().max(dim=-1)
        new_max = torch.maximum(self.max, chunk_max)
        # The max only stabilises exp; the result does not depend on it (no gradient needed).
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(self.max - shift)
        p = torch.exp(logits - shift[..., None])
        self.sum = self.sum * rescale + p.sum(-1)
        self.weighted = self.weighted * rescale[..., None] + weight_centres(p)
        self.max = new_max
        # Strictly greater keeps the earliest key on ties (lowest (mu, y)).
        better = chunk_max > self.best
        ids = torch.broadcast_to(key_ids, logits.shape).gather(-1, chunk_arg[..., None])[..., 0]
        self.best = torch.where(better, chunk_max, self.best)
        self.best_key = torch.where(better, ids, self.best_key)


def empty_partials(z: torch.Tensor) -> SoftmaxPartials:
    """Partials over no keys: ``max = best = -inf``, ``sum = weighted = 0``, ``best_key = -1``."""
    B, C, H, W = z.shape
    kw = dict(dtype=z.dtype, device=z.device)
    return SoftmaxPartials(torch.full((B, H, W), float("-inf"), **kw), torch.zeros(B, H, W, **kw),
                           torch.zeros(B, C, H, W, **kw), torch.full((B, H, W), float("-inf"), **kw),
                           torch.full((B, H, W), -1, dtype=torch.int64, device=z.device))


def partials_from_mean(x0_hat: torch.Tensor, lse: torch.Tensor, best_key: torch.Tensor,
                       best: Optional[torch.Tensor] = None) -> SoftmaxPartials:
    """Partials from a finished posterior mean: ``(max = lse, sum = 1, weighted = x0_hat)``.

    Exact: ``sum_k exp(l_k - lse) = 1`` and ``sum_k exp(l_k - lse) centre_k = x0_hat``.
    Pixels without any key (``lse = -inf``) get ``sum = weighted = 0``.
    """
    has = torch.isfinite(lse)
    best = torch.full_like(lse, float("-inf")) if best is None else best
    return SoftmaxPartials(torch.where(has, lse, torch.full_like(lse, float("-inf"))), has.to(lse.dtype),
                           torch.where(has[:, None], x0_hat, torch.zeros_like(x0_hat)), best,
                           torch.where(has, best_key, torch.full_like(best_key, -1)))


def widen(parts: SoftmaxPartials) -> SoftmaxPartials:
    """Partials in float64: merging then adds no rounding beyond each part's own computation."""
    return SoftmaxPartials(parts.max.double(), parts.sum.double(), parts.weighted.double(), parts.best.double(),
                           parts.best_key)


def merge_partials(a: SoftmaxPartials, b: SoftmaxPartials) -> SoftmaxPartials:
    """Exact merge of partials over two disjoint key sets (log-sum-exp per query pixel).

    Ties in ``best`` go to ``a``: pass the partials of lower key ids first.
    """
    new_max = torch.maximum(a.max, b.max)
    shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
    sa, sb = torch.exp(a.max - shift), torch.exp(b.max - shift)
    take_b = b.best > a.best
    return SoftmaxPartials(
        new_max, a.sum * sa + b.sum * sb, a.weighted * sa[:, None] + b.weighted * sb[:, None],
        torch.where(take_b, b.best, a.best), torch.where(take_b, b.best_key, a.best_key))


def merge_partials_list(parts: Sequence[SoftmaxPartials]) -> SoftmaxPartials:
    """Exact merge of partials over disjoint key sets, in memory; ties in ``best`` go to the lowest key id."""
    if not parts:
        raise ValueError("merge_partials_list needs at least one SoftmaxPartials")
    parts = [widen(p) for p in parts]
    out = parts[0]
    for p in parts[1:]:
        tie = (p.best == out.best) & (p.best_key >= 0) & ((out.best_key < 0) | (p.best_key < out.best_key))
        merged = merge_partials(out, p)
        out = merged._replace(best_key=torch.where(tie, p.best_key, merged.best_key))
    return out


def finalize_partials(parts: SoftmaxPartials):
    """``(x0_hat [B,C,H,W], lse [B,H,W], best_key [B,H,W])`` from partials."""
    x0_hat = parts.weighted / parts.sum[:, None]
    lse = parts.max + torch.log(parts.sum)
    return x0_hat, lse, parts.best_key
