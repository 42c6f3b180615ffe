"""Result and argument types of the operators (``ops``), shared with their reference twins."""

from __future__ import annotations

from typing import NamedTuple

import torch


class PatchPosterior(NamedTuple):
    """Result of ``patch_posterior_mean(..., return_stats=True)``.

    x0_hat: [B, C, H, W] posterior mean; lse: [B, H, W] log normaliser;
    argmax: [B, H, W, 2] int64, ``(training image mu, flat location y = r*W + c)``
    of the largest-weight key per pixel (lowest on ties).
    """

    x0_hat: torch.Tensor
    lse: torch.Tensor
    argmax: torch.Tensor


class Attention(NamedTuple):
    """Result of ``patch_argmax_attention(..., return_in_degree=True)``.

    ``y_star [M,H,W]`` int64 (flat ``r*W + c``, -1 where nothing is admissible) and
    ``in_degree [M,H,W]`` float: hard counts ``#{x : y*(x) = y}`` or, with ``tau``, the
    column sums of the row softmax.
    """

    y_star: torch.Tensor
    in_degree: torch.Tensor


class MaskedSupport(NamedTuple):
    """Per-unit key and output supports in CSR form over ``U`` units (pixels or channel-pixels).

    Unit ``q`` measures distances on ``key_index[key_ptr[q]:key_ptr[q+1]]`` with weights
    ``key_weight`` (same slice) and averages the training values on
    ``out_index[out_ptr[q]:out_ptr[q+1]]``. ``key_ptr, out_ptr: [Q+1]``, indices int64.
    """

    key_ptr: torch.Tensor
    key_index: torch.Tensor
    key_weight: torch.Tensor
    out_ptr: torch.Tensor
    out_index: torch.Tensor

    @property
    def num_units(self) -> int:
        return self.key_ptr.numel() - 1

    def to(self, dtype=None, device=None) -> "MaskedSupport":
        return MaskedSupport(self.key_ptr.to(device), self.key_index.to(device),
                             self.key_weight.to(dtype=dtype, device=device), self.out_ptr.to(device),
                             self.out_index.to(device))
