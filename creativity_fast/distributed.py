"""The training set sharded over processes with ``torch.distributed`` (SPEC 9, issue 7).

Every machine here is a softmax over training keys, so it splits exactly over
disjoint parts of the training set: each rank holds one contiguous shard of the
images and computes, per query pixel, the streaming-softmax *partials* over its
keys (``reference.SoftmaxPartials``: running max ``m``, normaliser
``s = sum exp(l - m)``, weighted sum ``w = sum exp(l - m) centre``, and the best
logit with its key id). The partials merge exactly by log-sum-exp::

    M = max_r m_r,   S = sum_r s_r exp(m_r - M),   W = sum_r w_r exp(m_r - M),
    x0_hat = W / S,  lse = M + log S

which is three all-reduces per call (MAX of ``(m, best)``, SUM of ``(s, w)``
rescaled, MIN of the key id among the ranks that hold the best logit: ties go to
the lowest global key id, as in one process). The result equals the one-process
result up to float rounding of the sums.

Pieces:

- ``patch_posterior_partials(z, data, sigma, P, ...)``: the operator variant that
  returns ``SoftmaxPartials`` for one shard, with key ids made global by the
  shard's image ids (``offset`` or ``image_ids``). An empty shard gives
  ``max = -inf, sum = 0``. With the compiled kernel the partials are
  ``(max = lse, sum = 1, weighted = x0_hat)`` (no new kernel needed); the best
  logit is recomputed from the best key (one patch distance per pixel, float64),
  so equal keys on different ranks compare equal.
- ``merge_partials`` (two partials, in memory; from ``reference``),
  ``merge_partials_list`` and ``all_reduce_partials`` (over ranks).
- ``DistributedPatchMachine`` (ideal / local / els), ``DistributedAELSDenoiser``
  (attention prior and sample-time attention with the *global* mean patch) and
  ``DistributedGaussianDenoiser`` (global moments: all-reduced sums of ``x`` and
  of the centred ``x x^T``): the denoiser contract of ``denoisers``, so samplers,
  metrics and the CLI use them unchanged. ``make_sharded_denoiser(name, shard, ...)``
  builds one by machine name, ``shard_denoiser(name, data, ...)`` takes the full
  set in memory and keeps this rank's part. Machines without a sharded form
  (``is_shardable(name)`` false: the peer machines) run replicated: every rank
  loads the whole set and computes the same thing.
- ``init_from_env()``: joins the process group when launched by ``torchrun``
  (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), gloo for CPU tensors and NCCL for CUDA
  tensors (``"cpu:gloo,cuda:nccl"`` when CUDA is present), with a timeout
  (``CREATIVITY_FAST_DIST_TIMEOUT`` seconds, default 600) so a rank that dies or
  hangs makes the others fail with ``DistributedError`` instead of waiting forever.

Every rank must make the same calls in the same order (same seeds, same batches):
the machines call collectives inside ``__call__``. Gradients do not flow through
the sharded machines (they run under ``torch.no_grad``).
"""

from __future__ import annotations

import datetime
import functools
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from . import reference
from ._validate import (
    BACKENDS, check_choice, check_images, check_key_logw, check_patch_size, check_sigma,
)
from .denoisers import GaussianDenoiser, PatchMachine, PatchSize, _sigma_vector
from .dictionary import BOUNDARIES, KEY_SETS, MODES, patch_offsets
from .ops import PatchPosterior, _decode_argmax, _use_kernel
from .reference import SoftmaxPartials, finalize_partials, merge_partials

try:  # a torch built without distributed support still imports this module
    import torch.distributed as dist
except ImportError:  # pragma: no cover
    dist = None

__all__ = [
    "DEFAULT_TIMEOUT_S", "DistributedAELSDenoiser", "DistributedError", "DistributedGaussianDenoiser",
    "DistributedPatchMachine", "ShardInfo", "SoftmaxPartials", "World", "all_reduce_partials",
    "empty_partials", "finalize_partials", "init_from_env", "is_shardable", "launched_by_torchrun",
    "locate_shard", "make_sharded_denoiser", "merge_partials", "merge_partials_list",
    "partials_from_mean", "patch_posterior_partials", "shard_denoiser", "sharded_machine_names",
    "shutdown", "world",
]

DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "CREATIVITY_FAST_DIST_TIMEOUT"
BACKEND_ENV = "CREATIVITY_FAST_DIST_BACKEND"
_NO_KEY = torch.iinfo(torch.int64).max


class DistributedError(RuntimeError):
    """A collective failed: another rank raised, died or stopped responding (timeout)."""


