"""Typed public wrappers of the C++/CUDA operators, with fake and autograd registration.

The schemas are defined once in ``csrc/ops.cpp``; the kernels register per
dispatch key (``csrc/cpu``, ``csrc/cuda``). This module adds what Python owns:
argument checks (SPEC 10), the fake (shape) functions for ``torch.compile``, the
autograd formula (SPEC 4), and the choice between kernel and reference.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Union

import torch

from . import reference
from ._validate import check_operator_args

try:  # the compiled extension registers the torch.ops.creativity_fast.* kernels on import
    from . import _C  # noqa: F401
    EXTENSION_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - only when the build is broken or missing
    EXTENSION_ERROR = exc
    warnings.warn(f"creativity_fast C++ extension not loaded ({exc}); using the pure-PyTorch reference")


class PatchPosterior(NamedTuple):
    """Result of ``patch_posterior_mean(..., return_stats=True)``.

    x0_hat: [B, C, H, W] posterior mean; lse: [B, H, W] log normaliser;
    argmax: [B, H, W, 2] int64, ``(training image mu, flat location y = r*W + c)``
    of the largest-weight key per pixel (lowest on ties).
    """

    x0_hat: torch.Tensor
    lse: torch.Tensor
    argmax: torch.Tensor


def has_kernel(device: Union[str, torch.device] = "cpu", op: str = "patch_posterior_mean") -> bool:
    """Whether a compiled kernel of ``op`` is registered for ``device``'s dispatch key."""
    if EXTENSION_ERROR is not None or not hasattr(torch.ops, "creativity_fast"):
        return False
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"creativity_fast::{op}", key)
    except RuntimeError:
        return False


def _use_kernel(backend: str, device: torch.device) -> bool:
    if backend == "reference":
        return False
    available = has_kernel(device)
    if backend == "kernel" and not available:
        raise ValueError(f"backend='kernel' but no compiled kernel is available for {device.type}"
                         + (f" (extension failed to load: {EXTENSION_ERROR})" if EXTENSION_ERROR else ""))
    return available


