"""The attention-augmented ELS machine (AELS, docs/theory.md §3.4) and its parts.

- :func:`training_in_degree`: the in-degree ``c_mu(y) = #{x : y*_mu(x) = y}`` of every
  location of every training image (soft with ``tau``), computed once per
  ``(data, P, exclude, tau)`` and cached;
- :class:`AttentionPrior`: the key prior ``log(1 + lam * c)`` per ELS patch size;
- :func:`apply_sample_attention`: sample-time attention of strength ``gamma``;
- :class:`AELSDenoiser` (machine ``"aels"``): an ELS machine with the prior, then
  sample-time attention;
- :func:`training_partners`: the top-1 partner of every training location, cached, for the
  paired-patch machine (``paired``).

The operator itself (``patch_argmax_attention``) is in ``ops``, its twin in ``reference``.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import Optional

import torch

from ._validate import check_exclude, check_images, check_patch_size, check_tau
from .denoisers import ELSDenoiser, PatchMachine, PatchSize, by_patch_size, sigma_vector
from .ops import PatchPosterior, mean_patch, patch_argmax_attention
from .reference import soft_attention_weights

__all__ = ["AELSDenoiser", "AttentionPrior", "apply_sample_attention", "clear_attention_cache", "training_in_degree",
           "training_partners"]


# --------------------------------------------------------------------------- #
# in-degree over the training set, cached


_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_CACHE_SIZE = 16


def clear_attention_cache() -> None:
    """Forget every cached training-set in-degree and partner map."""
    _CACHE.clear()


def _fingerprint(data: torch.Tensor) -> tuple:
    """Identity and content summary of a tensor (cheap: one float64 pass in chunks)."""
    s1 = s2 = s3 = 0.0
    step = 4096
    for start in range(0, data.shape[0], step):
        chunk = data[start:start + step].reshape(min(step, data.shape[0] - start), -1).to(torch.float64)
        per_image = chunk.sum(1)
        s1 += float(per_image.sum())
        s2 += float((chunk * chunk).sum())
        s3 += float((per_image * torch.arange(start + 1, start + 1 + chunk.shape[0], dtype=torch.float64,
                                              device=chunk.device)).sum())
    return (tuple(data.shape), str(data.dtype), str(data.device), data.data_ptr(), s1, s2, s3)


def training_in_degree(data: torch.Tensor, P: int, *, exclude: Optional[int] = None, tau: Optional[float] = None,
                       center: Optional[torch.Tensor] = None, backend: str = "auto", cache: bool = True,
                       batch_size: int = 4096) -> torch.Tensor:
    """In-degree ``c_mu(y)`` [N, H, W] of every location of every training image (docs/theory.md §3.4, step 1).

    data: [N, C, H, W]. Attention runs within each training image with the mean patch of
    the whole set as centre (``center [C, P, P]``, default ``mean_patch(data, P)``; a sharded
    set passes the mean patch of all shards). Cached per ``(data, P, exclude, tau)`` (data
    identified by its address and a content checksum) when ``center`` is the default, so a
    sampler that calls a machine at many steps computes it once per patch size.
    """
    data = check_images("data", data)
    P = check_patch_size(P)
    exclude = check_exclude(exclude, P)
    tau = check_tau(tau)
    key = (_fingerprint(data), P, exclude, tau) if cache and center is None else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    center = mean_patch(data, P) if center is None else center
    parts = [patch_argmax_attention(data[i:i + batch_size], P, exclude=exclude, center=center, tau=tau,
                                    return_in_degree=True, backend=backend).in_degree
             for i in range(0, data.shape[0], batch_size)]
    counts = torch.cat(parts)
    if key is not None:
        _CACHE[key] = counts
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return counts


def training_partners(data: torch.Tensor, P: int, *, exclude: Optional[int] = None,
                      center: Optional[torch.Tensor] = None, backend: str = "auto", cache: bool = True,
                      batch_size: int = 4096) -> torch.Tensor:
    """Partner ``a_mu(u) = y*_mu(u)`` [N, H, W] (int64) of every location of every training image
    (docs/theory.md §3.7): the top-1 attention of §3.4 step 1 within each training image.

    data: [N, C, H, W]; the centre is the mean patch of the whole set (``center [C, P, P]``,
    default ``mean_patch(data, P)``). Cached per ``(data, P, exclude)`` like
    :func:`training_in_degree` when ``center`` is the default, so a sampler calling the
    paired-patch machine at every step computes it once per attention patch size.
    """
    data = check_images("data", data)
    P = check_patch_size(P)
    exclude = check_exclude(exclude, P)
    key = ("partners", _fingerprint(data), P, exclude) if cache and center is None else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    center = mean_patch(data, P) if center is None else center
    partners = torch.cat([patch_argmax_attention(data[i:i + batch_size], P, exclude=exclude, center=center,
                                                 backend=backend)
                          for i in range(0, data.shape[0], batch_size)])
    if key is not None:
        _CACHE[key] = partners
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return partners


# --------------------------------------------------------------------------- #
# the machine


def apply_sample_attention(x0_hat: torch.Tensor, z: torch.Tensor, gamma: float, P: int, *,
                           center: torch.Tensor, exclude: Optional[int] = None, tau: Optional[float] = None,
                           backend: str = "auto", y_star: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample-time attention (docs/theory.md §3.4, step 3): ``x0~(x) = x0(x) + gamma (x0(y*(x)) - z(y*(x)))``.

    ``y*`` is computed on ``z`` with the given (training) centre; pixels without an
    admissible ``y`` are unchanged. With ``tau`` the correction is the soft average
    ``gamma * sum_y a_xy (x0(y) - z(y))``. ``y_star [B, H, W]`` may be given when already
    computed (top-1 only).

    x0_hat, z: [B, C, H, W]; center: [C, P, P].
    """
    B, C, H, W = z.shape
    delta = (x0_hat - z).reshape(B, C, H * W)
    if tau is None:
        if y_star is None:
            y_star = patch_argmax_attention(z, P, exclude=exclude, center=center, backend=backend)
        y_star = y_star.reshape(B, 1, H * W)
        moved = delta.gather(2, y_star.clamp_min(0).expand(B, C, H * W))
        moved = moved.masked_fill(y_star < 0, 0.0)
    else:
        a = soft_attention_weights(z, P, exclude=exclude, center=center, tau=tau).to(z.dtype)  # [B, HW, HW]
        moved = torch.bmm(delta, a.transpose(1, 2))
    return x0_hat + gamma * moved.reshape(B, C, H, W)

