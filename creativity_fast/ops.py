"""The operators: typed wrappers, the kernel-selection rule, fake and autograd registrations.

Layering (as pytorch/extension-cpp):

- ``csrc/ops.cpp`` defines every schema (``torch.ops.creativity_fast.*``);
- ``csrc/cpu/`` and ``csrc/cuda/`` register the kernels per dispatch key, with the
  argument layer ``csrc/op_args.h`` shared by both;
- this module adds what Python owns: argument checks (``_validate``), the one rule that
  picks kernel or reference (:func:`use_kernel`), the fake (shape) functions used by
  ``torch.compile`` and the autograd formulas;
- ``reference`` holds the pure-PyTorch twin of every operator.

Operators (docs/theory.md §4):

=================================  ========================================================
``patch_posterior_mean``            IS / LS / ELS posterior mean, lse and provenance (§3.1-3.3)
``patch_argmax_attention``          top-1 patch attention and in-degree (§3.4)
``paired_patch_posterior_mean``     paired-patch (PELS) posterior mean (§3.7)
``masked_local_posterior``          local posterior with a per-unit mask (§3.6)
=================================  ========================================================
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Optional, Union

import torch

from . import reference
from ._validate import (check_attention_args, check_backend, check_masked_args, check_operator_args,
                        check_paired_args)
from .op_types import Attention, MaskedSupport, PatchPosterior
from .reference import mean_patch

try:  # the compiled extension registers the torch.ops.creativity_fast.* kernels on import
    from . import _C  # noqa: F401
    EXTENSION_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - only when the build is broken or missing
    EXTENSION_ERROR = exc
    warnings.warn(f"creativity_fast C++ extension not loaded ({exc}); using the pure-PyTorch reference")

__all__ = [
    "Attention", "EXTENSION_ERROR", "MaskedSupport", "PatchPosterior", "has_kernel", "masked_local_posterior",
    "mean_patch", "paired_patch_posterior_mean", "patch_argmax_attention", "patch_posterior_mean", "use_kernel",
]


# --------------------------------------------------------------------------- #
# Which implementation runs


def has_kernel(device: Union[str, torch.device] = "cpu", op: str = "patch_posterior_mean") -> bool:
    """Whether a compiled kernel of ``op`` is registered for ``device``'s dispatch key."""
    if EXTENSION_ERROR is not None or not hasattr(torch.ops, "creativity_fast"):
        return False
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"creativity_fast::{op}", key)
    except RuntimeError:
        return False


def use_kernel(op: str, backend: str, device: Union[str, torch.device]) -> bool:
    """The kernel-selection rule of every operator.

    ``backend="reference"``: the pure-PyTorch twin. ``"auto"``: the compiled kernel when
    one is registered for ``device``, else the twin. ``"kernel"``: the compiled kernel,
    or a ``ValueError`` naming what is missing.
    """
    backend = check_backend(backend)
    if backend == "reference":
        return False
    available = has_kernel(device, op)
    if backend == "kernel" and not available:
        raise ValueError(f"backend='kernel' but no compiled {op} kernel is available for {torch.device(device).type}"
                         + (f" (extension failed to load: {EXTENSION_ERROR})" if EXTENSION_ERROR else ""))
    return available


