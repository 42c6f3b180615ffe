"""Noise schedules and patch-size schedules (docs/theory.md §2 and §5).

Everything is in sigma space (variance exploding): ``z = x0 + sigma * eps``.
A noise schedule is a decreasing tensor ``sigmas [n+1]`` whose last entry is 0;
step ``i`` of a sampler goes from ``sigmas[i]`` to ``sigmas[i+1]``.

The ELS paper (Kamb & Ganguli 2025) trains and samples on the cosine
variance-preserving (VP) schedule ``abar(t) = cos^2(pi t / s)`` with ``s = 2.016``.
A VP state ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` is the sigma-space state
``z = x_t / sqrt(abar)`` with ``sigma^2 = (1 - abar) / abar`` (docs/theory.md §2); for the
cosine schedule this is simply ``sigma = tan(pi t / s)``. The helpers
:func:`sigma_to_abar`, :func:`abar_to_sigma`, :func:`sigma_to_t` and
:func:`t_to_sigma` convert between the three parametrisations, e.g. to wrap an
eps-prediction network trained on the VP schedule as a sigma-space denoiser::

    x_t = z * sigma_to_abar(sigma).sqrt()[:, None, None, None]
    eps_hat = net(x_t, sigma_to_t(sigma))
    x0_hat = z - sigma[:, None, None, None] * eps_hat

Discrete-time models (DDPM, DDIM and the diffusers schedulers) index their noise
levels by an integer timestep ``t = 0 .. T-1`` with a table ``alphas_cumprod [T]``:
:func:`discrete_sigmas` turns the table into ``sigmas [T]`` and
:func:`discrete_sigma_to_t` / :func:`discrete_t_to_sigma` interpolate between them
piecewise linearly in ``log sigma`` (docs/theory.md §11). :func:`eps_to_x0`,
:func:`v_to_x0` and :func:`edm_preconditioning` are the output parametrisations.

A *patch-size schedule* gives the ELS patch size ``P`` per sampling step: see
:func:`patch_sizes_for_steps` and :class:`PatchSchedule`.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Sequence, Union

import torch

__all__ = [
    "COSINE_S",
    "karras_sigmas",
    "cosine_vp_sigmas",
    "sigma_to_abar",
    "abar_to_sigma",
    "sigma_to_t",
    "t_to_sigma",
    "ddpm_linear_alphas_cumprod",
    "discrete_sigmas",
    "discrete_sigma_to_t",
    "discrete_t_to_sigma",
    "eps_to_x0",
    "x0_to_eps",
    "v_to_x0",
    "x0_to_v",
    "edm_preconditioning",
    "PUBLISHED_PATCH_SCHEDULES",
    "PATCH_SCHEDULE_ALIASES",
    "published_patch_schedule",
    "published_schedule_names",
    "patch_sizes_for_steps",
    "resample_steps",
    "PatchSchedule",
]

#: The constant of the ELS paper's cosine schedule ``abar(t) = cos^2(pi t / 2.016)``.
COSINE_S = 2.016

SigmaLike = Union[float, torch.Tensor]


# --------------------------------------------------------------------------- #
# argument checks
# --------------------------------------------------------------------------- #

def _check_n(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a positive int; got {type(n).__name__} {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"{name} must be a positive int (number of steps); got {n}")
    return n


def _check_real(x, name: str, *, positive: bool = True) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(x).__name__} {x!r}")
    x = float(x)
    if not math.isfinite(x) or (positive and x <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}; got {x}")
    return x


def _check_s(s) -> float:
    s = _check_real(s, "s")
    if s <= 2.0:
        raise ValueError(f"s must be > 2 so that abar(1) = cos^2(pi / s) > 0; got {s}")
    return s


def _finalize(sigmas64: torch.Tensor, dtype, device) -> torch.Tensor:
    return sigmas64.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------- #
# noise schedules
# --------------------------------------------------------------------------- #

def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
                  dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Karras et al. (2022) schedule, their Eq. (5), with a final 0 appended.

    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0 .. n-1``, then ``sigma_n = 0`` (for ``n = 1`` only ``sigma_max``).

    Returns:
        sigmas: ``[n+1]``, strictly decreasing, ``sigmas[0] = sigma_max``,
        ``sigmas[n-1] = sigma_min`` (``n >= 2``), ``sigmas[n] = 0``.
    """
    n = _check_n(n)
    sigma_min = _check_real(sigma_min, "sigma_min")
    sigma_max = _check_real(sigma_max, "sigma_max")
    rho = _check_real(rho, "rho")
    if n >= 2 and not sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max; got sigma_min={sigma_min}, sigma_max={sigma_max}")
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return _finalize(sigmas, dtype, device)