class AttentionPrior:
    """The attention prior of AELS: ``key_logw = log(1 + lam * c_mu(y))`` per ELS patch size (docs/theory.md §3.4).

    A callable ``P -> [N, H, W]`` (None when ``lam = 0``), the form ``PatchMachine`` takes
    as ``key_logw``. The in-degree ``c`` uses the attention patch size ``attention_P``
    (default: the ELS ``P`` of the step) and is computed once per size.

    Args:
        data: [N, C, H, W] training images.
        lam: prior strength (>= 0).
        attention_P, exclude, tau, backend: as ``AELSDenoiser``.
    """

    def __init__(self, data: torch.Tensor, lam: float = 1.0, *, attention_P: Optional[int] = None,
                 exclude: Optional[int] = None, tau: Optional[float] = None, backend: str = "auto"):
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite float >= 0; got {lam!r}")
        self.data = data
        self.lam = float(lam)
        self.attention_P = None if attention_P is None else check_patch_size(attention_P, "attention_P")
        if exclude is not None:
            check_exclude(exclude, 1)
        self.exclude = exclude
        self.tau = check_tau(tau)
        self.backend = backend
        self._centers: dict[int, torch.Tensor] = {}
        self._priors: dict[int, Optional[torch.Tensor]] = {}

    def attention_size(self, P: int) -> int:
        """The attention patch size used with ELS patch size ``P``."""
        return self.attention_P if self.attention_P is not None else P

    def center(self, Pa: int) -> torch.Tensor:
        """The embedding centre ``[C, Pa, Pa]``: the mean patch of the whole training set."""
        if Pa not in self._centers:
            self._centers[Pa] = mean_patch(self.data, Pa)
        return self._centers[Pa]

    def in_degree(self, Pa: int) -> torch.Tensor:
        """``c [N, H, W]`` at attention patch size ``Pa``."""
        return training_in_degree(self.data, Pa, exclude=self.exclude, tau=self.tau, backend=self.backend)

    def __call__(self, P: int) -> Optional[torch.Tensor]:
        if self.lam == 0:
            return None
        if P not in self._priors:  # the training set is fixed: once per P
            counts = self.in_degree(self.attention_size(P))
            self._priors[P] = torch.log1p(self.lam * counts.to(self.data.dtype))
        return self._priors[P]


