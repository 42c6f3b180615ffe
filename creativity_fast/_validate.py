"""Argument checks shared by every public entry point (docs/theory.md §10).

Each check raises ``ValueError`` or ``TypeError`` naming the argument and what was
expected, before any kernel runs. The C++ operators repeat the structural checks
(``csrc/op_args.h``) for callers of ``torch.ops`` that bypass this layer.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

from .dictionary import BOUNDARIES, KEY_SETS, MODES
from .op_types import MaskedSupport

BACKENDS = ("auto", "reference", "kernel")


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_patch_size(P, name: str = "P") -> int:
    if isinstance(P, bool) or not isinstance(P, int):
        if isinstance(P, torch.Tensor) and P.numel() == 1 and not P.is_floating_point():
            P = int(P)
        else:
            raise TypeError(f"{name} must be an odd positive int; got {type(P).__name__} {P!r}")
    if P <= 0 or P % 2 == 0:
        raise ValueError(f"{name} must be an odd positive int (patch size 2m+1); got {P}")
    return P


def check_finite(name: str, x: torch.Tensor, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """Raise if ``x`` holds NaN or inf; scans in chunks so a large data set costs no copy."""
    if x.numel() == 0 or x.device.type == "meta":
        return x
    rows = max(1, chunk_elements // max(1, x[0].numel())) if x.dim() else 1
    for start in range(0, x.shape[0] if x.dim() else 1, rows):
        part = x[start:start + rows] if x.dim() else x
        if not bool(torch.isfinite(part).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_images(name: str, x, *, allow_empty: bool = False, finite: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, C, H, W]; got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [N, C, H, W]; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32 or float64); got {x.dtype}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): need at least one image")
    if min(x.shape[1:]) == 0:
        raise ValueError(f"{name} has an empty channel or spatial axis: shape {tuple(x.shape)}")
    return check_finite(name, x) if finite else x


def check_sigma(sigma, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Return sigma as a ``[B]`` tensor with ``like``'s dtype and device."""
    if isinstance(sigma, torch.Tensor):
        if sigma.device != like.device:
            raise ValueError(f"sigma is on {sigma.device} but z is on {like.device}")
        if sigma.dim() == 0:
            sigma = sigma.expand(batch)
        elif sigma.shape != (batch,):
            raise ValueError(f"sigma must be a float or a [B] tensor with B={batch}; got shape {tuple(sigma.shape)}")
        sigma = sigma.to(like.dtype)
        # one device sync per call (values are needed before any kernel runs); a float
        # sigma is checked on the host below and needs none
        if not bool(((sigma > 0) & torch.isfinite(sigma)).all()):
            raise ValueError(f"sigma must be finite and > 0 everywhere; got {sigma.tolist()}")
    elif isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        # checked after rounding to z's dtype, which can overflow or flush to 0 (float32)
        rounded = torch.tensor(float(sigma), dtype=like.dtype).item()
        if not math.isfinite(rounded) or rounded <= 0:
            raise ValueError(f"sigma must be a finite value > 0 in {like.dtype}; got {sigma}")
        sigma = torch.full((batch,), rounded, dtype=like.dtype, device=like.device)
    else:
        raise TypeError(f"sigma must be a float or a [B] tensor; got {type(sigma).__name__}")
    return sigma.contiguous()


def sigma_float64(sigma, z: torch.Tensor) -> torch.Tensor:
    """``sigma`` (float, 0-d or ``[B]``) as a float64 ``[B]`` tensor on ``z``'s device, finite and > 0.

    For network denoisers, which convert in float64 whatever ``z``'s dtype.
    """
    sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).to(z.device)
    if sig.numel() == 1:
        sig = sig.expand(z.shape[0])
    if sig.numel() != z.shape[0]:
        raise ValueError(f"sigma has {sig.numel()} values for a batch of {z.shape[0]}")
    if not bool(torch.isfinite(sig).all()) or bool((sig <= 0).any()):
        raise ValueError("sigma must be finite and > 0")
    return sig