def cosine_vp_sigmas(n: int, s: float = COSINE_S, *, dtype: torch.dtype = torch.float32,
                     device=None) -> torch.Tensor:
    """The ELS paper's cosine VP schedule in sigma space.

    ``abar(t) = cos^2(pi t / s)`` on the uniform grid ``t_i = i / n``; with
    ``sigma^2 = (1 - abar) / abar`` (docs/theory.md §2) this is ``sigma(t) = tan(pi t / s)``.
    Ordered from ``t = 1`` (``sigma = tan(pi / 2.016) ~= 80.2``) down to ``t = 0``
    (``sigma = 0``).

    Returns:
        sigmas: ``[n+1]``, strictly decreasing, last entry 0.
    """
    n = _check_n(n)
    s = _check_s(s)
    t = torch.arange(n, -1, -1, dtype=torch.float64) / n
    sigmas = torch.tan(math.pi * t / s)
    sigmas[-1] = 0.0
    return _finalize(sigmas, dtype, device)


# --------------------------------------------------------------------------- #
# VP <-> VE conversions (cosine schedule)
# --------------------------------------------------------------------------- #

def _as_tensor_or_float(x, name: str):
    """Return (value, is_tensor). Python reals stay floats; anything else becomes a tensor."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        return x, True
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return float(x), False
    try:
        t = torch.as_tensor(x)
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
        raise TypeError(f"{name} must be a float or a tensor; got {type(x).__name__}") from exc
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t, True


def _check_range(x, is_tensor: bool, name: str, lo: float, hi: float, lo_open: bool, hi_open: bool,
                 what: str) -> None:
    if is_tensor:
        if x.numel() == 0:
            return
        bad_lo = (x <= lo) if lo_open else (x < lo)
        bad_hi = (x >= hi) if hi_open else (x > hi)
        bad = bad_lo | bad_hi | torch.isnan(x)
        if bool(bad.any()):
            raise ValueError(f"{name} must be {what}; got values in [{x.min().item()}, {x.max().item()}]")
    else:
        ok = (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
        if not ok:
            raise ValueError(f"{name} must be {what}; got {x}")


def sigma_to_abar(sigma: SigmaLike) -> SigmaLike:
    """``abar = 1 / (1 + sigma^2)`` (docs/theory.md §2: ``sigma^2 = (1 - abar) / abar``).

    Args:
        sigma: float or tensor of any shape, ``>= 0``.
    Returns: same type and shape, in ``(0, 1]``.
    """
    x, is_t = _as_tensor_or_float(sigma, "sigma")
    _check_range(x, is_t, "sigma", 0.0, math.inf, False, False, "finite and >= 0")
    return 1.0 / (1.0 + x * x)


def abar_to_sigma(abar: SigmaLike) -> SigmaLike:
    """``sigma = sqrt((1 - abar) / abar)`` (docs/theory.md §2).

    Args:
        abar: float or tensor of any shape, in ``(0, 1]``.
    Returns: same type and shape, ``>= 0``.
    """
    x, is_t = _as_tensor_or_float(abar, "abar")
    _check_range(x, is_t, "abar", 0.0, 1.0, True, False, "in (0, 1]")
    if is_t:
        return torch.sqrt((1.0 - x) / x)
    return math.sqrt((1.0 - x) / x)


def t_to_sigma(t: SigmaLike, s: float = COSINE_S) -> SigmaLike:
    """Cosine schedule time to sigma: ``abar(t) = cos^2(pi t / s)`` so ``sigma = tan(pi t / s)``.

    Args:
        t: float or tensor of any shape, in ``[0, s/2)`` (the schedule uses ``[0, 1]``).
    Returns: same type and shape.
    """
    s = _check_s(s)
    x, is_t = _as_tensor_or_float(t, "t")
    _check_range(x, is_t, "t", 0.0, s / 2.0, False, True, f"in [0, s/2) = [0, {s / 2})")
    if is_t:
        return torch.tan(math.pi * x / s)
    return math.tan(math.pi * x / s)


def sigma_to_t(sigma: SigmaLike, s: float = COSINE_S) -> SigmaLike:
    """Inverse of :func:`t_to_sigma`: ``t = (s / pi) * atan(sigma)``.

    Args:
        sigma: float or tensor of any shape, ``>= 0``.
    Returns: same type and shape, in ``[0, s/2)``; ``t = 1`` at ``sigma = tan(pi / s)``.
    """
    s = _check_s(s)
    x, is_t = _as_tensor_or_float(sigma, "sigma")
    _check_range(x, is_t, "sigma", 0.0, math.inf, False, True, "finite and >= 0")
    if is_t:
        return (s / math.pi) * torch.atan(x)
    return (s / math.pi) * math.atan(x)


# --------------------------------------------------------------------------- #
# discrete-time schedules and network parametrisations (docs/theory.md §11)
# --------------------------------------------------------------------------- #

def ddpm_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                               beta_end: float = 0.02) -> torch.Tensor:
    """``alphas_cumprod [T]`` of DDPM's linear beta schedule (float64).

    ``beta_t = beta_start + t/(T-1) (beta_end - beta_start)``, ``abar_t = prod_{s<=t} (1 - beta_s)``;
    the defaults are DDPM's (Ho et al. 2020) and diffusers' ``DDPMScheduler``'s.
    """
    n = _check_n(num_train_timesteps, "num_train_timesteps")
    beta_start = _check_real(beta_start, "beta_start")
    beta_end = _check_real(beta_end, "beta_end")
    if not (beta_start < 1 and beta_end < 1):
        raise ValueError(f"betas must be < 1; got beta_start={beta_start}, beta_end={beta_end}")
    betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def discrete_sigmas(alphas_cumprod) -> torch.Tensor:
    """``sigmas [T]`` (float64, increasing with t) of a discrete schedule ``alphas_cumprod [T]``.

    ``sigma_t = sqrt((1 - abar_t) / abar_t)`` (:func:`abar_to_sigma`). The table must be
    strictly decreasing in ``(0, 1)``, so that the sigmas are strictly increasing and positive.
    """
    try:
        abar = torch.as_tensor(alphas_cumprod).detach().to(device="cpu", dtype=torch.float64)
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
        raise TypeError(f"alphas_cumprod must be a 1-D tensor or sequence of floats; "
                        f"got {type(alphas_cumprod).__name__}") from exc
    if abar.dim() != 1 or abar.numel() < 2:
        raise ValueError(f"alphas_cumprod must be 1-D with at least 2 entries; got shape {tuple(abar.shape)}")
    _check_range(abar, True, "alphas_cumprod", 0.0, 1.0, True, True, "in (0, 1) (exclusive)")
    if not bool((abar[1:] < abar[:-1]).all()):
        raise ValueError("alphas_cumprod must be strictly decreasing in t")
    return abar_to_sigma(abar)


def discrete_sigma_to_t(sigma: SigmaLike, sigmas: torch.Tensor) -> SigmaLike:
    """Fractional timestep of ``sigma`` on a discrete schedule ``sigmas [T]`` (increasing).

    Piecewise linear in ``log sigma`` between neighbouring timesteps, as k-diffusion's
    ``DiscreteSchedule.sigma_to_t``: for ``sigmas[i] <= sigma <= sigmas[i+1]``,
    ``t = i + (log sigma - log sigmas[i]) / (log sigmas[i+1] - log sigmas[i])``. Clamped at
    the ends: ``sigma <= sigmas[0]`` (``sigma = 0`` included) gives ``t = 0``,
    ``sigma >= sigmas[T-1]`` gives ``t = T - 1``. ``sigma_t`` maps to ``t`` exactly.

    Args:
        sigma: float or tensor of any shape, ``>= 0``.
        sigmas: ``[T]``, e.g. :func:`discrete_sigmas` of a scheduler's ``alphas_cumprod``.
    Returns: same type and shape (a tensor in float64).
    """
    x, is_t = _as_tensor_or_float(sigma, "sigma")
    _check_range(x, is_t, "sigma", 0.0, math.inf, False, False, ">= 0")
    table = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if table.dim() != 1 or table.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries; got shape {tuple(table.shape)}")
    log_table = table.log()
    xs = torch.as_tensor(x, dtype=torch.float64)
    device = xs.device
    log_x = xs.detach().cpu().log().clamp(min=log_table[0].item(), max=log_table[-1].item())
    low = (torch.searchsorted(log_table, log_x.contiguous(), right=True) - 1).clamp(0, table.numel() - 2)
    lo, hi = log_table[low], log_table[low + 1]
    t = low.to(torch.float64) + ((log_x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return t.to(device) if is_t else float(t)


def discrete_t_to_sigma(t: SigmaLike, sigmas: torch.Tensor) -> SigmaLike:
    """Inverse of :func:`discrete_sigma_to_t`: ``log sigma`` linear between the integer timesteps.

    Args:
        t: float or tensor of any shape, in ``[0, T-1]``.
        sigmas: ``[T]`` increasing.
    Returns: same type and shape (a tensor in float64).
    """
    x, is_t = _as_tensor_or_float(t, "t")
    table = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if table.dim() != 1 or table.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries; got shape {tuple(table.shape)}")
    _check_range(x, is_t, "t", 0.0, table.numel() - 1.0, False, False, f"in [0, {table.numel() - 1}]")
    xs = torch.as_tensor(x, dtype=torch.float64)
    device = xs.device
    xs = xs.detach().cpu()
    low = xs.floor().long().clamp(0, table.numel() - 2)
    w = xs - low.to(torch.float64)
    log_table = table.log()
    out = ((1.0 - w) * log_table[low] + w * log_table[low + 1]).exp()
    return out.to(device) if is_t else float(out)


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``sigma`` (0-d or ``[B]``) broadcast over ``like [B, ...]``."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.dim() == 1 and like.dim() > 1:
        sigma = sigma.reshape(-1, *([1] * (like.dim() - 1)))
    return sigma


def eps_to_x0(z: torch.Tensor, sigma, eps: torch.Tensor) -> torch.Tensor:
    """``x0 = z - sigma * eps`` for a sigma-space state ``z = x0 + sigma * eps`` (docs/theory.md §2).

    With ``x_t = sqrt(abar) z`` this is the VP formula ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``.
    ``sigma``: float, 0-d or ``[B]`` tensor.
    """
    return z - _bcast(sigma, z) * eps


def x0_to_eps(z: torch.Tensor, sigma, x0: torch.Tensor) -> torch.Tensor:
    """``eps = (z - x0) / sigma`` (inverse of :func:`eps_to_x0`; ``sigma > 0``)."""
    return (z - x0) / _bcast(sigma, z)


def v_to_x0(z: torch.Tensor, sigma, v: torch.Tensor) -> torch.Tensor:
    """``x0`` from a v-prediction ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022).

    ``x0 = sqrt(abar) x_t - sqrt(1 - abar) v`` with ``x_t = sqrt(abar) z``, i.e.
    ``x0 = abar z - sqrt(1 - abar) v``, ``abar = 1 / (1 + sigma^2)``, ``sqrt(1 - abar) = sigma sqrt(abar)``.
    """
    s = _bcast(sigma, z)
    abar = 1.0 / (1.0 + s * s)
    return abar * z - s * abar.sqrt() * v


def x0_to_v(z: torch.Tensor, sigma, x0: torch.Tensor) -> torch.Tensor:
    """``v = sqrt(abar) eps - sqrt(1 - abar) x0`` with ``eps = (z - x0) / sigma`` (inverse of :func:`v_to_x0`)."""
    s = _bcast(sigma, z)
    abar = 1.0 / (1.0 + s * s)
    return abar.sqrt() * ((z - x0) / s - s * x0)


def edm_preconditioning(sigma, sigma_data: float = 0.5):
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` (Karras et al. 2022, Table 1).

    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = log(sigma) / 4``; the denoiser is
    ``x0 = c_skip z + c_out F(c_in z, c_noise)``. ``sigma``: float or tensor (> 0 for ``c_noise``).
    """
    sd = _check_real(sigma_data, "sigma_data")
    x, is_t = _as_tensor_or_float(sigma, "sigma")
    _check_range(x, is_t, "sigma", 0.0, math.inf, False, True, "finite and >= 0")
    if is_t:
        root = torch.sqrt(x * x + sd * sd)
        return sd * sd / (x * x + sd * sd), x * sd / root, 1.0 / root, torch.log(x) / 4.0
    root = math.sqrt(x * x + sd * sd)
    return sd * sd / (x * x + sd * sd), x * sd / root, 1.0 / root, (math.log(x) / 4.0 if x > 0 else -math.inf)


