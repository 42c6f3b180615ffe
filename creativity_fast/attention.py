"""Dataset-wide argmax attention and the attention-augmented ELS machine (SPEC 3.4).

Three pieces:

- :func:`patch_argmax_attention`: for a stack of images, the top-1 attention target
  ``y*(x)`` of every pixel ``x`` under the mean-centred patch embedding, with an
  exclusion radius (C++ kernel ``creativity_fast::patch_argmax_attention``; the
  pure-PyTorch twin :func:`patch_argmax_attention_reference` is the test oracle).
- :func:`training_in_degree`: the in-degree ``c_mu(y) = #{x : y*_mu(x) = y}`` of every
  location of every training image (soft with ``tau``), computed once per
  ``(data, P, exclude, tau)`` and cached.
- :class:`AELSDenoiser` (registered as machine ``"aels"``): ELS with the attention
  prior ``(1 + lam * c)`` on its keys and sample-time attention of strength ``gamma``.

Scores are computed in float64 in both the kernel and the reference: for integer or
dyadic inputs every score is exact, so ties are exact and go to the lowest flat
index ``y = r * W + c`` in both.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ._validate import check_images, check_patch_size
from .denoisers import PatchMachine, PatchSize, _sigma_vector, register_machine
from .ops import EXTENSION_ERROR, PatchPosterior, has_kernel

__all__ = [
    "Attention", "AELSDenoiser", "attention_scores", "clear_attention_cache", "mean_patch",
    "patch_argmax_attention", "patch_argmax_attention_reference", "soft_attention_weights",
    "training_in_degree", "apply_sample_attention",
]


class Attention(NamedTuple):
    """``y_star [M,H,W]`` int64 (flat ``r*W + c``, -1 where nothing is admissible) and
    ``in_degree [M,H,W]`` float: hard counts ``#{x : y*(x) = y}`` or, with ``tau``, the
    column sums of the row softmax."""

    y_star: torch.Tensor
    in_degree: torch.Tensor


# --------------------------------------------------------------------------- #
# argument checks


def _check_exclude(exclude, P: int) -> int:
    if exclude is None:
        return P
    if isinstance(exclude, bool) or not isinstance(exclude, numbers.Integral) or exclude < 0:
        raise ValueError(f"exclude must be a non-negative int (Chebyshev radius); got {exclude!r}")
    return int(exclude)


def _check_tau(tau) -> Optional[float]:
    if tau is None:
        return None
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be None (top-1 attention) or a finite float > 0; got {tau!r}")
    return float(tau)


def _check_center(center, C: int, P: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(center, torch.Tensor):
        raise TypeError(f"center must be a torch.Tensor [C, P, P]; got {type(center).__name__}")
    if tuple(center.shape) != (C, P, P):
        raise ValueError(f"center must have shape [C, P, P] = {[C, P, P]}; got {list(center.shape)}")
    if center.device != like.device:
        raise ValueError(f"center is on {center.device} but images are on {like.device}")
    if not bool(torch.isfinite(center).all()):
        raise ValueError("center contains NaN or infinite values")
    return center.to(like.dtype)


def _check_args(images, P, exclude, center, tau):
    images = check_images("images", images)
    P = check_patch_size(P)
    exclude = _check_exclude(exclude, P)
    tau = _check_tau(tau)
    center = mean_patch(images, P) if center is None else _check_center(center, images.shape[1], P, images)
    return images, P, exclude, center, tau


# --------------------------------------------------------------------------- #
# embedding


def mean_patch(images: torch.Tensor, P: int, *, chunk_size: int = 4096) -> torch.Tensor:
    """Mean zero-extended ``P x P`` patch over every location of every image: ``[C, P, P]``.

    The patch map is linear, so this is the mean over locations of the patches of the
    mean image (computed in float64 in chunks of images, returned in ``images.dtype``).
    """
    images = check_images("images", images)
    P = check_patch_size(P)
    M, C, H, W = images.shape
    total = torch.zeros(C, H, W, dtype=torch.float64, device=images.device)
    for start in range(0, M, chunk_size):
        total += images[start:start + chunk_size].to(torch.float64).sum(0)
    mean = total / M
    m = (P - 1) // 2
    patches = F.unfold(F.pad(mean[None], (m, m, m, m)), P)  # [1, C*P*P, H*W]
    return patches.mean(-1).reshape(C, P, P).to(images.dtype)


def _patches(images: torch.Tensor, P: int) -> torch.Tensor:
    """Zero-extended patches at every pixel: [M, H*W, C*P*P] (float64)."""
    m = (P - 1) // 2
    x = F.pad(images.to(torch.float64), (m, m, m, m))
    return F.unfold(x, P).transpose(1, 2)


def _admissible(H: int, W: int, exclude: int, device) -> torch.Tensor:
    """[HW, HW] bool: ``max(|dr|, |dc|) >= exclude`` between query x (row) and key y (column)."""
    r = torch.arange(H, device=device).repeat_interleave(W)
    c = torch.arange(W, device=device).repeat(H)
    cheb = torch.maximum((r[:, None] - r[None, :]).abs(), (c[:, None] - c[None, :]).abs())
    return cheb >= exclude


def attention_scores(images: torch.Tensor, P: int, *, exclude: Optional[int] = None,
                     center: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense scores ``<e(Pi_x), e(Pi_y)>`` [M, HW, HW] in float64, -inf where not admissible.

    The reference's building block (memory ``M * (HW)^2``: small images only).
    """
    images, P, exclude, center, _ = _check_args(images, P, exclude, center, None)
    M, C, H, W = images.shape
    e = _patches(images, P) - center.to(torch.float64).reshape(1, 1, -1)
    scores = e @ e.transpose(1, 2)
    return scores.masked_fill(~_admissible(H, W, exclude, images.device), float("-inf"))