class AELSDenoiser:
    r"""Attention-augmented ELS (docs/theory.md §3.4): ELS with an attention prior and sample-time attention.

    Derivation. The seed's network is ``g~(x) = g(phi_{Omega_x}) + sum_y alpha_xy g(phi_{Omega_y})``
    with top-1 attention ``y*(x) = argmax_y <e(phi_{Omega_x}), e(phi_{Omega_y})>`` (mean-centred
    patch embedding ``e``; ``y`` outside ``x``'s patch so the two patches are independent). Its
    optimum is ``g(Phi) = grad_{Phi(0)} log sum_x [pi_t(phi_{Omega_x} = Phi) + pi_t(phi_{Omega_{y*(x)}} = Phi)]``.
    With ``pi_t`` the noised empirical distribution, ``pi_t(phi_{Omega_x} = Phi)`` is a sum of
    Gaussians ``N(Phi; Pi_x phi^mu, sigma^2)`` over training images; the second term puts one
    more copy of the Gaussian at ``Pi_y phi^mu`` for every ``x`` with ``y*_mu(x) = y``, i.e.
    key ``(mu, y)`` is counted ``1 + c_mu(y)`` times, ``c_mu(y) = #{x : y*_mu(x) = y}``. The
    gradient of the log of such a mixture is the ELS posterior mean with prior weights:
    ``w_{mu,y}(x) ∝ (1 + lam c_mu(y)) exp(-|Pi_x z - Pi_y phi^mu|^2 / (2 sigma^2))`` (``lam = 1``
    is the formula, ``lam = 0`` is ELS): the *attention prior*, passed to the kernel as
    ``key_logw = log(1 + lam c)``. The network form itself adds the attended patch's score,
    ``score~(x) = score(x) + gamma score(y*(x))`` with ``y*`` computed on the current sample;
    in denoiser form ``x0~(x) = x0(x) + gamma (x0(y*(x)) - z(y*(x)))``: *sample-time
    attention* (``gamma = 1`` the seed's form, 0 off). ``lam = gamma = 0`` is ELS exactly.

    Args:
        data: [N, C, H, W] training images.
        P: ELS patch size (int or ``sigma -> P`` schedule).
        lam: attention prior strength (>= 0).
        gamma: sample-time attention strength (real).
        tau: None for top-1 attention, else the soft temperature (in-degree and sample-time).
        attention_P: patch size of the attention embedding (default: the ELS ``P`` of the step).
        exclude: exclusion radius (default: the attention patch size).
        boundary, keys, labels, class_label, backend, record_stats: as ``ELSDenoiser``.
            The attention patches are always zero-extended.

    Composition: the machine is an ``ELSDenoiser`` whose key prior is an
    :class:`AttentionPrior` (``key_logw`` may be a callable ``P -> prior``), followed by
    :func:`apply_sample_attention`. :meth:`from_parts` composes other parts (the sharded
    ELS machine and prior of ``distributed.machines``).

    ``last_stats`` (with ``record_stats``) holds the ELS provenance of the last call;
    ``last_attention`` the sample-time ``y* [B, H, W]`` (top-1, when ``gamma != 0``).
    """

    def __init__(self, data, P: PatchSize = 3, *, lam: float = 1.0, gamma: float = 0.0, tau: Optional[float] = None,
                 attention_P: Optional[int] = None, exclude: Optional[int] = None, boundary: str = "zeros",
                 keys: str = "all", labels=None, class_label: Optional[int] = None, backend: str = "auto",
                 record_stats: bool = False):
        prior = AttentionPrior(data, lam, attention_P=attention_P, exclude=exclude, tau=tau, backend=backend)
        els = ELSDenoiser(data, P, boundary=boundary, keys=keys, labels=labels, class_label=class_label,
                          key_logw=prior, backend=backend, record_stats=record_stats)
        self._compose(els, prior, gamma)

    @classmethod
    def from_parts(cls, els: PatchMachine, prior: AttentionPrior, *, gamma: float = 0.0) -> "AELSDenoiser":
        """AELS from an ELS machine whose ``key_logw`` is ``prior``, and the sample-time strength ``gamma``."""
        machine = cls.__new__(cls)
        machine._compose(els, prior, gamma)
        return machine

    def _compose(self, els: PatchMachine, prior: AttentionPrior, gamma: float) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite float; got {gamma!r}")
        if els.key_logw is not prior:
            raise ValueError("AELSDenoiser.from_parts: els must use the prior as its key_logw")
        self.els, self.prior, self.gamma = els, prior, float(gamma)
        self.last_attention: Optional[torch.Tensor] = None
        self.last_stats: Optional[PatchPosterior] = None

    @property
    def data(self) -> torch.Tensor:
        return self.els.data

    @property
    def record_stats(self) -> bool:
        return self.els.record_stats

    @property
    def lam(self) -> float:
        return self.prior.lam

    def patch_size(self, sigma: float) -> int:
        return self.els.patch_size(sigma)

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        x0_hat = self.els(z, sigma, class_labels)
        attention = None
        if self.gamma != 0:
            B, _, H, W = z.shape
            attention = torch.full((B, H, W), -1, dtype=torch.long)
            prior = self.prior
            for P, idx in by_patch_size(self.els.patch_size, sigma_vector(sigma, B, z), torch.arange(B)):
                Pa = prior.attention_size(P)
                center = prior.center(Pa).to(z.dtype)
                y_star = None
                if prior.tau is None:
                    y_star = patch_argmax_attention(z[idx], Pa, exclude=prior.exclude, center=center,
                                                    backend=prior.backend)
                    attention[idx] = y_star
                x0_hat[idx] = apply_sample_attention(x0_hat[idx], z[idx], self.gamma, Pa, center=center,
                                                     exclude=prior.exclude, tau=prior.tau, backend=prior.backend,
                                                     y_star=y_star)
        self.last_attention = attention
        if self.record_stats:
            self.last_stats = PatchPosterior(x0_hat, self.els.last_stats.lse, self.els.last_stats.argmax)
        return x0_hat