# ---------------------------------------------------------------------------
# Process group


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` (``local_rank`` on its host)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""
    timeout_s: Optional[float] = None


_OWNED_GROUP = False  # whether init_from_env created the default group (shutdown destroys only that)
_TIMEOUT_S: Optional[float] = None  # the timeout init_from_env set


def launched_by_torchrun() -> bool:
    """Whether the environment names a rank and a world size (``torchrun`` sets both)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _timeout_s(timeout) -> float:
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV)
        if text is None:
            return DEFAULT_TIMEOUT_S
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds; got {text!r}") from None
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"the distributed timeout must be > 0 seconds; got {timeout}")
    return timeout


def _default_backend() -> str:
    chosen = os.environ.get(BACKEND_ENV)
    if chosen:
        return chosen
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"  # CPU tensors over gloo, CUDA tensors over NCCL
    return "gloo"


def world(group=None) -> World:
    """The current ``World`` (rank 0 of 1 when no process group is initialised)."""
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return World()
    return World(dist.get_rank(group), dist.get_world_size(group), int(os.environ.get("LOCAL_RANK", 0)),
                 str(dist.get_backend(group)))


def init_from_env(*, backend: Optional[str] = None, timeout=None) -> Optional[World]:
    """Join the process group described by the environment (``torchrun``), else return None.

    Returns the ``World`` when this process is one of several ranks: an already
    initialised default group is reused; otherwise ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (all set by ``torchrun``)
    define it. A world of one rank is not distributed: None (the one-process path).

    backend: default ``"gloo"``, or ``"cpu:gloo,cuda:nccl"`` when CUDA is available
        (each collective goes to the backend of its tensors' device); also
        ``CREATIVITY_FAST_DIST_BACKEND``.
    timeout: seconds (or a ``timedelta``) a collective may wait for the other
        ranks before failing; default ``CREATIVITY_FAST_DIST_TIMEOUT`` or 600.
    """
    global _OWNED_GROUP, _TIMEOUT_S
    if dist is None or not dist.is_available():
        if launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError("launched with several ranks, but this torch has no torch.distributed support")
        return None
    if dist.is_initialized():
        current = world()
        return current if current.size > 1 else None
    if not launched_by_torchrun():
        return None
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be ints (as torchrun sets them); got "
                         f"{os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, "
                         f"{os.environ.get('LOCAL_RANK')!r}") from None
    if size <= 1:
        return None
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={size})")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"{name} is not set: launch the ranks with torchrun (it sets RANK, WORLD_SIZE, "
                             "MASTER_ADDR and MASTER_PORT)")
    backend = backend or _default_backend()
    seconds = _timeout_s(timeout)
    if "nccl" in backend and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=seconds))
    _OWNED_GROUP, _TIMEOUT_S = True, seconds
    return World(rank, size, local_rank, backend, seconds)


def shutdown() -> None:
    """Destroy the process group if ``init_from_env`` created it (a failed rank thereby releases the others)."""
    global _OWNED_GROUP
    if _OWNED_GROUP and dist is not None and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED_GROUP = False


def _distributed(group) -> bool:
    return dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _collective_device(tensor: torch.Tensor, group) -> torch.device:
    """Where a collective on ``tensor`` runs: its own device unless the group cannot take it."""
    backend = str(dist.get_backend(group)).lower()
    if tensor.device.type == "cpu" and "gloo" not in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())  # NCCL only: stage CPU tensors on the GPU
    return tensor.device


def _all_reduce(tensor: torch.Tensor, op, group, what: str) -> torch.Tensor:
    """All-reduce a copy of ``tensor``; a failure or a timeout becomes a ``DistributedError``."""
    device = _collective_device(tensor, group)
    buf = tensor.detach().to(device, copy=True).contiguous()
    try:
        dist.all_reduce(buf, op=op, group=group)
    except RuntimeError as exc:  # DistBackendError, gloo/NCCL errors and timeouts are RuntimeErrors
        me = world(group)
        limit = f"{_TIMEOUT_S:g} s" if _TIMEOUT_S is not None else "the process group's timeout"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise DistributedError(
            f"rank {me.rank} of {me.size}: the all-reduce of {what} failed: another rank raised, died or did "
            f"not answer within {limit} (set {TIMEOUT_ENV}); {detail}") from exc
    return buf.to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor, group=None, what: str = "a sum") -> torch.Tensor:
    """Sum of ``tensor`` over the ranks (``tensor`` itself when not distributed)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM, group, what) if _distributed(group) else tensor


# ---------------------------------------------------------------------------
# Shards


@dataclass(frozen=True)
class ShardInfo:
    """Rank ``rank`` of ``world_size`` holds global rows ``[start, stop)`` of ``total``."""

    rank: int
    world_size: int
    start: int
    stop: int
    total: int

    def __len__(self) -> int:
        return self.stop - self.start


def locate_shard(n_local: int, group=None) -> ShardInfo:
    """Global position of this rank's ``n_local`` rows, shards in rank order (a collective)."""
    me = world(group)
    if not _distributed(group):
        return ShardInfo(0, 1, 0, int(n_local), int(n_local))
    sizes = torch.zeros(me.size, dtype=torch.int64)
    sizes[me.rank] = int(n_local)
    sizes = _all_reduce(sizes, dist.ReduceOp.SUM, group, "the shard sizes")
    start = int(sizes[:me.rank].sum())
    return ShardInfo(me.rank, me.size, start, start + int(n_local), int(sizes.sum()))


def _shard_slice(n: int, rank: int, size: int) -> tuple[int, int]:
    from .data.loaders import shard_bounds
    return shard_bounds(n, rank, size)


# ---------------------------------------------------------------------------
# Partials of one shard


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


def key_logits(z: torch.Tensor, data: torch.Tensor, sigma: torch.Tensor, P: int, mode: str, boundary: str,
               key_logw: Optional[torch.Tensor], best_key: torch.Tensor) -> torch.Tensor:
    """Logit ``-|Pi_x z - Pi_y phi^mu|^2 / (2 sigma^2) + key_logw`` of key ``best_key = mu*H*W + y`` per pixel.

    One patch distance per query pixel, in float64 with the difference form, so the
    same key content gives the same value on every rank; ``-inf`` where ``best_key < 0``.
    Only the key patches are gathered (memory ``O(B*H*W*C*P*P)`` in bounded chunks,
    never a copy of the shard).
    """
    B, C, H, W = z.shape
    HW = H * W
    valid = best_key >= 0
    key = best_key.clamp_min(0)
    mu, y = key // HW, key % HW
    z64 = z.double()
    inv2s2 = 1.0 / (2.0 * sigma.double() ** 2)  # [B]
    if mode == "ideal":
        img = mu[:, 0, 0]  # the same image at every pixel of a sample
        d = ((z64.reshape(B, -1) - data[img].double().reshape(B, -1)) ** 2).sum(-1)
        logit = (-d * inv2s2)[:, None, None].expand(B, H, W)
        if key_logw is not None:
            logit = logit + key_logw[img].double()[:, None, None]
    else:
        rows, cols, pad, weights = reference._patch_geometry(H, W, C, P, boundary, z64)
        row_off = torch.tensor(patch_offsets(P, H, boundary)[0], device=z.device)
        col_off = torch.tensor(patch_offsets(P, W, boundary)[0], device=z.device)
        ch = torch.arange(C, device=z.device)[None, :, None, None]
        per_sample = HW * weights.numel() * 24  # bytes of one sample's query and key patches
        step = max(1, (64 * 2**20) // per_sample)
        d = []
        for b in range(0, B, step):  # bounded memory for big images and P
            q = reference.extract_patches(z64[b:b + step], rows, cols, pad)  # [b, HW, C*Kr*Kc]
            mu_f, y_f = mu[b:b + step].reshape(-1), y[b:b + step].reshape(-1)
            r = (y_f // W)[:, None] + row_off[None, :]  # [b*HW, Kr] rows of the key patch
            c = (y_f % W)[:, None] + col_off[None, :]
            if boundary == "circular":
                r, c = r % H, c % W
            inside = ((r >= 0) & (r < H))[:, None, :, None] & ((c >= 0) & (c < W))[:, None, None, :]
            k = data[mu_f[:, None, None, None], ch, r.clamp(0, H - 1)[:, None, :, None],
                     c.clamp(0, W - 1)[:, None, None, :]].double() * inside  # [b*HW, C, Kr, Kc], zero-extended
            d.append(((q.reshape(k.shape[0], -1) - k.reshape(k.shape[0], -1)) ** 2 * weights).sum(-1))
        logit = -torch.cat(d).reshape(B, H, W) * inv2s2[:, None, None]
        if key_logw is not None:
            logit = logit + key_logw.reshape(-1, HW)[mu, y].double()
    return torch.where(valid, logit, torch.full_like(logit, float("-inf")))


def _check_shard_args(z, data, sigma, P, mode, boundary, keys, key_logw, backend):
    """``check_operator_args`` that also accepts an empty shard ``data [0, C, H, W]``."""
    from ._validate import check_operator_args
    if isinstance(data, torch.Tensor) and data.dim() == 4 and data.shape[0] == 0:
        mode = check_choice("mode", mode, MODES)
        check_choice("boundary", boundary, BOUNDARIES)
        check_choice("keys", keys, KEY_SETS)
        check_choice("backend", backend, BACKENDS)
        check_patch_size(P)
        z = check_images("z", z)
        check_images("data", data, allow_empty=True)
        if data.device != z.device:
            raise ValueError(f"data is on {data.device} but z is on {z.device}; move them to one device")
        if data.shape[1:] != z.shape[1:]:
            raise ValueError(f"data images [N, C, H, W] = {tuple(data.shape)} do not match z [B, C, H, W] = "
                             f"{tuple(z.shape)} in C, H or W")
        check_sigma(sigma, z.shape[0], z)
        check_key_logw(key_logw, mode, data)
        return None
    return check_operator_args(z, data, sigma, P, mode, boundary, keys, key_logw, backend)


def patch_posterior_partials(
    z: torch.Tensor,
    data: torch.Tensor,
    sigma,
    P: int,
    *,
    mode: str = "els",
    boundary: str = "zeros",
    keys: str = "all",
    key_logw: Optional[torch.Tensor] = None,
    backend: str = "auto",
    offset: int = 0,
    image_ids: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
) -> SoftmaxPartials:
    """Mergeable partials of ``patch_posterior_mean`` over one shard of the training set.

    Arguments as ``ops.patch_posterior_mean``; ``data [n, C, H, W]`` may be empty
    (then ``max = best = -inf``, ``sum = 0``). Key ids are global:
    ``best_key = image_ids[mu] * H * W + y`` with ``image_ids`` the global index of
    each shard image (default ``offset + arange(n)``, a contiguous shard), so partials
    of the shards merge (``merge_partials``, ``all_reduce_partials``) into exactly the
    one-process ``(x0_hat, lse, best_key)`` (lowest global key id on ties).

    Returns ``SoftmaxPartials(max [B,H,W], sum [B,H,W], weighted [B,C,H,W], best [B,H,W], best_key [B,H,W])``,
    in float64 whatever the input dtype, so that merging adds no rounding of its own
    (``finalize_partials`` then gives float64; cast to ``z.dtype`` as needed).
    """
    checked = _check_shard_args(z, data, sigma, P, mode, boundary, keys, key_logw, backend)
    if checked is None:
        return _wide(empty_partials(z))
    z, data, sigma, P, mode, boundary, keys, key_logw, backend = checked
    n, HW = data.shape[0], z.shape[2] * z.shape[3]
    if image_ids is None:
        image_ids = torch.arange(int(offset), int(offset) + n, device=z.device)
    else:
        image_ids = torch.as_tensor(image_ids, device=z.device).reshape(-1).long()
        if image_ids.shape[0] != n:
            raise ValueError(f"image_ids has {image_ids.shape[0]} entries but data has {n} images")
    with torch.no_grad():
        if _use_kernel(backend, z.device):
            x0_hat, lse, best_key = torch.ops.creativity_fast.patch_posterior_mean(
                z.contiguous(), data.contiguous(), sigma, P, mode, boundary, keys, key_logw, True)
            parts = partials_from_mean(x0_hat, lse, best_key)
        else:
            parts = reference.patch_posterior_partials_reference(z, data, sigma, P, mode, boundary, keys, key_logw,
                                                                 chunk_size=chunk_size)
        best = key_logits(z, data, sigma, P, mode, boundary, key_logw, parts.best_key)
        local = parts.best_key.clamp_min(0)
        global_key = image_ids[local // HW] * HW + local % HW
        best_key = torch.where(parts.best_key >= 0, global_key, torch.full_like(global_key, -1))
    return _wide(SoftmaxPartials(parts.max, parts.sum, parts.weighted, best, best_key))


def _wide(parts: SoftmaxPartials) -> SoftmaxPartials:
    """Partials in float64: merging then adds no rounding beyond each shard's own computation."""
    return SoftmaxPartials(parts.max.double(), parts.sum.double(), parts.weighted.double(), parts.best.double(),
                           parts.best_key)


# ---------------------------------------------------------------------------
# Merging


def merge_partials_list(parts: Sequence[SoftmaxPartials]) -> SoftmaxPartials:
    """Exact merge of partials over disjoint key sets, in memory; ties in ``best`` go to the lowest key id."""
    if not parts:
        raise ValueError("merge_partials_list needs at least one SoftmaxPartials")
    parts = [_wide(p) for p in parts]
    out = parts[0]
    for p in parts[1:]:
        tie = (p.best == out.best) & (p.best_key >= 0) & ((out.best_key < 0) | (p.best_key < out.best_key))
        merged = merge_partials(out, p)
        out = merged._replace(best_key=torch.where(tie, p.best_key, merged.best_key))
    return out


def all_reduce_partials(parts: SoftmaxPartials, group=None) -> SoftmaxPartials:
    """Exact log-sum-exp merge of every rank's partials; every rank gets the merged partials.

    Three all-reduces: MAX of ``(max, best)``; SUM of ``sum`` and ``weighted`` rescaled
    to the global max; MIN of the key id among ranks holding the global best logit
    (lowest global key id on ties). Identity when not distributed.
    """
    if not _distributed(group):
        return parts
    parts = _wide(parts)
    maxes = _all_reduce(torch.stack([parts.max, parts.best]), dist.ReduceOp.MAX, group, "the partials' running max")
    gmax, gbest = maxes[0], maxes[1]
    shift = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))
    scale = torch.exp(parts.max - shift)  # 0 where this rank has no key
    sums = torch.cat([(parts.sum * scale)[:, None], parts.weighted * scale[:, None]], dim=1)
    sums = _all_reduce(sums, dist.ReduceOp.SUM, group, "the partials' normaliser and weighted sum")
    mine = (parts.best_key >= 0) & (parts.best == gbest)
    candidate = torch.where(mine, parts.best_key, torch.full_like(parts.best_key, _NO_KEY))
    key = _all_reduce(candidate, dist.ReduceOp.MIN, group, "the provenance key")
    key = torch.where(key == _NO_KEY, torch.full_like(key, -1), key)
    return SoftmaxPartials(gmax, sums[:, 0], sums[:, 1:], gbest, key)


# ---------------------------------------------------------------------------
# Sharded machines


class _ShardClasses:
    """This rank's shard ``data [n, C, H, W]`` (n may be 0), its labels and global image ids.

    Same interface as ``denoisers._ClassConditional`` except that a class may be
    absent from a shard (``subset`` is then empty); absence from the whole training
    set is checked with a collective.
    """

    def __init__(self, data, labels, class_label, image_ids: torch.Tensor, group):
        self.data = check_images("data", data, allow_empty=True)
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1).long()
            if labels.shape[0] != data.shape[0]:
                raise ValueError(f"labels has {labels.shape[0]} entries but data has {data.shape[0]} images")
        self.labels = labels
        self.class_label = class_label
        self.image_ids = image_ids
        self.group = group
        self._subsets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if class_label is not None:
            self.check_present([int(class_label)])

    def check_present(self, labels: Sequence[int]) -> None:
        """ValueError (on every rank alike) when a class has no image in the whole training set."""
        if self.labels is None:
            raise ValueError("class-conditional sampling needs the training labels (labels=...)")
        counts = torch.tensor([int((self.labels == c).sum()) for c in labels], dtype=torch.int64)
        counts = all_reduce_sum(counts, self.group, "the class counts")
        absent = [c for c, n in zip(labels, counts.tolist()) if n == 0]
        if absent:
            raise ValueError(f"class_label {absent[0]} has no training images on any rank")

    def subset(self, label: Optional[int]) -> torch.Tensor:
        return self.subset_with_ids(label)[0]

    def subset_with_ids(self, label: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, global image ids)`` of one class in this shard (all of it for ``None``); may be empty."""
        if label is None:
            return self.data, self.image_ids
        if self.labels is None:
            raise ValueError("class-conditional sampling needs the training labels (labels=...)")
        label = int(label)
        if label not in self._subsets:
            index = (self.labels == label).nonzero().reshape(-1)
            self._subsets[label] = (self.data[index], self.image_ids[index])
        return self._subsets[label]

    def groups(self, batch: int, class_labels):
        if class_labels is None:
            return [(self.class_label, torch.arange(batch))]
        class_labels = torch.as_tensor(class_labels).reshape(-1).long()
        if class_labels.shape[0] != batch:
            raise ValueError(f"class_labels has {class_labels.shape[0]} entries for a batch of {batch}")
        return [(int(c), (class_labels == c).nonzero().reshape(-1)) for c in class_labels.unique()]


def _image_ids(n: int, offset: Optional[int], image_ids, group, device) -> torch.Tensor:
    if image_ids is not None:
        ids = torch.as_tensor(image_ids).reshape(-1).long()
        if ids.shape[0] != n:
            raise ValueError(f"image_ids has {ids.shape[0]} entries but the shard has {n} images")
        return ids.to(device)
    if offset is None:
        offset = locate_shard(n, group).start  # collective: shards in rank order
    return torch.arange(int(offset), int(offset) + n, device=device)


class DistributedPatchMachine(PatchMachine):
    """IS / LS / ELS machine over a training set sharded by rank (SPEC 3.1-3.3, 9).

    Args:
        data: [n, C, H, W] this rank's shard (may be empty).
        mode, P, boundary, keys, labels, class_label, backend, record_stats: as ``PatchMachine``
            (``labels`` [n] and ``key_logw`` [n, H, W] or [n] are the shard's).
        offset: global index of ``data[0]`` (default: found with a collective, shards in rank order).
        image_ids: [n] global index of each shard image instead of ``offset`` (any disjoint split).
        group: the process group (default: the default group).

    Calling it is a collective: every rank calls with the same ``z``, ``sigma`` and
    ``class_labels``. The output (and ``last_stats``, with global image ids) equals
    ``PatchMachine`` on the whole training set up to float rounding.
    """

    def __init__(self, data, mode: str = "els", P: PatchSize = 3, *, offset: Optional[int] = None,
                 image_ids=None, group=None, boundary: str = "zeros", keys: str = "all", labels=None,
                 class_label: Optional[int] = None, key_logw: Optional[torch.Tensor] = None,
                 backend: str = "auto", record_stats: bool = False):
        self.mode = check_choice("mode", mode, MODES)
        self.boundary = check_choice("boundary", boundary, BOUNDARIES)
        self.keys = check_choice("keys", keys, KEY_SETS)
        self.P = P if callable(P) else check_patch_size(P)
        self.group = group
        data = check_images("data", data, allow_empty=True)
        ids = _image_ids(data.shape[0], offset, image_ids, group, data.device)
        self.classes = _ShardClasses(data, labels, class_label, ids, group)
        self.key_logw = key_logw
        self.backend = check_choice("backend", backend, BACKENDS)
        self.record_stats = record_stats
        self.last_stats: Optional[PatchPosterior] = None

    def posterior(self, z: torch.Tensor, sigma: torch.Tensor, P: int, label: Optional[int]):
        """Merged ``(x0_hat, lse, best_key)`` over every rank's keys for one class and patch size."""
        data, ids = self.classes.subset_with_ids(label)
        parts = patch_posterior_partials(z, data, sigma, P, mode=self.mode, boundary=self.boundary, keys=self.keys,
                                         key_logw=self._key_logw_for(label), backend=self.backend, image_ids=ids)
        parts = all_reduce_partials(parts, self.group)
        if not bool((parts.sum > 0).all()):
            what = "the training set" if label is None else f"class_label {label}"
            raise ValueError(f"{what} has no admissible training key on any rank")
        return finalize_partials(parts)

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        check_images("z", z)
        B, _, H, W = z.shape
        sig = _sigma_vector(sigma, B, z)
        x0_hat = torch.empty_like(z)
        lse = z.new_empty(B, H, W) if self.record_stats else None
        argmax = torch.empty(B, H, W, 2, dtype=torch.long, device=z.device) if self.record_stats else None
        with torch.no_grad():
            for label, rows in self.classes.groups(B, class_labels):
                # Samples may sit at different sigmas (hence patch sizes): one call per P, same order on every rank.
                sizes = torch.tensor([self.patch_size(float(s)) for s in sig[rows]], dtype=torch.long)
                for P in sizes.unique().tolist():
                    idx = rows[sizes == P]
                    out, l, best_key = self.posterior(z[idx], sig[idx], P, label)
                    x0_hat[idx] = out.to(z.dtype)
                    if self.record_stats:
                        lse[idx] = l.to(z.dtype)
                        argmax[idx] = _decode_argmax(best_key, H, W)
        if self.record_stats:
            self.last_stats = PatchPosterior(x0_hat, lse, argmax)
        return x0_hat


def _global_mean_image(data: torch.Tensor, group) -> torch.Tensor:
    """Mean training image [C, H, W] (float64) over every rank's shard."""
    C, H, W = data.shape[1:]
    packed = torch.cat([torch.tensor([float(data.shape[0])], dtype=torch.float64, device=data.device),
                        data.double().sum(0).reshape(-1)])
    packed = all_reduce_sum(packed, group, "the mean image")
    if packed[0] == 0:
        raise ValueError("the training set is empty on every rank")
    return (packed[1:] / packed[0]).reshape(C, H, W)


@functools.lru_cache(maxsize=None)
def _make_aels_class():
    from .attention import AELSDenoiser, patch_argmax_attention

    class DistributedAELSDenoiser(DistributedPatchMachine, AELSDenoiser):
        """Attention-augmented ELS (SPEC 3.4) over a sharded training set.

        The attention runs within each training image, so the in-degree ``c_mu(y)`` of a
        shard image is computed on its rank; the embedding centre (the mean patch of the
        *whole* set) comes from an all-reduce of the image sums. The ELS softmax with the
        prior ``log(1 + lam c)`` is the sharded one. Arguments as ``AELSDenoiser`` plus
        ``offset``, ``image_ids`` and ``group`` as ``DistributedPatchMachine``.
        """

        def __init__(self, data, P: PatchSize = 3, *, lam: float = 1.0, gamma: float = 0.0,
                     tau: Optional[float] = None, attention_P: Optional[int] = None, exclude: Optional[int] = None,
                     offset: Optional[int] = None, image_ids=None, group=None, boundary: str = "zeros",
                     keys: str = "all", labels=None, class_label: Optional[int] = None, backend: str = "auto",
                     record_stats: bool = False, mode: str = "els"):
            # AELSDenoiser's own checks on a one-image stand-in (the shard may be empty) ...
            stand_in = torch.zeros(1, *data.shape[1:], dtype=data.dtype)
            AELSDenoiser.__init__(self, stand_in, P, lam=lam, gamma=gamma, tau=tau, attention_P=attention_P,
                                  exclude=exclude, boundary=boundary, keys=keys, backend=backend,
                                  record_stats=record_stats, mode=mode)
            # ... then the shard.
            DistributedPatchMachine.__init__(self, data, mode, P, offset=offset, image_ids=image_ids, group=group,
                                             boundary=boundary, keys=keys, labels=labels, class_label=class_label,
                                             backend=backend, record_stats=record_stats)
            self._mean_image: Optional[torch.Tensor] = None
            self._priors: dict[int, Optional[torch.Tensor]] = {}

        def center(self, Pa: int) -> torch.Tensor:
            """Mean zero-extended ``Pa x Pa`` patch of the whole training set (as ``attention.mean_patch``)."""
            if Pa not in self._centers:
                if self._mean_image is None:
                    self._mean_image = _global_mean_image(self.data, self.group)
                m = (Pa - 1) // 2
                C = self._mean_image.shape[0]
                patches = F.unfold(F.pad(self._mean_image[None], (m, m, m, m)), Pa)
                self._centers[Pa] = patches.mean(-1).reshape(C, Pa, Pa).to(self.data.dtype)
            return self._centers[Pa]

        def prior_logw(self, P: int) -> Optional[torch.Tensor]:
            """``log(1 + lam c)`` [n, H, W] of this rank's images (None when ``lam = 0``)."""
            if self.lam == 0:
                return None
            if P not in self._priors:
                Pa = self.attention_size(P)
                center = self.center(Pa)  # collective on every rank, also with an empty shard
                if self.data.shape[0] == 0:
                    counts = self.data.new_zeros(0, *self.data.shape[2:])
                else:
                    counts = torch.cat([patch_argmax_attention(
                        self.data[i:i + 4096], Pa, exclude=self.exclude, center=center, tau=self.tau,
                        return_in_degree=True, backend=self.backend).in_degree
                        for i in range(0, self.data.shape[0], 4096)])
                self._priors[P] = torch.log1p(self.lam * counts.to(self.data.dtype))
            return self._priors[P]

        # AELSDenoiser's call (prior, sample-time attention, stats) around the sharded ELS
        # softmax; without this line the MRO would pick DistributedPatchMachine.__call__.
        __call__ = AELSDenoiser.__call__

        def _els_call(self, z: torch.Tensor, sigma: torch.Tensor, class_labels) -> torch.Tensor:
            return DistributedPatchMachine.__call__(self, z, sigma, class_labels)

    return DistributedAELSDenoiser


class DistributedGaussianDenoiser(GaussianDenoiser):
    """Gaussian (Wiener) machine, SPEC 3.5, with the moments of the whole sharded training set.

    The mean is an all-reduce of the image sums and counts; the covariance an
    all-reduce of the centred ``sum (x - mean)(x - mean)^T`` (float64, ``D x D``
    with ``D = C*H*W``); then each rank does the same eigendecomposition. Arguments
    as ``GaussianDenoiser`` plus ``group``; ``data`` is this rank's shard (may be empty).
    """

    def __init__(self, data, *, labels=None, class_label: Optional[int] = None, group=None, offset=None,
                 image_ids=None):
        data = check_images("data", data, allow_empty=True)
        ids = torch.zeros(data.shape[0], dtype=torch.long) if image_ids is None else image_ids  # unused ids
        self.group = group
        self.classes = _ShardClasses(data, labels, class_label, torch.as_tensor(ids), group)
        self._moments = {}

    def moments(self, label: Optional[int]):
        if label not in self._moments:
            data = self.classes.subset(label)
            x = data.reshape(data.shape[0], data[0].numel() if data.shape[0] else data.shape[1:].numel()).double()
            packed = torch.cat([torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device), x.sum(0)])
            packed = all_reduce_sum(packed, self.group, "the data mean")
            n = float(packed[0])
            if n == 0:
                what = "the training set" if label is None else f"class_label {label}"
                raise ValueError(f"{what} has no training images on any rank")
            mean = packed[1:] / n
            centred = x - mean
            cov = all_reduce_sum(centred.T @ centred, self.group, "the data covariance") / n
            evals, evecs = torch.linalg.eigh(cov)
            self._moments[label] = (mean, evals.clamp_min(0), evecs)
        return self._moments[label]

    # __call__ is GaussianDenoiser's: it asks for the moments of the same classes in the same
    # order on every rank (the groups depend only on the call's class_labels), so the
    # collectives in ``moments`` line up.


# ---------------------------------------------------------------------------
# Registry: machine name -> sharded factory


_SHARDED: dict[str, Callable] = {}


def register_sharded_machine(name: str):
    """Decorator: ``factory(shard_images, *, offset, image_ids, group, P, labels, class_label, ...)``."""
    def wrap(factory):
        _SHARDED[name] = factory
        return factory
    return wrap


def sharded_machine_names() -> tuple[str, ...]:
    return tuple(_SHARDED)


def is_shardable(machine: str) -> bool:
    """Whether ``machine`` has a sharded form (else it runs replicated: every rank holds all the data)."""
    return machine in _SHARDED


for _mode in MODES:
    register_sharded_machine(_mode)(
        lambda data, _mode=_mode, P=3, **kw: DistributedPatchMachine(data, _mode, 1 if _mode == "ideal" else P, **kw))


@register_sharded_machine("aels")
def _sharded_aels(data, *, P: PatchSize = 3, lam: float = 1.0, gamma: float = 0.0, **kwargs):
    return _make_aels_class()(data, P, lam=lam, gamma=gamma, **kwargs)


@register_sharded_machine("gaussian")
def _sharded_gaussian(data, *, labels=None, class_label=None, group=None, offset=None, image_ids=None, **_unused):
    return DistributedGaussianDenoiser(data, labels=labels, class_label=class_label, group=group, offset=offset,
                                       image_ids=image_ids)


def __getattr__(name: str):
    if name == "DistributedAELSDenoiser":  # built on first use: attention imports are not free
        return _make_aels_class()
    raise AttributeError(name)


def make_sharded_denoiser(machine: str, data, *, offset: Optional[int] = None, image_ids=None, group=None,
                          **kwargs):
    """Build the sharded form of a registered machine on this rank's shard ``data [n, C, H, W]``.

    Keyword arguments as ``denoisers.make_denoiser`` (``labels``/``key_logw`` are the
    shard's). A collective when ``offset`` and ``image_ids`` are both None.
    """
    check_choice("machine (with a sharded form)", machine, sharded_machine_names())
    return _SHARDED[machine](data, offset=offset, image_ids=image_ids, group=group, **kwargs)


def shard_denoiser(machine: str, data, *, labels=None, key_logw=None, group=None, **kwargs):
    """Sharded machine from the *whole* training set in memory: keep this rank's contiguous part.

    For data that fit in memory (tests, notebooks); large sets should be loaded per
    rank with ``load_dataset(path, shard=(rank, world_size))`` and given to
    ``make_sharded_denoiser``. Without a process group this is the ordinary machine
    on all of ``data`` (a world of one).
    """
    me = world(group)
    start, stop = _shard_slice(data.shape[0], me.rank, me.size)
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1)[start:stop]
    if key_logw is not None:
        kwargs["key_logw"] = key_logw[start:stop]
    return make_sharded_denoiser(machine, data[start:stop], offset=start, group=group, labels=labels, **kwargs)


# ---------------------------------------------------------------------------
# Helpers for commands run under torchrun


def broadcast_ints(values: Sequence[int], group=None, src: int = 0) -> list[int]:
    """``values`` of rank ``src`` on every rank (e.g. the seeds a resumed run already finished)."""
    if not _distributed(group):
        return [int(v) for v in values]
    me = world(group)
    mine = me.rank == src
    n = _all_reduce(torch.tensor([len(values) if mine else 0], dtype=torch.int64), dist.ReduceOp.SUM, group,
                    "a list length")
    buf = torch.tensor(list(values), dtype=torch.int64) if mine else torch.zeros(int(n), dtype=torch.int64)
    if int(n) == 0:
        return []
    return [int(v) for v in _all_reduce(buf, dist.ReduceOp.SUM, group, "a list of ints").tolist()]


def tag_rank(exc: BaseException, me: World) -> BaseException:
    """Prefix ``exc``'s message with ``rank r of w: `` (so a one-line CLI error says which rank failed)."""
    if exc.args and isinstance(exc.args[0], str) and not exc.args[0].startswith("rank "):
        exc.args = (f"rank {me.rank} of {me.size}: {exc.args[0]}",) + tuple(exc.args[1:])
    return exc