# --------------------------------------------------------------------------- #
# the operator and its reference twin


def patch_argmax_attention_reference(images: torch.Tensor, P: int, *, exclude: Optional[int] = None,
                                     center: Optional[torch.Tensor] = None, tau: Optional[float] = None,
                                     return_in_degree: bool = False, chunk_size: int = 16):
    """Pure-PyTorch twin of :func:`patch_argmax_attention` (same arguments and results)."""
    images, P, exclude, center, tau = _check_args(images, P, exclude, center, tau)
    M, C, H, W = images.shape
    HW = H * W
    y_star = torch.empty(M, HW, dtype=torch.int64, device=images.device)
    in_degree = torch.zeros(M, HW, dtype=torch.float64, device=images.device)
    for start in range(0, M, chunk_size):
        s = attention_scores(images[start:start + chunk_size], P, exclude=exclude, center=center)
        has_key = torch.isfinite(s).any(-1)
        best = s.argmax(-1)  # first maximum: the lowest flat index on ties
        best = torch.where(has_key, best, torch.full_like(best, -1))
        y_star[start:start + s.shape[0]] = best
        if tau is None:
            counts = torch.zeros(s.shape[0], HW + 1, dtype=torch.float64, device=images.device)
            counts.scatter_add_(1, torch.where(best < 0, HW, best), torch.ones_like(best, dtype=torch.float64))
            in_degree[start:start + s.shape[0]] = counts[:, :HW]
        else:
            weights = torch.softmax(s / tau, dim=-1).nan_to_num(0.0)  # rows without keys: all zero
            in_degree[start:start + s.shape[0]] = weights.sum(1)
    y_star = y_star.reshape(M, H, W)
    if tau is None and not return_in_degree:
        return y_star
    return Attention(y_star, in_degree.reshape(M, H, W).to(images.dtype))


def patch_argmax_attention(images: torch.Tensor, P: int, *, exclude: Optional[int] = None,
                           center: Optional[torch.Tensor] = None, tau: Optional[float] = None,
                           return_in_degree: bool = False, backend: str = "auto"):
    """Top-1 patch attention of every pixel of every image (SPEC 3.4 step 1).

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
        when ``tau`` is given or ``return_in_degree``.
    """
    if backend not in ("auto", "kernel", "reference"):
        raise ValueError(f"backend must be one of 'auto', 'reference', 'kernel'; got {backend!r}")
    images, P, exclude, center, tau = _check_args(images, P, exclude, center, tau)
    kernel = backend != "reference" and has_kernel(images.device, "patch_argmax_attention")
    if backend == "kernel" and not kernel:
        raise ValueError(f"backend='kernel' but no compiled patch_argmax_attention kernel for {images.device.type}"
                         + (f" (extension failed to load: {EXTENSION_ERROR})" if EXTENSION_ERROR else ""))
    if not kernel:
        return patch_argmax_attention_reference(images, P, exclude=exclude, center=center, tau=tau,
                                                return_in_degree=return_in_degree)
    y_star, in_degree = torch.ops.creativity_fast.patch_argmax_attention(
        images.contiguous(), center.contiguous(), P, exclude, -1.0 if tau is None else tau)
    if tau is None and not return_in_degree:
        return y_star
    return Attention(y_star, in_degree)


