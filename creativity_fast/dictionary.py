"""The patch dictionary: which pixels a patch covers and which keys a query may use.

This is the one place where boundary modes and key sets are defined (docs/theory.md §2, §3.2,
§3.3). The pure-PyTorch reference uses these functions directly; the C++ and CUDA
kernels use ``csrc/dictionary.h``, which implements the same two rules and is
checked against this file by the tests.

Both rules are *separable*: a 2-D patch is the product of a row rule and a column
rule, and a key centre ``(r', c')`` is admissible for the query pixel ``(r, c)``
exactly when ``r'`` is admissible for ``r`` and ``c'`` for ``c``.

Patch support (``patch_offsets``)
    A patch ``Pi_x`` of size ``P = 2m + 1`` covers the offsets ``-m..m`` around
    ``x`` on each axis. Only the offsets that can ever land inside an image of
    this size matter, so they are reduced without changing any distance:

    - ``zeros``: offsets with ``|d| > size - 1`` always read the zero extension
      on both sides of a difference, so they are dropped.
    - ``circular``: offsets wrap modulo ``size``; when ``P > size`` several
      offsets hit the same pixel, so each residue carries its multiplicity as a
      weight. A distance is ``sum_d weight(d) * (q_d - k_d)^2``.

    This keeps the cost and memory of every path bounded by the image size,
    whatever ``P``.

Admissible centres (``admissible_centres``), per axis, ``m = (P - 1) / 2``
    - ``local``: only the same position, ``r' = r``.
    - ``els`` + ``circular`` + ``keys="all"``: every position.
    - ``els`` + ``circular`` + ``keys="valid"``: positions whose patch does not
      wrap, ``m <= r' <= size - 1 - m``.
    - ``els`` + ``zeros``: ``r`` is an *edge* position if ``r < m`` or
      ``r > size - 1 - m``; an edge query only uses ``r' = r``, an interior query
      uses every interior ``r'``.
"""

from __future__ import annotations

import torch

MODES = ("ideal", "local", "els")
BOUNDARIES = ("zeros", "circular")
KEY_SETS = ("all", "valid")


def patch_offsets(P: int, size: int, boundary: str) -> tuple[list[int], list[int]]:
    """Offsets a patch of size ``P`` covers along one axis of length ``size``.

    Returns ``(offsets, weights)``, two lists of equal length: the distance between
    two patches is ``sum_{dr, dc} w_r[dr] * w_c[dc] * (q[dr, dc] - k[dr, dc])^2``
    with pixels read at ``x + offset`` (zero-extended or wrapped by ``boundary``).
    """
    m = (P - 1) // 2
    if boundary == "zeros":
        reach = min(m, size - 1)
        return list(range(-reach, reach + 1)), [1] * (2 * reach + 1)
    if boundary == "circular":
        if P <= size:
            return list(range(-m, m + 1)), [1] * P
        counts = [0] * size
        for d in range(-m, m + 1):
            counts[d % size] += 1
        return list(range(size)), counts
    raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")


def is_edge(position: int, size: int, P: int) -> bool:
    """Whether a row (or column) is an edge position for zero-boundary ELS (docs/theory.md §3.3)."""
    m = (P - 1) // 2
    return position < m or position > size - 1 - m


def admissible_centres(size: int, P: int, mode: str, boundary: str, keys: str = "all") -> torch.Tensor:
    """Per-axis admissibility ``A[r, r']``: may query position ``r`` use a key centred at ``r'``.

    Returns a bool tensor ``[size, size]``. The 2-D rule is
    ``A_rows[r, r'] & A_cols[c, c']``. ``mode="ideal"`` has no patch dictionary.
    """
    m = (P - 1) // 2
    idx = torch.arange(size)
    interior = (idx >= m) & (idx <= size - 1 - m)
    same = idx[:, None] == idx[None, :]
    if mode == "local":
        return same
    if mode != "els":
        raise ValueError(f"admissible_centres needs mode 'local' or 'els', got {mode!r}")
    if boundary == "circular":
        if keys == "all":
            return torch.ones(size, size, dtype=torch.bool)
        return interior[None, :].expand(size, size).clone()
    if boundary == "zeros":
        return torch.where(interior[:, None], interior[None, :].expand(size, size), same)
    raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")


def dictionary_size(H: int, W: int, P: int, mode: str, boundary: str, keys: str = "all") -> torch.Tensor:
    """Number of admissible key centres per query pixel, per training image: ``[H, W]`` int64.

    ``pairs = B * N * dictionary_size(...).sum()`` is the work of one call (docs/theory.md §9).
    """
    if mode == "ideal":
        raise ValueError("the ideal machine has no patch dictionary")
    rows = admissible_centres(H, P, mode, boundary, keys).sum(1)
    cols = admissible_centres(W, P, mode, boundary, keys).sum(1)
    return rows[:, None] * cols[None, :]


def count_pairs(B: int, N: int, H: int, W: int, P: int, mode: str, boundary: str, keys: str = "all") -> int:
    """(query pixel, key) pairs of one call: ``B * H * W * |D_x|`` summed over pixels (docs/theory.md §9).

    The ideal machine compares whole images: ``B * N`` pairs of ``C*H*W``-wide distances.
    """
    if mode == "ideal":
        return B * N
    return int(B * N * dictionary_size(H, W, P, mode, boundary, keys).sum())