# --------------------------------------------------------------------------- #
# patch-size schedules
# --------------------------------------------------------------------------- #

#: Patch sizes fitted by Kamb & Ganguli (2025) to their trained networks, one per step of
#: a 20-step cosine schedule, listed from LOW noise to HIGH noise (the order of the paper
#: and its released code). Names are ``<data set>_<network>_<padding>``; the machine's
#: ``boundary`` should match the padding (docs/calibration.md). They were fitted at
#: 32 x 32 (every set resized). :func:`patch_sizes_for_steps` reverses them into sampling order.
PUBLISHED_PATCH_SCHEDULES: Dict[str, List[int]] = {
    "mnist_resnet_zeros": [3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 11, 11, 13, 15, 15, 15, 15, 15],
    "mnist_resnet_circular": [3, 3, 5, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 11, 9, 9, 7, 7, 3, 3],
    "mnist_unet_zeros": [3, 3, 3, 5, 5, 7, 7, 7, 9, 9, 9, 11, 13, 15, 17, 21, 23, 23, 25, 27],
    "fashion_mnist_resnet_zeros": [3, 3, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 13, 13, 13, 15, 15, 15, 17, 17],
    "fashion_mnist_unet_zeros": [3, 3, 5, 5, 7, 7, 7, 9, 11, 11, 11, 13, 15, 15, 21, 23, 25, 25, 25, 25],
    "cifar10_resnet_zeros": [3, 3, 3, 3, 5, 5, 5, 7, 7, 7, 7, 9, 9, 11, 11, 13, 15, 17, 17, 17],
    "cifar10_resnet_circular": [3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15, 15],
    "cifar10_unet_zeros": [3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7, 9, 9, 11, 13, 13, 15, 17, 25],
    "celeba_resnet_zeros": [3, 3, 3, 5, 5, 5, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 13, 15, 19, 19],
    "celeba_unet_zeros": [3, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5, 5, 7, 7, 9, 9, 9, 13, 19, 27],
}