def soft_attention_weights(images: torch.Tensor, P: int, *, exclude: Optional[int] = None,
                           center: Optional[torch.Tensor] = None, tau: float = 1.0) -> torch.Tensor:
    """Row-softmax attention ``a_xy`` [M, HW, HW] (float64; rows without keys are 0). Small images only."""
    tau = _check_tau(tau)
    s = attention_scores(images, P, exclude=exclude, center=center)
    return torch.softmax(s / tau, dim=-1).nan_to_num(0.0)


def _register_fake() -> None:
    if EXTENSION_ERROR is not None:
        return
    try:
        @torch.library.register_fake("creativity_fast::patch_argmax_attention")
        def _(images, center, P, exclude, tau):
            M, _, H, W = images.shape
            return images.new_empty((M, H, W), dtype=torch.int64), images.new_empty((M, H, W))
    except (RuntimeError, ValueError, AttributeError):  # schema absent: an extension built without it
        pass


_register_fake()


# --------------------------------------------------------------------------- #
# in-degree over the training set, cached


_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_CACHE_SIZE = 16


def clear_attention_cache() -> None:
    """Forget every cached training-set in-degree."""
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
                       backend: str = "auto", cache: bool = True, batch_size: int = 4096) -> torch.Tensor:
    """In-degree ``c_mu(y)`` [N, H, W] of every location of every training image (SPEC 3.4 step 1).

    Attention runs within each training image with the mean patch of the whole
    set as centre. Cached per ``(data, P, exclude, tau)`` (data identified by its
    address and a content checksum), so a sampler that calls a machine at many
    steps computes it once per patch size.
    """
    data = check_images("data", data)
    P = check_patch_size(P)
    exclude = _check_exclude(exclude, P)
    tau = _check_tau(tau)
    key = (_fingerprint(data), P, exclude, tau) if cache else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    center = mean_patch(data, P)
    parts = [patch_argmax_attention(data[i:i + batch_size], P, exclude=exclude, center=center, tau=tau,
                                    return_in_degree=True, backend=backend).in_degree
             for i in range(0, data.shape[0], batch_size)]
    counts = torch.cat(parts)
    if key is not None:
        _CACHE[key] = counts
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return counts


# --------------------------------------------------------------------------- #
# the machine


