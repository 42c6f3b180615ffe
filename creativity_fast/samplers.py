"""Samplers for sigma-space denoisers (docs/theory.md §5), in the style of k-diffusion's ``sampling.py``.

Conventions (docs/theory.md §2): variance-exploding noise ``z = x0 + sigma * eps``. A denoiser is
any callable ``denoiser(z, sigma, **extra) -> x0_hat`` returning the posterior-mean
estimate of the clean image; the samplers pass ``sigma`` as a tensor ``[B]`` (one
value per sample, ``z``'s dtype and device) and ``extra_args`` as keyword arguments.
From ``x0_hat``::

    score   = (x0_hat - z) / sigma^2         (grad_z log p_sigma(z))
    eps_hat = (z - x0_hat) / sigma
    dz/dsigma = (z - x0_hat) / sigma          (probability-flow ODE, Karras et al. 2022 Eq. 4)

Every sampler has the signature::

    sample_x(denoiser, z, sigmas, *, generator=None, callback=None, progress=True,
             extra_args=None) -> z_final

- ``z: [B, C, H, W]`` is the initial state at ``sigmas[0]`` (e.g. from
  :func:`initial_noise`), ``sigmas: [n+1]`` strictly decreasing, positive except the
  last entry, which is usually 0 (see :mod:`creativity_fast.schedules`).
- Step ``i`` goes from ``sigmas[i]`` to ``sigmas[i+1]``. A step to ``sigma' = 0``
  returns ``x0_hat`` exactly, for every sampler.
- ``generator``: ``None`` (global RNG), one ``torch.Generator``, or a list of ``B``
  generators. With a list, sample ``b`` draws its noise only from ``generator[b]``, so
  a sample does not depend on the batch it ran in (given a per-sample denoiser).
- ``callback(info)`` is called after each step with
  ``info = {"i", "sigma", "sigma_next", "z", "x0_hat"}``: the step index, its two
  sigmas (floats), the state *after* the step and the ``x0_hat`` the step used (for
  Heun, the one at ``sigma``).
- ``progress=True`` shows a tqdm bar.

Samplers run under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from .schedules import _check_sigmas_1d

__all__ = [
    "randn_per_sample",
    "initial_noise",
    "ancestral_step",
    "sample_ddim",
    "sample_euler_maruyama",
    "sample_heun",
    "SAMPLERS",
    "get_sampler",
]

GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]


def _trange(n: int, progress: bool):
    try:
        from tqdm.auto import trange
    except ImportError:  # pragma: no cover - tqdm is a dependency, but keep sampling without it
        return range(n)
    return trange(n, disable=not progress)


# --------------------------------------------------------------------------- #
# noise
# --------------------------------------------------------------------------- #

def _check_generator(generator, batch: Optional[int]) -> GeneratorArg:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)):
        gens = list(generator)
        for b, g in enumerate(gens):
            if not isinstance(g, torch.Generator):
                raise TypeError(f"generator[{b}] must be a torch.Generator; got {type(g).__name__}")
        if batch is not None and len(gens) != batch:
            raise ValueError(f"generator is a list of {len(gens)} generators but the batch has "
                             f"B = {batch} samples: give one generator per sample")
        return gens
    raise TypeError("generator must be None, a torch.Generator or a list of B torch.Generators; "
                    f"got {type(generator).__name__}")


def randn_per_sample(shape: Sequence[int], generator: GeneratorArg = None, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise ``[B, ...]`` with per-sample generators.

    Args:
        shape: ``(B, ...)``, e.g. ``(B, C, H, W)``.
        generator: ``None`` (global RNG), one ``torch.Generator`` (used for the whole
            tensor), or a list of ``B`` generators: row ``b`` is
            ``torch.randn(shape[1:], generator=generator[b])``, so it depends only on
            ``generator[b]``'s state, not on ``B`` or the other rows.
        device, dtype: of the result. Noise is drawn on each generator's own device
            and moved, so CPU generators give the same numbers for any ``device``.

    Returns:
        ``xi: shape``, i.i.d. ``N(0, 1)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise ValueError("shape must have a leading batch dimension (B, ...); got ()")
    generator = _check_generator(generator, shape[0])
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    if shape[0] == 0:
        return torch.empty(shape, device=device, dtype=dtype)
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype).to(device) for g in generator]
    return torch.stack(rows)


def initial_noise(seeds: Sequence[int], shape_chw: Sequence[int], sigma_max: float, *,
                  dtype: torch.dtype = torch.float32, device=None
                  ) -> Tuple[torch.Tensor, List[torch.Generator]]:
    """Initial states ``z = sigma_max * xi`` with one CPU generator per seed.

    Each seed gets ``torch.Generator().manual_seed(seed)``; sample ``b``'s initial noise
    is its generator's first draw. Pass the returned generators to the sampler so that
    its later noise continues the same per-sample streams (a seed gives the same
    sample alone or in any batch).

    Args:
        seeds: ``B`` ints (a list, tuple, range or 1-D integer tensor).
        shape_chw: ``(C, H, W)``.
        sigma_max: the first sigma of the schedule (``sigmas[0]``).

    Returns:
        ``(z [B, C, H, W], generators list[B])``.
    """
    if isinstance(seeds, torch.Tensor):
        if seeds.dim() != 1 or seeds.is_floating_point():
            raise ValueError(f"seeds must be a 1-D sequence of ints; got a tensor of shape "
                             f"{tuple(seeds.shape)} and dtype {seeds.dtype}")
        seeds = seeds.tolist()
    if isinstance(seeds, (numbers.Integral, str, bytes)) or not isinstance(seeds, (Sequence, range)):
        raise TypeError(f"seeds must be a sequence of ints, one per sample (e.g. [0] or range(8)); "
                        f"got {type(seeds).__name__} {seeds!r}")
    seeds = list(seeds)
    if len(seeds) == 0:
        raise ValueError("seeds is empty: give one int seed per sample")
    for b, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"seeds[{b}] must be an int; got {type(s).__name__} {s!r}")
        if not 0 <= int(s) < 2 ** 64:
            raise ValueError(f"seeds[{b}] must be in [0, 2**64); got {s}")
    shape_chw = tuple(shape_chw)
    if len(shape_chw) != 3 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0
                                  for d in shape_chw):
        raise ValueError(f"shape_chw must be three positive ints (C, H, W); got {shape_chw}")
    if isinstance(sigma_max, torch.Tensor):
        if sigma_max.numel() != 1:
            raise ValueError(f"sigma_max must be a single value; got shape {tuple(sigma_max.shape)}")
        sigma_max = sigma_max.item()
    if isinstance(sigma_max, bool) or not isinstance(sigma_max, numbers.Real):
        raise TypeError(f"sigma_max must be a float; got {type(sigma_max).__name__}")
    sigma_max = float(sigma_max)
    if not math.isfinite(sigma_max) or sigma_max <= 0:
        raise ValueError(f"sigma_max must be finite and > 0; got {sigma_max}")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    xi = randn_per_sample((len(seeds),) + tuple(int(d) for d in shape_chw), generators, device, dtype)
    return xi * sigma_max, generators


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> Tuple[float, float]:
    """Split a step ``sigma -> sigma'`` into a deterministic and a noise part.

    ``sigma_up = min(sigma', eta * sigma' * sqrt(sigma^2 - sigma'^2) / sigma)``,
    ``sigma_down = sqrt(sigma'^2 - sigma_up^2)``; the step is
    ``z' = x0_hat + (sigma_down / sigma)(z - x0_hat) + sigma_up * xi``.

    This is DDIM's ``sigma_t(eta)`` (Song et al. 2021, Eq. 16) in sigma space:
    ``sigma_up^2 = eta^2 sigma_t^2 / abar'``. ``eta = 0`` is deterministic DDIM;
    ``eta = 1`` is ancestral sampling, the exact posterior ``q(z' | z, x0_hat)``:
    mean ``x0_hat + (sigma'^2 / sigma^2)(z - x0_hat)``, variance
    ``sigma'^2 (sigma^2 - sigma'^2) / sigma^2``.
    """
    if sigma_next == 0.0 or eta == 0.0:
        return float(sigma_next), 0.0
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(max(sigma ** 2 - sigma_next ** 2, 0.0)) / sigma)
    sigma_down = math.sqrt(max(sigma_next ** 2 - sigma_up ** 2, 0.0))
    return sigma_down, sigma_up


# --------------------------------------------------------------------------- #
# shared plumbing
# --------------------------------------------------------------------------- #

def _setup(denoiser, z, sigmas, generator, callback, extra_args):
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(z, sigma, **extra) -> x0_hat; "
                        f"got {type(denoiser).__name__}")
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor [B, C, H, W]; got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a floating-point tensor; got dtype {z.dtype}")
    if z.dim() < 1 or z.shape[0] == 0:
        raise ValueError(f"z must be [B, C, H, W] with B >= 1; got shape {tuple(z.shape)}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z contains NaN or infinite values")
    sig = [float(v) for v in _check_sigmas_1d(sigmas).tolist()]
    generator = _check_generator(generator, z.shape[0])
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None; got {type(callback).__name__}")
    if extra_args is None:
        extra_args = {}
    elif not isinstance(extra_args, Mapping):
        raise TypeError(f"extra_args must be a dict of keyword arguments for the denoiser or None; "
                        f"got {type(extra_args).__name__}")
    return z, sig, generator, dict(extra_args)


def _denoise(denoiser, z: torch.Tensor, sigma: float, extra_args: Dict[str, Any]) -> torch.Tensor:
    sigma_b = torch.full((z.shape[0],), sigma, dtype=z.dtype, device=z.device)
    x0_hat = denoiser(z, sigma_b, **extra_args)
    if not isinstance(x0_hat, torch.Tensor):
        raise TypeError(f"denoiser must return a tensor x0_hat; got {type(x0_hat).__name__}")
    if x0_hat.shape != z.shape:
        raise ValueError(f"denoiser returned x0_hat of shape {tuple(x0_hat.shape)} for z of shape "
                         f"{tuple(z.shape)}; they must match")
    return x0_hat.to(z.dtype)


def _report(callback, i: int, sigma: float, sigma_next: float, z: torch.Tensor, x0_hat: torch.Tensor):
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "z": z, "x0_hat": x0_hat})


# --------------------------------------------------------------------------- #
# samplers
# --------------------------------------------------------------------------- #

@torch.no_grad()
def sample_ddim(denoiser: Callable, z: torch.Tensor, sigmas, *, eta: float = 0.0,
                generator: GeneratorArg = None, callback: Optional[Callable] = None,
                progress: bool = True, extra_args: Optional[Mapping] = None) -> torch.Tensor:
    """DDIM (Song et al. 2021) in sigma space, with its stochastic family.

    ``eta = 0``: ``z' = x0_hat + (sigma' / sigma)(z - x0_hat)``, the deterministic DDIM
    step (Euler's method for the probability-flow ODE in sigma, Karras et al. 2022).
    ``eta > 0``: ``z' = x0_hat + (sigma_down / sigma)(z - x0_hat) + sigma_up * xi`` with
    ``(sigma_down, sigma_up)`` from :func:`ancestral_step`; ``eta = 1`` is ancestral
    sampling (each step samples the posterior ``q(z' | z, x0 = x0_hat)``).
    The step to ``sigma' = 0`` returns ``x0_hat``.

    Args:
        denoiser: ``denoiser(z [B, C, H, W], sigma [B], **extra_args) -> x0_hat [B, C, H, W]``.
        z: ``[B, C, H, W]`` at ``sigmas[0]``.
        sigmas: ``[n+1]`` strictly decreasing.
        eta: ``>= 0`` noise level of the stochastic family.

    Returns:
        ``z: [B, C, H, W]`` at ``sigmas[-1]``.
    """
    z, sig, generator, extra_args = _setup(denoiser, z, sigmas, generator, callback, extra_args)
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0 (0 = deterministic DDIM, 1 = ancestral); got {eta!r}")
    eta = float(eta)
    for i in _trange(len(sig) - 1, progress):
        sigma, sigma_next = sig[i], sig[i + 1]
        x0_hat = _denoise(denoiser, z, sigma, extra_args)
        if sigma_next == 0.0:
            z = x0_hat
        else:
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
            z = x0_hat + (sigma_down / sigma) * (z - x0_hat)
            if sigma_up > 0.0:
                z = z + sigma_up * randn_per_sample(z.shape, generator, z.device, z.dtype)
        _report(callback, i, sigma, sigma_next, z, x0_hat)
    return z


@torch.no_grad()
def sample_euler_maruyama(denoiser: Callable, z: torch.Tensor, sigmas, *,
                          generator: GeneratorArg = None, callback: Optional[Callable] = None,
                          progress: bool = True, extra_args: Optional[Mapping] = None) -> torch.Tensor:
    """Euler-Maruyama for the reverse-time SDE of the VE process.

    The forward process ``dz = sqrt(d sigma^2 / dt) dw`` reverses to
    ``dz = -(d sigma^2) score + sqrt(d sigma^2) dw`` (Song et al. 2021, Eq. 6, with
    ``f = 0``); one step from ``sigma`` to ``sigma'`` is
    ``z' = z + (sigma^2 - sigma'^2) * score + sqrt(sigma^2 - sigma'^2) * xi``,
    ``score = (x0_hat - z) / sigma^2``, ``xi ~ N(0, I)``.
    The step to ``sigma' = 0`` returns ``x0_hat`` (no noise).

    Args:
        denoiser: ``denoiser(z [B, C, H, W], sigma [B], **extra_args) -> x0_hat [B, C, H, W]``.
        z: ``[B, C, H, W]`` at ``sigmas[0]``.
        sigmas: ``[n+1]`` strictly decreasing.

    Returns:
        ``z: [B, C, H, W]`` at ``sigmas[-1]``.
    """
    z, sig, generator, extra_args = _setup(denoiser, z, sigmas, generator, callback, extra_args)
    for i in _trange(len(sig) - 1, progress):
        sigma, sigma_next = sig[i], sig[i + 1]
        x0_hat = _denoise(denoiser, z, sigma, extra_args)
        if sigma_next == 0.0:
            z = x0_hat
        else:
            dvar = sigma ** 2 - sigma_next ** 2
            score = (x0_hat - z) / sigma ** 2
            xi = randn_per_sample(z.shape, generator, z.device, z.dtype)
            z = z + dvar * score + math.sqrt(dvar) * xi
        _report(callback, i, sigma, sigma_next, z, x0_hat)
    return z


@torch.no_grad()
def sample_heun(denoiser: Callable, z: torch.Tensor, sigmas, *,
                generator: GeneratorArg = None, callback: Optional[Callable] = None,
                progress: bool = True, extra_args: Optional[Mapping] = None) -> torch.Tensor:
    """Heun's second-order method for the probability-flow ODE (Karras et al. 2022, Algorithm 1, no churn).

    ``dz/dsigma = d(z, sigma) = (z - x0_hat(z, sigma)) / sigma``. One step:
    ``z_e = z + (sigma' - sigma) d(z, sigma)``, then
    ``z' = z + (sigma' - sigma) (d(z, sigma) + d(z_e, sigma')) / 2``.
    The step to ``sigma' = 0`` is a plain Euler step, which is exactly ``x0_hat``.
    Uses two denoiser calls per step except the last. Deterministic: ``generator`` is
    only validated (accepted for a common signature).

    Args:
        denoiser: ``denoiser(z [B, C, H, W], sigma [B], **extra_args) -> x0_hat [B, C, H, W]``.
        z: ``[B, C, H, W]`` at ``sigmas[0]``.
        sigmas: ``[n+1]`` strictly decreasing.

    Returns:
        ``z: [B, C, H, W]`` at ``sigmas[-1]``.
    """
    z, sig, generator, extra_args = _setup(denoiser, z, sigmas, generator, callback, extra_args)
    for i in _trange(len(sig) - 1, progress):
        sigma, sigma_next = sig[i], sig[i + 1]
        x0_hat = _denoise(denoiser, z, sigma, extra_args)
        if sigma_next == 0.0:
            z = x0_hat
        else:
            d = (z - x0_hat) / sigma
            dt = sigma_next - sigma
            z_euler = z + dt * d
            x0_hat_2 = _denoise(denoiser, z_euler, sigma_next, extra_args)
            d_2 = (z_euler - x0_hat_2) / sigma_next
            z = z + dt * 0.5 * (d + d_2)
        _report(callback, i, sigma, sigma_next, z, x0_hat)
    return z


SAMPLERS: Dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "euler_maruyama": sample_euler_maruyama,
    "heun": sample_heun,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler called ``name`` (one of :data:`SAMPLERS`; case and ``-``/``_`` are ignored)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a sampler name, one of {', '.join(map(repr, SAMPLERS))}; "
                        f"got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in SAMPLERS:
        raise ValueError(f"name {name!r} is not a sampler; valid names: {', '.join(map(repr, SAMPLERS))}")
    return SAMPLERS[key]