@contextlib.contextmanager
def environment(**values):
    """The kernels' environment knobs (``CREATIVITY_FAST_*``, read per call) set for a ``with`` block, then restored."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def decode_best_key(best_key: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Key ids ``mu * H * W + y`` [...] -> ``(mu, y)`` pairs [..., 2]."""
    return torch.stack([best_key // (H * W), best_key % (H * W)], dim=-1)


# --------------------------------------------------------------------------- #
# Typed wrappers


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
    """Posterior mean of the clean image under a patch dictionary of the training set (docs/theory.md §3.1-3.3, §4.1).

    For every query pixel ``x``,
    ``x0_hat[:, x] = sum_{(mu,y) in D_x} softmax(-|Pi_x z - Pi_y phi^mu|^2 / (2 sigma^2) + key_logw[mu,y]) phi^mu[:, y]``.

    Args:
        z: [B, C, H, W] noisy images (sigma space, ``z = x0 + sigma * eps``).
        data: [N, C, H, W] training images in [-1, 1].
        sigma: a float or a [B] tensor, > 0.
        P: odd patch size (ignored by ``mode="ideal"``).
        mode: ``"ideal"`` (whole images, §3.1), ``"local"`` (same-location patches, §3.2)
            or ``"els"`` (every admissible patch, §3.3).
        boundary: ``"zeros"`` (zero extension; ELS keeps each pixel's relation to the border)
            or ``"circular"`` (patches wrap).
        keys: ``"all"`` or ``"valid"`` (circular ELS: only patches that do not wrap).
        key_logw: optional log prior per key, [N] for ideal, [N, H, W] otherwise (AELS).
        return_stats: also return the log normaliser and the provenance argmax.
        backend: ``"auto"`` (compiled kernel when available), ``"kernel"`` or ``"reference"``.
        chunk_size: training images per streaming chunk (reference; None picks by memory).

    Returns:
        x0_hat [B, C, H, W], or a ``PatchPosterior(x0_hat, lse, argmax)``.

    Differentiable with respect to ``z``, through ``x0_hat`` and ``lse`` (docs/theory.md §4.3).
    """
    z, data, sigma, P, mode, boundary, keys, key_logw, backend = check_operator_args(
        z, data, sigma, P, mode, boundary, keys, key_logw, backend)
    H, W = z.shape[2:]
    if use_kernel("patch_posterior_mean", backend, z.device):
        x0_hat, lse, best_key = torch.ops.creativity_fast.patch_posterior_mean(
            z.contiguous(), data.contiguous(), sigma, P, mode, boundary, keys, key_logw, return_stats)
    else:
        x0_hat, lse, best_key = reference.patch_posterior_mean_reference(
            z, data, sigma, P, mode, boundary, keys, key_logw, chunk_size=chunk_size)
    if not return_stats:
        return x0_hat
    return PatchPosterior(x0_hat, lse, decode_best_key(best_key, H, W))


def paired_patch_posterior_mean(
    z: torch.Tensor,
    data: torch.Tensor,
    sigma: Union[float, torch.Tensor],
    P: int,
    query_partner: torch.Tensor,
    key_partner: torch.Tensor,
    *,
    beta: float = 1.0,
    P2: Optional[int] = None,
    boundary: str = "zeros",
    keys: str = "all",
    return_stats: bool = False,
    backend: str = "auto",
    chunk_size: Optional[int] = None,
) -> Union[torch.Tensor, PatchPosterior]:
    """Posterior mean of the paired-patch machine (PELS, docs/theory.md §3.7, §4).

    For every query pixel ``x``, over the ELS-admissible training keys ``(mu, u)`` (§3.3),
    ``x0_hat[:, x] = sum softmax(-(|Pi_x z - Pi_u phi^mu|^2
    + beta |Pi2_{q(x)} z - Pi2_{a_mu(u)} phi^mu|^2) / (2 sigma^2)) phi^mu[:, u]``:
    a key counts only as much as its own partner patch resembles the query's partner patch.

    Args:
        z: [B, C, H, W] noisy images; data: [N, C, H, W] training images; sigma: float or [B] (> 0).
        P: odd patch size of the first (local) distance.
        query_partner: [B, H, W] int64, the partner ``q(x)`` of each query pixel as a flat
            location ``row * W + col`` (-1: none, read as the zero patch).
        key_partner: [N, H, W] int64, the partner ``a_mu(u)`` of each training location.
        beta: weight (>= 0) of the partner distance; 0 is ELS exactly.
        P2: odd size of the partner window (default ``P``); zero-extended or periodic as ``boundary``.
        boundary, keys: as :func:`patch_posterior_mean` (mode ``"els"``).
        return_stats: also return the log normaliser and the provenance argmax.
        backend: ``"auto"``, ``"kernel"`` or ``"reference"``; chunk_size: images per chunk (reference).

    Returns:
        x0_hat [B, C, H, W], or a ``PatchPosterior(x0_hat, lse, argmax)``.

    Differentiable with respect to ``z`` through both distances (partners held fixed); the
    kernel's backward recomputes through the reference twin.
    """
    z, data, sigma, P, query_partner, key_partner, beta, P2, boundary, keys, backend = check_paired_args(
        z, data, sigma, P, query_partner, key_partner, beta, P2, boundary, keys, backend)
    H, W = z.shape[2:]
    if use_kernel("paired_patch_posterior_mean", backend, z.device):
        x0_hat, lse, best_key = torch.ops.creativity_fast.paired_patch_posterior_mean(
            z.contiguous(), data.contiguous(), sigma, P, P2, query_partner, key_partner, beta, boundary, keys,
            return_stats)
    else:
        x0_hat, lse, best_key = reference.paired_patch_posterior_mean_reference(
            z, data, sigma, P, P2, query_partner, key_partner, beta, boundary, keys, chunk_size=chunk_size)
    if not return_stats:
        return x0_hat
    return PatchPosterior(x0_hat, lse, decode_best_key(best_key, H, W))


def patch_argmax_attention(images: torch.Tensor, P: int, *, exclude: Optional[int] = None,
                           center: Optional[torch.Tensor] = None, tau: Optional[float] = None,
                           return_in_degree: bool = False, backend: str = "auto"):
    """Top-1 patch attention of every pixel of every image (docs/theory.md §3.4, §4.5).

    For image ``phi`` and pixel ``x``:
    ``y*(x) = argmax_y <e(Pi_x phi), e(Pi_y phi)>``, ``e(Pi) = Pi - center``, over the
    locations ``y`` with ``max(|dr|, |dc|) >= exclude`` (Chebyshev distance; the default
    ``exclude = P`` means the two patches do not overlap). Patches are ``C x P x P``,
    zero-extended. Ties go to the lowest flat index; a pixel with no admissible ``y``
    gets -1.

    Args:
        images: [M, C, H, W].
        P: odd patch size of the embedding.
        exclude: exclusion radius (default ``P``; 0 admits ``y = x``).
        center: [C, P, P] the embedding's centre; default the mean patch of ``images``
            (:func:`mean_patch`). To embed samples as the training set is embedded,
            pass ``mean_patch(training_images, P)``.
        tau: None for top-1 attention; a temperature > 0 for the soft version, whose
            in-degree is the column sum of the row softmax of ``<e_x, e_y> / tau``
            (``tau -> 0`` recovers the counts).
        return_in_degree: also return the in-degree (always returned with ``tau``).
        backend: ``"auto"`` (compiled kernel when available), ``"kernel"`` or ``"reference"``.

    Returns:
        ``y* [M, H, W]`` int64 (flat ``r * W + c``), or ``Attention(y_star, in_degree)``
        when ``tau`` is given or ``return_in_degree``. Not differentiable (an argmax and counts).
    """
    images, P, exclude, center, tau, backend = check_attention_args(images, P, exclude, center, tau, backend)
    center = mean_patch(images, P) if center is None else center
    if not use_kernel("patch_argmax_attention", backend, images.device):
        return reference.patch_argmax_attention_reference(images, P, exclude=exclude, center=center, tau=tau,
                                                          return_in_degree=return_in_degree)
    y_star, in_degree = torch.ops.creativity_fast.patch_argmax_attention(
        images.contiguous(), center.contiguous(), P, exclude, -1.0 if tau is None else tau)
    if tau is None and not return_in_degree:
        return y_star
    return Attention(y_star, in_degree)


def masked_local_posterior(z: torch.Tensor, data: torch.Tensor, sigma, support: MaskedSupport, *,
                           backend: str = "auto", chunk_size: Optional[int] = None):
    """Masked-local posterior mean: the local machine with a per-unit mask (docs/theory.md §3.6, §4.5).

    For every sample ``b`` and unit ``q`` (key support ``K_q`` with weights ``w``, output support ``O_q``),
    ``w_i(b, q) = softmax_i(-sum_{k in K_q} w_k sum_c (z[b,c,k] - data[i,c,k])^2 / (2 sigma_b^2))``
    over every training image ``i`` (exact, streamed), and
    ``mean[b, c, j] = sum_i w_i(b, q) data[i, c, out_index[j]]`` for the entries ``j`` of ``O_q``.

    Args:
        z: [B, C, U] queries; data: [N, C, U] training values (U units, C values per unit).
        sigma: float or [B] (> 0). A softmax temperature ``tau`` is ``sigma * sqrt(tau)``.
        support: a :class:`MaskedSupport` over the ``U`` units.
        backend: ``"auto" | "kernel" | "reference"``; chunk_size: images per chunk (reference).

    Returns:
        ``(mean [B, C, nnz_out], lse [B, Q])``. Differentiable with respect to ``z`` on every
        backend (the kernel's backward recomputes through the reference twin).
    """
    z, data, sigma, support, backend = check_masked_args(z, data, sigma, support, backend)
    if use_kernel("masked_local_posterior", backend, z.device):
        return torch.ops.creativity_fast.masked_local_posterior(z.contiguous(), data.contiguous(), sigma, *support)
    return reference.masked_local_posterior_reference(z, data, sigma, support, chunk_size=chunk_size)


# --------------------------------------------------------------------------- #
# Fake (shape-only) implementations and autograd of every operator


def _register() -> None:
    if EXTENSION_ERROR is not None:
        return
    lib = "creativity_fast::"

    def check_patch_shapes(z, data, sigma):
        torch._check(z.dim() == 4 and data.dim() == 4, lambda: "z and data must be [B, C, H, W] and [N, C, H, W]")
        torch._check(data.shape[1:] == z.shape[1:], lambda: "data must match z in C, H and W")
        torch._check(sigma.dim() == 1 and sigma.shape[0] == z.shape[0], lambda: "sigma must be [B]")

    @torch.library.register_fake(lib + "patch_posterior_mean")
    def _(z, data, sigma, P, mode, boundary, keys, key_logw, return_argmax):
        check_patch_shapes(z, data, sigma)
        B, C, H, W = z.shape
        best = z.new_empty((B, H, W) if return_argmax else (0,), dtype=torch.int64)
        return z.new_empty(z.shape), z.new_empty((B, H, W)), best

    @torch.library.register_fake(lib + "patch_posterior_mean_backward")
    def _(grad_x0, z, data, sigma, P, mode, boundary, keys, key_logw, x0_hat, lse):
        check_patch_shapes(z, data, sigma)
        torch._check(grad_x0.shape == z.shape, lambda: "grad_x0 must have z's shape")
        return torch.empty_like(z)

    @torch.library.register_fake(lib + "patch_posterior_mean_backward_lse")
    def _(grad_x0, grad_lse, z, data, sigma, P, mode, boundary, keys, key_logw, x0_hat, lse):
        check_patch_shapes(z, data, sigma)
        torch._check(grad_x0.shape == z.shape, lambda: "grad_x0 must have z's shape")
        torch._check(grad_lse.shape == lse.shape, lambda: "grad_lse must have lse's shape [B, H, W]")
        return torch.empty_like(z)

    @torch.library.register_fake(lib + "paired_patch_posterior_mean")
    def _(z, data, sigma, P, P2, query_partner, key_partner, beta, boundary, keys, return_argmax):
        check_patch_shapes(z, data, sigma)
        B, C, H, W = z.shape
        torch._check(query_partner.shape == (B, H, W), lambda: "query_partner must be [B, H, W]")
        torch._check(key_partner.shape == (data.shape[0], H, W), lambda: "key_partner must be [N, H, W]")
        best = z.new_empty((B, H, W) if return_argmax else (0,), dtype=torch.int64)
        return z.new_empty(z.shape), z.new_empty((B, H, W)), best

    @torch.library.register_fake(lib + "patch_argmax_attention")
    def _(images, center, P, exclude, tau):
        torch._check(images.dim() == 4, lambda: "images must be [M, C, H, W]")
        torch._check(center.shape == (images.shape[1], P, P), lambda: "center must be [C, P, P]")
        M, _, H, W = images.shape
        return images.new_empty((M, H, W), dtype=torch.int64), images.new_empty((M, H, W))

    @torch.library.register_fake(lib + "masked_local_posterior")
    def _(z, data, sigma, key_ptr, key_index, key_weight, out_ptr, out_index):
        torch._check(z.dim() == 3 and data.dim() == 3 and data.shape[1:] == z.shape[1:],
                     lambda: "z and data must be [B, C, U] and [N, C, U]")
        torch._check(key_ptr.shape == out_ptr.shape, lambda: "key_ptr and out_ptr must both have Q+1 entries")
        B, C, _U = z.shape
        return z.new_empty((B, C, out_index.shape[0])), z.new_empty((B, key_ptr.shape[0] - 1))

    # patch_posterior_mean: d x0_hat(x) / d Pi_x z = Cov_w(centre, key patch) / sigma^2 (docs/theory.md §4.3),
    # by a second streaming pass that reuses lse. Gradients flow to z only: data, sigma and key_logw
    # are constants of the machine.
    def setup_patch(ctx, inputs, output):
        z, data, sigma, P, mode, boundary, keys, key_logw, _ = inputs
        x0_hat, lse, _ = output
        ctx.save_for_backward(z, data, sigma, key_logw, x0_hat, lse)
        ctx.options = (P, mode, boundary, keys)

    def backward_patch(ctx, grad_x0, grad_lse, grad_best):
        # One streaming pass for both outputs (every backend registers the lse backward), with no
        # data-dependent branch, so the formula also traces under torch.compile.
        z, data, sigma, key_logw, x0_hat, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 9
        grad_x0 = torch.zeros_like(x0_hat) if grad_x0 is None else grad_x0
        grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
        grad_z = torch.ops.creativity_fast.patch_posterior_mean_backward_lse(
            grad_x0.contiguous(), grad_lse.contiguous(), z, data, sigma, *ctx.options, key_logw, x0_hat, lse)
        return grad_z, None, None, None, None, None, None, None, None

    torch.library.register_autograd(lib + "patch_posterior_mean", backward_patch, setup_context=setup_patch)

    # masked_local_posterior: the gradient with respect to z is the reference twin's, recomputed
    # (streamed again under autograd), so every backend gives the same gradient.
    def setup_masked(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward_masked(ctx, grad_mean, grad_lse):
        z, data, sigma, *support = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 8
        with torch.enable_grad():
            z_leaf = z.detach().requires_grad_(True)
            mean, lse = reference.masked_local_posterior_reference(z_leaf, data, sigma, MaskedSupport(*support))
            outputs = [(o, g) for o, g in ((mean, grad_mean), (lse, grad_lse)) if g is not None]
            (grad_z,) = torch.autograd.grad([o for o, _ in outputs], [z_leaf], [g for _, g in outputs])
        return (grad_z,) + (None,) * 7

    torch.library.register_autograd(lib + "masked_local_posterior", backward_masked, setup_context=setup_masked)

    # paired_patch_posterior_mean: the gradient with respect to z (through both distances; the
    # partners are indices, held fixed) is the reference twin's, recomputed under autograd.
    def setup_paired(ctx, inputs, output):
        z, data, sigma, P, P2, query_partner, key_partner, beta, boundary, keys, _ = inputs
        ctx.save_for_backward(z, data, sigma, query_partner, key_partner)
        ctx.options = (P, P2, beta, boundary, keys)

    def backward_paired(ctx, grad_x0, grad_lse, grad_best):
        z, data, sigma, query_partner, key_partner = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 11
        P, P2, beta, boundary, keys = ctx.options
        with torch.enable_grad():
            z_leaf = z.detach().requires_grad_(True)
            x0_hat, lse, _ = reference.paired_patch_posterior_mean_reference(
                z_leaf, data, sigma, P, P2, query_partner, key_partner, beta, boundary, keys)
            outputs = [(o, g) for o, g in ((x0_hat, grad_x0), (lse, grad_lse)) if g is not None]
            (grad_z,) = torch.autograd.grad([o for o, _ in outputs], [z_leaf], [g for _, g in outputs])
        return (grad_z,) + (None,) * 10

    torch.library.register_autograd(lib + "paired_patch_posterior_mean", backward_paired,
                                    setup_context=setup_paired)


_register()