def apply_sample_attention(x0_hat: torch.Tensor, z: torch.Tensor, gamma: float, P: int, *,
                           center: torch.Tensor, exclude: Optional[int] = None, tau: Optional[float] = None,
                           backend: str = "auto", y_star: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample-time attention (SPEC 3.4 step 3): ``x0~(x) = x0(x) + gamma (x0(y*(x)) - z(y*(x)))``.

    ``y*`` is computed on ``z`` with the given (training) centre; pixels without an
    admissible ``y`` are unchanged. With ``tau`` the correction is the soft average
    ``gamma * sum_y a_xy (x0(y) - z(y))``. ``y_star [B, H, W]`` may be given when already
    computed (top-1 only).
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


class AELSDenoiser(PatchMachine):
    r"""Attention-augmented ELS (SPEC 3.4): ELS with an attention prior and sample-time attention.

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
        boundary, keys, labels, class_label, backend, record_stats: as ``PatchMachine``
            (mode is ``"els"``). The attention patches are always zero-extended.

    ``last_stats`` (with ``record_stats``) holds the ELS provenance of the last call;
    ``last_attention`` the sample-time ``y* [B, H, W]`` (top-1, when ``gamma != 0``).
    """

    def __init__(self, data, P: PatchSize = 3, *, lam: float = 1.0, gamma: float = 0.0, tau: Optional[float] = None,
                 attention_P: Optional[int] = None, exclude: Optional[int] = None, boundary: str = "zeros",
                 keys: str = "all", labels=None, class_label: Optional[int] = None, backend: str = "auto",
                 record_stats: bool = False, mode: str = "els"):
        super().__init__(data, mode, P, boundary=boundary, keys=keys, labels=labels, class_label=class_label,
                         backend=backend, record_stats=record_stats)
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite float >= 0; got {lam!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite float; got {gamma!r}")
        self.lam, self.gamma = float(lam), float(gamma)
        self.tau = _check_tau(tau)
        self.attention_P = None if attention_P is None else check_patch_size(attention_P, "attention_P")
        if exclude is not None:
            _check_exclude(exclude, 1)
        self.exclude = exclude
        self.last_attention: Optional[torch.Tensor] = None
        self._centers: dict[int, torch.Tensor] = {}
        self._priors: dict[int, Optional[torch.Tensor]] = {}

    def attention_size(self, P: int) -> int:
        return self.attention_P if self.attention_P is not None else P

    def prior_logw(self, P: int) -> Optional[torch.Tensor]:
        """``log(1 + lam * c)`` [N, H, W] for ELS patch size ``P`` (None when ``lam = 0``)."""
        if self.lam == 0:
            return None
        if P not in self._priors:  # the training set is fixed per machine: once per P
            Pa = self.attention_size(P)
            counts = training_in_degree(self.data, Pa, exclude=self.exclude, tau=self.tau, backend=self.backend)
            self._priors[P] = torch.log1p(self.lam * counts.to(self.data.dtype))
        return self._priors[P]

    def center(self, Pa: int) -> torch.Tensor:
        if Pa not in self._centers:
            self._centers[Pa] = mean_patch(self.data, Pa)
        return self._centers[Pa]

    def _els_call(self, z: torch.Tensor, sigma: torch.Tensor, class_labels) -> torch.Tensor:
        """The ELS machine with the attention prior set as ``key_logw`` (the sharded twin overrides it)."""
        return PatchMachine.__call__(self, z, sigma, class_labels)

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        check_images("z", z)
        B = z.shape[0]
        sig = _sigma_vector(sigma, B, z)
        sizes = torch.tensor([self.patch_size(float(s)) for s in sig], dtype=torch.long)
        x0_hat = torch.empty_like(z)
        lse = z.new_empty(B, *z.shape[2:]) if self.record_stats else None
        argmax = torch.empty(B, *z.shape[2:], 2, dtype=torch.long) if self.record_stats else None
        attention = torch.full((B, *z.shape[2:]), -1, dtype=torch.long) if self.gamma != 0 else None
        labels = None if class_labels is None else torch.as_tensor(class_labels).reshape(-1)
        for P in sizes.unique().tolist():
            idx = (sizes == P).nonzero().reshape(-1)
            self.key_logw = self.prior_logw(P)
            out = self._els_call(z[idx], sig[idx], None if labels is None else labels[idx])
            if self.gamma != 0:
                Pa = self.attention_size(P)
                center = self.center(Pa).to(z.dtype)
                y_star = None
                if self.tau is None:
                    y_star = patch_argmax_attention(z[idx], Pa, exclude=self.exclude, center=center,
                                                    backend=self.backend)
                    attention[idx] = y_star
                out = apply_sample_attention(out, z[idx], self.gamma, Pa, center=center, exclude=self.exclude,
                                             tau=self.tau, backend=self.backend, y_star=y_star)
            x0_hat[idx] = out
            if self.record_stats:
                lse[idx] = self.last_stats.lse
                argmax[idx] = self.last_stats.argmax
        self.key_logw = None
        self.last_attention = attention
        if self.record_stats:
            self.last_stats = PatchPosterior(x0_hat, lse, argmax)
        return x0_hat


@register_machine("aels")
def _aels(data, *, P: PatchSize = 3, lam: float = 1.0, gamma: float = 0.0, **kwargs) -> AELSDenoiser:
    return AELSDenoiser(data, P, lam=lam, gamma=gamma, **kwargs)