def _decode_argmax(best_key: torch.Tensor, H: int, W: int) -> torch.Tensor:
    return torch.stack([best_key // (H * W), best_key % (H * W)], dim=-1)


def patch_posterior_mean(
    z: torch.Tensor,
    data: torch.Tensor,
    sigma: Union[float, torch.Tensor],
    P: int,
    *,
    mode: str = "els",
    boundary: str = "zeros",
    keys: str = "all",
    key_logw: Optional[torch.Tensor] = None,
    return_stats: bool = False,
    backend: str = "auto",
    chunk_size: Optional[int] = None,
) -> Union[torch.Tensor, PatchPosterior]:
    """Posterior mean of the clean image under a patch dictionary of the training set (SPEC 3.1-3.3, 4).

    For every query pixel ``x``,
    ``x0_hat[:, x] = sum_{(mu,y) in D_x} softmax(-|Pi_x z - Pi_y phi^mu|^2 / (2 sigma^2) + key_logw[mu,y]) phi^mu[:, y]``.

    Args:
        z: [B, C, H, W] noisy images (sigma space, ``z = x0 + sigma * eps``).
        data: [N, C, H, W] training images in [-1, 1].
        sigma: a float or a [B] tensor, > 0.
        P: odd patch size (ignored by ``mode="ideal"``).
        mode: ``"ideal"`` (whole images, SPEC 3.1), ``"local"`` (same-location patches, 3.2)
            or ``"els"`` (every admissible patch, 3.3).
        boundary: ``"zeros"`` (zero extension; ELS keeps each pixel's relation to the border)
            or ``"circular"`` (patches wrap).
        keys: ``"all"`` or ``"valid"`` (circular ELS: only patches that do not wrap).
        key_logw: optional log prior per key, [N] for ideal, [N, H, W] otherwise (AELS).
        return_stats: also return the log normaliser and the provenance argmax.
        backend: ``"auto"`` (compiled kernel when available), ``"kernel"`` or ``"reference"``.
        chunk_size: training images per streaming chunk (reference; None picks by memory).

    Returns:
        x0_hat [B, C, H, W], or a ``PatchPosterior(x0_hat, lse, argmax)``.
    """
    z, data, sigma, P, mode, boundary, keys, key_logw, backend = check_operator_args(
        z, data, sigma, P, mode, boundary, keys, key_logw, backend)
    H, W = z.shape[2:]
    if _use_kernel(backend, z.device):
        x0_hat, lse, best_key = torch.ops.creativity_fast.patch_posterior_mean(
            z.contiguous(), data.contiguous(), sigma, P, mode, boundary, keys, key_logw, return_stats)
    else:
        x0_hat, lse, best_key = reference.patch_posterior_mean_reference(
            z, data, sigma, P, mode, boundary, keys, key_logw, chunk_size=chunk_size)
    if not return_stats:
        return x0_hat
    return PatchPosterior(x0_hat, lse, _decode_argmax(best_key, H, W))


# ---------------------------------------------------------------------------
# Fake (shape-only) implementations and autograd, registered when the schema exists.

def _register() -> None:
    if EXTENSION_ERROR is not None:
        return

    @torch.library.register_fake("creativity_fast::patch_posterior_mean")
    def _(z, data, sigma, P, mode, boundary, keys, key_logw, return_argmax):
        B, C, H, W = z.shape
        best = z.new_empty((B, H, W) if return_argmax else (0,), dtype=torch.int64)
        return z.new_empty(z.shape), z.new_empty((B, H, W)), best

    @torch.library.register_fake("creativity_fast::patch_posterior_mean_backward")
    def _(grad_x0, z, data, sigma, P, mode, boundary, keys, key_logw, x0_hat, lse):
        return torch.empty_like(z)

    @torch.library.register_fake("creativity_fast::patch_posterior_mean_backward_lse")
    def _(grad_x0, grad_lse, z, data, sigma, P, mode, boundary, keys, key_logw, x0_hat, lse):
        return torch.empty_like(z)

    def setup_context(ctx, inputs, output):
        z, data, sigma, P, mode, boundary, keys, key_logw, _ = inputs
        x0_hat, lse, _ = output
        ctx.save_for_backward(z, data, sigma, key_logw, x0_hat, lse)
        ctx.options = (P, mode, boundary, keys)

    def backward(ctx, grad_x0, grad_lse, grad_best):
        # SPEC 4: d x0_hat(x) / d Pi_x z = Cov_w(centre, key patch) / sigma^2, by a
        # second streaming pass reusing lse. Gradients flow to z only (data, sigma and
        # key_logw are constants of the machine); lse is differentiable where the backend
        # implements patch_posterior_mean_backward_lse (CPU), else only x0_hat is.
        z, data, sigma, key_logw, x0_hat, lse = ctx.saved_tensors
        grad_z = None
        if ctx.needs_input_grad[0] and has_kernel(z.device, "patch_posterior_mean_backward_lse"):
            # One pass for both outputs: lse is differentiable too (no data-dependent branch,
            # so the formula also traces under torch.compile / AOTAutograd).
            grad_x0 = torch.zeros_like(x0_hat) if grad_x0 is None else grad_x0
            grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
            grad_z = torch.ops.creativity_fast.patch_posterior_mean_backward_lse(
                grad_x0.contiguous(), grad_lse.contiguous(), z, data, sigma, *ctx.options, key_logw, x0_hat, lse)
        elif ctx.needs_input_grad[0]:
            if grad_lse is not None and bool((grad_lse != 0).any()):
                raise NotImplementedError("patch_posterior_mean: gradients through lse are not supported "
                                          f"on {z.device.type}")
            if grad_x0 is not None:
                grad_z = torch.ops.creativity_fast.patch_posterior_mean_backward(
                    grad_x0.contiguous(), z, data, sigma, *ctx.options, key_logw, x0_hat, lse)
        return grad_z, None, None, None, None, None, None, None, None

    torch.library.register_autograd("creativity_fast::patch_posterior_mean", backward, setup_context=setup_context)


_register()
