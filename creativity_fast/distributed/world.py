"""Process group, errors and collectives of the sharded machines (docs/theory.md §9).

``init_from_env()`` joins the process group when launched by ``torchrun``
(``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), gloo for CPU tensors and NCCL for CUDA
tensors (``"cpu:gloo,cuda:nccl"`` when CUDA is present), with a timeout
(``CREATIVITY_FAST_DIST_TIMEOUT`` seconds, default 600) so a rank that dies or hangs
makes the others fail with ``DistributedError`` instead of waiting forever. Every
collective goes through :func:`all_reduce`, which turns a failure into that error.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

try:  # a torch built without distributed support still imports this module
    import torch.distributed as dist
except ImportError:  # pragma: no cover
    dist = None

DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "CREATIVITY_FAST_DIST_TIMEOUT"
BACKEND_ENV = "CREATIVITY_FAST_DIST_BACKEND"
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


def is_distributed(group=None) -> bool:
    """Whether a process group of more than one rank is active."""
    return dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _collective_device(tensor: torch.Tensor, group) -> torch.device:
    """Where a collective on ``tensor`` runs: its own device unless the group cannot take it."""
    backend = str(dist.get_backend(group)).lower()
    if tensor.device.type == "cpu" and "gloo" not in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())  # NCCL only: stage CPU tensors on the GPU
    return tensor.device


def all_reduce(tensor: torch.Tensor, op, group, what: str) -> torch.Tensor:
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
    return all_reduce(tensor, dist.ReduceOp.SUM, group, what) if is_distributed(group) else tensor


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
    if not is_distributed(group):
        return ShardInfo(0, 1, 0, int(n_local), int(n_local))
    sizes = torch.zeros(me.size, dtype=torch.int64)
    sizes[me.rank] = int(n_local)
    sizes = all_reduce(sizes, dist.ReduceOp.SUM, group, "the shard sizes")
    start = int(sizes[:me.rank].sum())
    return ShardInfo(me.rank, me.size, start, start + int(n_local), int(sizes.sum()))





# ---------------------------------------------------------------------------
# Helpers for commands run under torchrun


def broadcast_ints(values: Sequence[int], group=None, src: int = 0) -> list[int]:
    """``values`` of rank ``src`` on every rank (e.g. the seeds a resumed run already finished)."""
    if not is_distributed(group):
        return [int(v) for v in values]
    me = world(group)
    mine = me.rank == src
    n = all_reduce(torch.tensor([len(values) if mine else 0], dtype=torch.int64), dist.ReduceOp.SUM, group,
                    "a list length")
    buf = torch.tensor(list(values), dtype=torch.int64) if mine else torch.zeros(int(n), dtype=torch.int64)
    if int(n) == 0:
        return []
    return [int(v) for v in all_reduce(buf, dist.ReduceOp.SUM, group, "a list of ints").tolist()]


def tag_rank(exc: BaseException, me: World) -> BaseException:
    """Prefix ``exc``'s message with ``rank r of w: `` (so a one-line CLI error says which rank failed)."""
    if exc.args and isinstance(exc.args[0], str) and not exc.args[0].startswith("rank "):
        exc.args = (f"rank {me.rank} of {me.size}: {exc.args[0]}",) + tuple(exc.args[1:])
    return exc