def check_query_and_data(z, data, *, allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    z = check_images("z", z, finite=False)
    data = check_images("data", data, finite=False, allow_empty=allow_empty)
    if data.device != z.device:
        raise ValueError(f"data is on {data.device} but z is on {z.device}; move them to one device")
    check_finite("z", z)
    check_finite("data", data)
    if data.shape[1:] != z.shape[1:]:
        raise ValueError(
            f"data images [N, C, H, W] = {tuple(data.shape)} do not match z [B, C, H, W] = {tuple(z.shape)} "
            "in C, H or W")
    return z, data.to(z.dtype)


def check_backend(backend) -> str:
    return check_choice("backend", backend, BACKENDS)


def check_key_logw(key_logw, mode: str, data: torch.Tensor) -> Union[torch.Tensor, None]:
    """``key_logw``: ``[N]`` for ``mode="ideal"``, ``[N, H, W]`` otherwise; -inf removes a key."""
    if key_logw is None:
        return None
    if not isinstance(key_logw, torch.Tensor) or not key_logw.is_floating_point():
        raise TypeError("key_logw must be a floating-point tensor of log prior weights")
    if key_logw.device != data.device:
        raise ValueError(f"key_logw is on {key_logw.device} but data is on {data.device}")
    N, _, H, W = data.shape
    expected = (N,) if mode == "ideal" else (N, H, W)
    if tuple(key_logw.shape) != expected:
        raise ValueError(f"key_logw must have shape {list(expected)} for mode={mode!r}; got {list(key_logw.shape)}")
    if bool(torch.isnan(key_logw).any()) or bool((key_logw == float("inf")).any()):
        raise ValueError("key_logw must not contain NaN or +inf (use -inf to remove a key)")
    return key_logw.to(data.dtype).contiguous()


def check_operator_args(z, data, sigma, P, mode, boundary, keys, key_logw, backend, *, allow_empty: bool = False):
    """All checks of ``patch_posterior_mean``; returns the normalised arguments.

    ``allow_empty``: ``data`` may hold no image (one shard of a sharded training set).
    """
    mode = check_choice("mode", mode, MODES)
    boundary = check_choice("boundary", boundary, BOUNDARIES)
    keys = check_choice("keys", keys, KEY_SETS)
    backend = check_backend(backend)
    P = check_patch_size(P)
    z, data = check_query_and_data(z, data, allow_empty=allow_empty)
    if keys == "valid":
        if mode != "els" or boundary != "circular":
            raise ValueError("keys='valid' applies only to mode='els' with boundary='circular'; "
                             f"got mode={mode!r}, boundary={boundary!r}")
        H, W = z.shape[2:]
        if P > H or P > W:
            raise ValueError(f"keys='valid' needs P <= H and P <= W (a patch that does not wrap); "
                             f"got P={P} for {H}x{W} images")
    sigma = check_sigma(sigma, z.shape[0], z)
    key_logw = check_key_logw(key_logw, mode, data)
    return z, data, sigma, P, mode, boundary, keys, key_logw, backend


def check_beta(beta) -> float:
    """The partner weight of the paired-patch machine: a finite float >= 0."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite float >= 0; got {beta!r}")
    return float(beta)


def check_partner(name: str, partner, shape: tuple, HW: int, like: torch.Tensor) -> torch.Tensor:
    """A partner map: int64 ``shape`` on ``like``'s device, entries flat locations in ``[0, HW)`` or -1 (none)."""
    if not isinstance(partner, torch.Tensor):
        raise TypeError(f"{name} must be an int64 torch.Tensor {list(shape)}; got {type(partner).__name__}")
    if partner.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor of flat locations (row * W + col); got {partner.dtype}")
    if tuple(partner.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}; got {list(partner.shape)}")
    if partner.device != like.device:
        raise ValueError(f"{name} is on {partner.device} but z is on {like.device}")
    if partner.numel() and (int(partner.min()) < -1 or int(partner.max()) >= HW):
        raise ValueError(f"{name} entries must be flat locations in [0, H*W) = [0, {HW}) or -1 (no partner); "
                         f"got values in [{int(partner.min())}, {int(partner.max())}]")
    return partner.contiguous()


def check_paired_args(z, data, sigma, P, query_partner, key_partner, beta, P2, boundary, keys, backend, *,
                      allow_empty: bool = False):
    """All checks of ``paired_patch_posterior_mean``; returns the normalised arguments
    ``(z, data, sigma [B], P, query_partner, key_partner, beta, P2, boundary, keys, backend)``."""
    z, data, sigma, P, _, boundary, keys, _, backend = check_operator_args(
        z, data, sigma, P, "els", boundary, keys, None, backend, allow_empty=allow_empty)
    P2 = P if P2 is None else check_patch_size(P2, "P2")
    beta = check_beta(beta)
    B, _, H, W = z.shape
    query_partner = check_partner("query_partner", query_partner, (B, H, W), H * W, z)
    key_partner = check_partner("key_partner", key_partner, (data.shape[0], H, W), H * W, z)
    return z, data, sigma, P, query_partner, key_partner, beta, P2, boundary, keys, backend


# --------------------------------------------------------------------------- #
# patch_argmax_attention


def check_exclude(exclude, P: int) -> int:
    """The Chebyshev exclusion radius; ``None`` means ``P`` (the two patches do not overlap)."""
    if exclude is None:
        return P
    if isinstance(exclude, bool) or not isinstance(exclude, numbers.Integral) or exclude < 0:
        raise ValueError(f"exclude must be a non-negative int (Chebyshev radius); got {exclude!r}")
    return int(exclude)


def check_tau(tau) -> Optional[float]:
    """``None`` (top-1 attention) or a finite temperature > 0."""
    if tau is None:
        return None
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be None (top-1 attention) or a finite float > 0; got {tau!r}")
    return float(tau)


def check_center(center, C: int, P: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(center, torch.Tensor):
        raise TypeError(f"center must be a torch.Tensor [C, P, P]; got {type(center).__name__}")
    if tuple(center.shape) != (C, P, P):
        raise ValueError(f"center must have shape [C, P, P] = {[C, P, P]}; got {list(center.shape)}")
    if center.device != like.device:
        raise ValueError(f"center is on {center.device} but images are on {like.device}")
    if not bool(torch.isfinite(center).all()):
        raise ValueError("center contains NaN or infinite values")
    return center.to(like.dtype)


def check_attention_args(images, P, exclude, center, tau, backend="auto"):
    """All checks of ``patch_argmax_attention``; ``center`` stays None when not given."""
    backend = check_backend(backend)
    images = check_images("images", images)
    P = check_patch_size(P)
    exclude = check_exclude(exclude, P)
    tau = check_tau(tau)
    if center is not None:
        center = check_center(center, images.shape[1], P, images)
    return images, P, exclude, center, tau, backend


# --------------------------------------------------------------------------- #
# masked_local_posterior


def check_masked_support(support: MaskedSupport, U: int) -> None:
    if not isinstance(support, MaskedSupport):
        raise TypeError(f"support must be a MaskedSupport; got {type(support).__name__}")
    for name in ("key_ptr", "key_index", "out_ptr", "out_index"):
        t = getattr(support, name)
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.int64:
            raise TypeError(f"support.{name} must be a 1-D int64 tensor")
    if support.key_ptr.numel() < 1 or support.key_ptr.shape != support.out_ptr.shape:
        raise ValueError("support.key_ptr and support.out_ptr must both have Q+1 entries")
    if support.key_weight.shape != support.key_index.shape:
        raise ValueError("support.key_weight must have one weight per key index")
    for ptr, idx, name in ((support.key_ptr, support.key_index, "key"), (support.out_ptr, support.out_index, "out")):
        if int(ptr[0]) != 0 or int(ptr[-1]) != idx.numel() or bool((ptr[1:] < ptr[:-1]).any()):
            raise ValueError(f"support.{name}_ptr must rise from 0 to len({name}_index)")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= U):
            raise ValueError(f"support.{name}_index must lie in [0, {U})")
    if not bool(torch.isfinite(support.key_weight).all()) or bool((support.key_weight < 0).any()):
        raise ValueError("support.key_weight must be finite and >= 0")


def check_masked_args(z, data, sigma, support: MaskedSupport, backend):
    """All checks of ``masked_local_posterior``; returns ``(z, data, sigma [B], support, backend)``."""
    backend = check_backend(backend)
    if not isinstance(z, torch.Tensor) or not isinstance(data, torch.Tensor) or z.dim() != 3 or data.dim() != 3:
        raise ValueError("z must be [B, C, U] and data [N, C, U] tensors")
    if not z.is_floating_point():
        raise TypeError(f"z must be floating point; got {z.dtype}")
    if data.shape[0] == 0:
        raise ValueError("data is empty: need at least one training image")
    if data.shape[1:] != z.shape[1:]:
        raise ValueError(f"data [N, C, U] = {tuple(data.shape)} does not match z [B, C, U] = {tuple(z.shape)}")
    if data.device != z.device:
        raise ValueError(f"data is on {data.device} but z is on {z.device}")
    check_finite("z", z)
    check_finite("data", data)
    check_masked_support(support, z.shape[2])
    sigma = check_sigma(sigma, z.shape[0], z)
    return z, data.to(z.dtype), sigma, support.to(dtype=z.dtype, device=z.device), backend