#: Short names kept from earlier versions: each is the ResNet / zero-padding schedule of its data set.
PATCH_SCHEDULE_ALIASES: Dict[str, str] = {
    "mnist": "mnist_resnet_zeros",
    "fashion_mnist": "fashion_mnist_resnet_zeros",
}


def published_patch_schedule(name: str) -> Optional[List[int]]:
    """The published schedule ``name`` (or alias; case, ``-`` and spaces ignored), LOW to HIGH noise;
    None when ``name`` is not one."""
    key = _normalise_name(name)
    key = PATCH_SCHEDULE_ALIASES.get(key, key)
    sizes = PUBLISHED_PATCH_SCHEDULES.get(key)
    return None if sizes is None else list(sizes)


def published_schedule_names() -> List[str]:
    """Every name :func:`published_patch_schedule` accepts: the ten schedules, then the aliases."""
    return list(PUBLISHED_PATCH_SCHEDULES) + list(PATCH_SCHEDULE_ALIASES)


def _check_odd(p, where: str) -> int:
    if isinstance(p, bool):
        raise TypeError(f"{where} must be an odd positive int; got {p!r}")
    if isinstance(p, torch.Tensor) and p.numel() == 1 and not p.is_floating_point():
        p = p.item()
    if not isinstance(p, numbers.Integral):
        raise TypeError(f"{where} must be an odd positive int; got {type(p).__name__} {p!r}")
    p = int(p)
    if p <= 0 or p % 2 == 0:
        raise ValueError(f"{where} must be an odd positive int (patch size 2m+1); got {p}")
    return p


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def resample_steps(values: Sequence[int], n_steps: int) -> List[int]:
    """Resample a per-step list (sampling order) to ``n_steps`` steps, nearest by relative position.

    Step ``j`` of ``n_steps`` covers the fraction ``[j, j+1) / n_steps`` of the trajectory
    (on the uniform-``t`` cosine schedule: ``t`` from ``1 - j/n_steps`` down to
    ``1 - (j+1)/n_steps``). It takes the entry ``k = floor((j + 1/2) * L / n_steps)`` of the
    ``L``-step list: the step whose interval contains the middle of step ``j``, i.e. the
    one nearest in relative position (on an exact boundary, the later one). The map
    ``j -> k`` is non-decreasing, so a monotone list stays monotone; ``n_steps == L``
    returns the list unchanged, ``n_steps == 2L`` repeats every entry twice.
    """
    L = len(values)
    if L == 0:
        raise ValueError("values is empty")
    n_steps = _check_n(n_steps, "n_steps")
    return [int(values[min(L - 1, ((2 * j + 1) * L) // (2 * n_steps))]) for j in range(n_steps)]


def patch_sizes_for_steps(spec, n_steps: int) -> List[int]:
    """One odd patch size ``P`` per sampling step, in SAMPLING order (step 0 = highest noise).

    Args:
        spec: one of
            - an ``int``: the same ``P`` at every step;
            - a list/tuple (or 1-D tensor) of ints, one per step in sampling order;
              its length must equal ``n_steps``;
            - a comma-separated string of ints (``"15,13,...,3"``), read like a list;
              a single int (``"7"``) means a constant;
            - the name of a published schedule (``"fashion_mnist_resnet_zeros"``, ...; see
              :data:`PUBLISHED_PATCH_SCHEDULES`, and the aliases ``"mnist"`` and
              ``"fashion_mnist"`` of :data:`PATCH_SCHEDULE_ALIASES`). These are stored low-to-high noise for
              20 steps; they are reversed into sampling order and, for
              ``n_steps != 20``, resampled by relative position (nearest; see
              :func:`resample_steps`).
        n_steps: number of sampling steps (``len(sigmas) - 1``).

    Returns:
        ``list[int]`` of length ``n_steps``.
    """
    n_steps = _check_n(n_steps, "n_steps")
    if isinstance(spec, torch.Tensor):
        if spec.dim() == 0:
            spec = spec.item()
        elif spec.dim() == 1:
            spec = spec.tolist()
        else:
            raise ValueError(f"spec must be an int, a 1-D list of ints, a string or a schedule name; "
                             f"got a tensor of shape {tuple(spec.shape)}")
    if isinstance(spec, str):
        low_to_high = published_patch_schedule(spec)
        if low_to_high is not None:
            return resample_steps(low_to_high[::-1], n_steps)
        parts = [p.strip() for p in spec.split(",")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"spec {spec!r} is neither a published patch schedule "
                f"({', '.join(map(repr, published_schedule_names()))}) nor a comma-separated list of "
                "odd ints") from None
        if len(values) == 1:
            return [_check_odd(values[0], "spec")] * n_steps
        spec = values
    if isinstance(spec, (list, tuple)):
        if len(spec) != n_steps:
            raise ValueError(f"spec lists {len(spec)} patch sizes but n_steps = {n_steps}: "
                             "give one per sampling step (highest noise first)")
        return [_check_odd(p, f"spec[{i}]") for i, p in enumerate(spec)]
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        return [_check_odd(spec, "spec")] * n_steps
    raise TypeError(f"spec must be an odd int, a list of odd ints, a comma-separated string or one of "
                    f"{', '.join(map(repr, published_schedule_names()))}; got {type(spec).__name__} {spec!r}")


def _check_sigmas_1d(sigmas) -> torch.Tensor:
    if isinstance(sigmas, torch.Tensor):
        s = sigmas.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            s = torch.as_tensor(sigmas, dtype=torch.float64)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"sigmas must be a 1-D tensor or sequence of floats; got {type(sigmas).__name__}") from exc
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D schedule [n+1] with at least 2 entries (one step); "
                         f"got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("sigmas must be finite")
    if not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing (highest noise first); got {s.tolist()}")
    if not bool((s[:-1] > 0).all()) or s[-1].item() < 0:
        raise ValueError(f"sigmas must be > 0 except the last entry, which may be 0; got {s.tolist()}")
    return s


class PatchSchedule:
    """Patch size as a function of sigma, for machines called by a sampler.

    Built from the sampler's ``sigmas [n+1]`` and a per-step spec (anything
    :func:`patch_sizes_for_steps` accepts). ``schedule(sigma)`` returns the ``P`` of the
    step whose starting sigma ``sigmas[i]`` (``i < n``) is nearest to ``sigma`` in log
    space (ties go to the earlier, noisier step). Consequences:

    - every first denoiser call of step ``i`` (at ``sigmas[i]``) gets ``sizes[i]``;
    - Heun's second evaluation at ``sigmas[i+1]`` gets the *next* step's size
      ``sizes[i+1]``;
    - ``sigma <= 0`` and any sigma below the last nonzero ``sigmas[n-1]`` map to the
      last step; sigmas above ``sigmas[0]`` map to step 0.

    Args:
        sigmas: ``[n+1]`` strictly decreasing, positive except possibly the last.
        sizes: per-step spec, e.g. ``"fashion_mnist"``, ``7`` or ``[15, 11, 7, 3]``.

    ``sigma`` may be a float or a tensor (0-d, or ``[B]`` with one common value).
    """

    def __init__(self, sigmas, sizes) -> None:
        s = _check_sigmas_1d(sigmas)
        n = s.numel() - 1
        self.sigmas = s
        self.sizes: List[int] = patch_sizes_for_steps(sizes, n)
        self._log_sigmas = torch.log(s[:n])

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> int:
        return self.sizes[i]

    def __repr__(self) -> str:
        return f"PatchSchedule(n_steps={len(self.sizes)}, sizes={self.sizes})"

    def step_index(self, sigma: SigmaLike) -> int:
        """Index of the step whose sigma is nearest to ``sigma`` in log space (see class doc)."""
        if isinstance(sigma, torch.Tensor):
            if sigma.numel() == 0:
                raise ValueError("sigma is an empty tensor")
            flat = sigma.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
            if not bool((flat == flat[0]).all()):
                raise ValueError(f"sigma must hold one common value for a patch-size lookup; "
                                 f"got {flat.tolist()}")
            value = flat[0].item()
        elif isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
            value = float(sigma)
        else:
            raise TypeError(f"sigma must be a float or a tensor; got {type(sigma).__name__}")
        if math.isnan(value) or value < 0:
            raise ValueError(f"sigma must be >= 0; got {value}")
        n = len(self.sizes)
        if value == 0.0:
            return n - 1
        if math.isinf(value):
            return 0
        dist = (self._log_sigmas - math.log(value)).abs()
        return int(torch.argmin(dist).item())  # first minimum: ties go to the noisier step

    def __call__(self, sigma: SigmaLike) -> int:
        """Patch size ``P`` for ``sigma``."""
        return self.sizes[self.step_index(sigma)]
