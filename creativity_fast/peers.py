"""Peer machines: every training-free denoiser in one engine, exact (docs/theory.md §3.6).

Four published training-free denoisers with the ``denoiser(z, sigma) -> x0_hat``
contract, registered by name (``registry``) for ``make_denoiser`` and every CLI ``--machine``:

``nearest``       retrieval baseline: the training image nearest to ``z`` in L2.
                  The argmax path of the ideal operator (``patch_posterior_mean(mode="ideal")``).
``smoothed``      smoothed closed-form diffusion model, Scarvelis, Borde & Solomon 2023,
                  "Closed-form diffusion models" (arXiv 2310.12395):
                  ``x0_hat(z) = mean_j IS(z + s * xi_j)`` over ``J`` seeded Gaussian copies,
                  all ``B * J`` copies batched through one ideal call.
``pca_locality``  Lukoianov, Yuan, Solomon & Sitzmann 2025, "Locality in image diffusion
                  models emerges from data statistics" (arXiv 2509.09672): the local
                  machine whose receptive field is the thresholded Wiener operator of
                  the data covariance, with an exact softmax per output unit.
``pspc``          patch posterior average (PSPC-square), Niedoba, Zwartsenberg, Murphy &
                  Wood 2025, "Towards a mechanistic explanation of diffusion model
                  generalization" (arXiv 2411.19339): per ``P x P`` crop inside the
                  image, the posterior mean of the whole crop over the training crops at
                  the same place; each pixel averages the crops covering it.

The published code of several of these normalises the softmax per data batch; here
every softmax runs over the whole (class-restricted) training set, streamed with a
running log-sum-exp per query, so splitting the data into chunks changes nothing.

``pca_locality`` and ``pspc`` share one operator, the *masked-local posterior*
(``ops.masked_local_posterior``): the local machine with an arbitrary per-unit key
support (a sparse mask, CSR) in place of the square patch, and an output support
whose training values are averaged under the unit's softmax. This module builds the
supports (:func:`support_from_mask`, :func:`square_crop_support`); the operator, its
kernel and its reference twin live with the other operators. See ``docs/peers.md``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional

import torch

from ._validate import check_backend, check_choice, check_images, check_patch_size, check_sigma
from .classes import TrainingClasses
from .denoisers import PatchSize, by_patch_size, patch_size_at
from .ops import MaskedSupport, PatchPosterior, masked_local_posterior, patch_posterior_mean

__all__ = [
    "support_from_mask", "square_crop_support", "wiener_mask", "NearestDenoiser", "SmoothedDenoiser",
    "PCALocalityDenoiser", "PatchPosteriorAverage",
]


# --------------------------------------------------------------------------- #
# Supports of the masked-local posterior operator (ops.masked_local_posterior)
# --------------------------------------------------------------------------- #

def _ptr(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]).long()


def support_from_mask(mask: torch.Tensor) -> MaskedSupport:
    """Support of a dense mask ``M [U, U]`` (``M[n, m]``: weight of input ``n`` for output ``m``).

    One unit per output ``m``: key support the nonzero entries of column ``m`` with their
    weights, output support ``[m]``; so ``mean[b, c, m]`` is output unit ``m``.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask must be a square [U, U] tensor; got {getattr(mask, 'shape', type(mask))}")
    if not bool(torch.isfinite(mask).all()) or bool((mask < 0).any()):
        raise ValueError("mask must hold finite, non-negative weights")
    cols = mask.T  # row m: weights of the inputs n for output m
    nz = cols != 0
    key_ptr = _ptr(nz.sum(1))
    m_idx, n_idx = nz.nonzero(as_tuple=True)  # row-major: grouped by m, n ascending
    U = mask.shape[0]
    return MaskedSupport(key_ptr, n_idx.long(), cols[m_idx, n_idx], torch.arange(U + 1), torch.arange(U))


def square_crop_support(H: int, W: int, P: int) -> MaskedSupport:
    """Supports of every ``Ph x Pw`` crop inside an ``H x W`` image, ``Ph = min(P, H)``, ``Pw = min(P, W)``.

    Units are crop origins ``(r0, c0)`` in row-major order; key and output support are
    the crop's pixels (row-major), weight 1. Units index pixels ``r * W + c``.
    """
    Ph, Pw = min(P, H), min(P, W)
    r0 = torch.arange(H - Ph + 1)
    c0 = torch.arange(W - Pw + 1)
    dr = torch.arange(Ph)
    dc = torch.arange(Pw)
    pix = ((r0[:, None, None, None] + dr[None, None, :, None]) * W
           + c0[None, :, None, None] + dc[None, None, None, :])  # [nr, nc, Ph, Pw]
    Q = r0.numel() * c0.numel()
    index = pix.reshape(-1).long()
    ptr = torch.arange(Q + 1) * (Ph * Pw)
    return MaskedSupport(ptr, index, torch.ones(index.numel(), dtype=torch.float64), ptr.clone(), index.clone())


# --------------------------------------------------------------------------- #
# Shared helpers of the machines
# --------------------------------------------------------------------------- #

def _check_query(z: torch.Tensor, data: torch.Tensor) -> None:
    check_images("z", z)
    if z.shape[1:] != data.shape[1:]:
        raise ValueError(f"z [B, C, H, W] = {tuple(z.shape)} does not match the training images "
                         f"{tuple(data.shape[1:])} in C, H or W")


def _positive(name: str, value, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}; got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- #
# nearest
# --------------------------------------------------------------------------- #

class NearestDenoiser:
    """Nearest neighbour (retrieval baseline): ``x0_hat(z)`` = the training image nearest to ``z`` in L2.

    The argmax path of the ideal operator: the largest-weight image of
    ``patch_posterior_mean(z, data, 1, mode="ideal", return_stats=True)`` is the nearest
    one (the weights are monotone in the distance, whatever sigma), lowest index on ties.
    Independent of ``sigma`` (checked, not used). Class-conditional like ``PatchMachine``.

    ``last_index [B]`` holds the nearest image's index in the full training set; with
    ``record_stats`` ``last_stats`` is a ``PatchPosterior`` whose argmax is that image at
    each pixel's own location (lse: the ideal log-normaliser at sigma = 1).
    """

    def __init__(self, data, *, labels=None, class_label: Optional[int] = None, backend: str = "auto",
                 record_stats: bool = False):
        self.classes = TrainingClasses(data, labels, class_label)
        self.backend = check_backend(backend)
        self.record_stats = record_stats
        self.last_index: Optional[torch.Tensor] = None
        self.last_stats: Optional[PatchPosterior] = None

    @property
    def data(self) -> torch.Tensor:
        return self.classes.data

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        _check_query(z, self.data)
        check_sigma(sigma, z.shape[0], z)
        B, C, H, W = z.shape
        out = torch.empty_like(z)
        index = torch.empty(B, dtype=torch.int64, device=z.device)
        lse = z.new_empty(B)
        for label, rows in self.classes.groups(B, class_labels):
            data = self.classes.subset(label)
            res = patch_posterior_mean(z[rows], data, 1.0, 1, mode="ideal", return_stats=True, backend=self.backend)
            mu = res.argmax[:, 0, 0, 0]
            out[rows] = data[mu].to(z.dtype)
            index[rows] = self.classes.global_ids(label, mu)
            lse[rows] = res.lse[:, 0, 0]
        self.last_index = index
        if self.record_stats:
            pixel = torch.arange(H * W, device=z.device).reshape(1, H, W).expand(B, H, W)
            argmax = torch.stack([index[:, None, None].expand(B, H, W), pixel], dim=-1)
            self.last_stats = PatchPosterior(out, lse[:, None, None].expand(B, H, W), argmax)
        return out


# --------------------------------------------------------------------------- #
# smoothed
# --------------------------------------------------------------------------- #

class SmoothedDenoiser:
    """Smoothed closed-form denoiser (Scarvelis, Borde & Solomon 2023, docs/theory.md §3.6).

    ``x0_hat(z) = (1/J) sum_j IS(z + s * xi_j)``, ``IS`` the exact ideal posterior mean
    (docs/theory.md §3.1) and ``xi_j ~ N(0, I)`` ``J`` Gaussian copies. The ``B * J`` copies go
    through one ideal ``patch_posterior_mean`` call.

    Seeding: the copies ``xi [J, C, H, W]`` are drawn once from ``torch.Generator`` seeded
    with ``seed`` (in float64 on the CPU, then cast), and shared by every sample and every
    call, so the denoiser is a deterministic function of ``(z, sigma)`` and a sample does
    not depend on its batch. ``resample=True`` draws fresh copies at every call instead
    (from the same seeded generator; then results depend on the call order).

    Args:
        s: smoothing scale (>= 0); ``s = 0`` is the ideal machine.
        J: number of copies (>= 1).
    """

    def __init__(self, data, *, s: float = 0.5, J: int = 8, seed: int = 0, resample: bool = False,
                 labels=None, class_label: Optional[int] = None, backend: str = "auto"):
        self.classes = TrainingClasses(data, labels, class_label)
        self.s = _positive("s", s, allow_zero=True)
        if isinstance(J, bool) or not isinstance(J, int) or J < 1:
            raise ValueError(f"J (number of smoothing copies) must be an int >= 1; got {J!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int; got {seed!r}")
        self.J, self.seed, self.resample = J, seed, bool(resample)
        self.backend = check_backend(backend)
        self._generator = torch.Generator().manual_seed(seed)
        self._noise: Optional[torch.Tensor] = None

    @property
    def data(self) -> torch.Tensor:
        return self.classes.data

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """The copies ``xi [J, C, H, W]`` (``like``'s dtype and device)."""
        shape = (self.J, *like.shape[1:])
        if self.resample:
            xi = torch.randn(shape, generator=self._generator, dtype=torch.float64)
        else:
            if self._noise is None or self._noise.shape != shape:
                self._noise = torch.randn(shape, generator=torch.Generator().manual_seed(self.seed),
                                          dtype=torch.float64)
            xi = self._noise
        return xi.to(dtype=like.dtype, device=like.device)

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        _check_query(z, self.data)
        sig = check_sigma(sigma, z.shape[0], z)
        xi = self.noise(z)
        J = self.J
        out = torch.empty_like(z)
        for label, rows in self.classes.groups(z.shape[0], class_labels):
            b = rows.numel()
            copies = (z[rows][:, None] + self.s * xi[None]).reshape(b * J, *z.shape[1:])
            x0 = patch_posterior_mean(copies, self.classes.subset(label), sig[rows].repeat_interleave(J), 1,
                                      mode="ideal", backend=self.backend)
            out[rows] = x0.reshape(b, J, *z.shape[1:]).mean(1)
        return out


# --------------------------------------------------------------------------- #
# pca_locality
# --------------------------------------------------------------------------- #

SMALL_DIAGONAL_RULES = ("absolute", "relative")


def wiener_mask(evals: torch.Tensor, evecs: torch.Tensor, sigma: float, theta: float, *,
                binary: bool = True, eps: float = 1e-6, small_diagonal: str = "absolute") -> torch.Tensor:
    """Lukoianov et al.'s mask ``M(sigma) [D, D]`` from ``Sigma = U diag(l) U^T`` (docs/peers.md, ``pca_locality``).

    ``L = U diag(l / (l + sigma^2)) U^T`` (the Wiener operator); ``R[n, m] = |L[n, m]| / d[n]`` (each row
    of ``|L|`` over its diagonal entry ``d[n] = L[n, n]``); ``M = [R >= theta * max R]`` (``binary``) or
    ``R * [R >= theta * max R]``. ``M[n, m]`` weights input ``n`` for output ``m``.

    Rows with a tiny diagonal (pixels with almost no variance), ``small_diagonal``:

    - ``"absolute"`` (the published rule, the default): where ``|L[n, n]| < eps`` (an absolute ``1e-6``),
      ``L[n, n]`` is set to 1 and the row is divided by 1; so ``R[n, n] = 1`` and the rest of the row
      keeps its (tiny) entries;
    - ``"relative"`` (earlier versions of this project): rows with ``L[n, n] <= eps * max_n L[n, n]`` are
      zero; the others are divided by their diagonal. A near-constant pixel whose diagonal lies between
      the two cut-offs then has a large ratio, sets ``max R`` and with it the threshold of the whole mask.
    """
    evals = evals.double().clamp_min(0)
    evecs = evecs.double()
    L = (evecs * (evals / (evals + float(sigma) ** 2))[None, :]) @ evecs.T
    diag = L.diagonal()
    if small_diagonal == "absolute":
        small = diag.abs() < eps
        L = L.clone()
        L.diagonal()[small] = 1.0              # the published code writes the 1 into the matrix too
        R = L.abs() / L.diagonal()[:, None]
    elif small_diagonal == "relative":
        ok = diag > eps * diag.max().clamp_min(torch.finfo(torch.float64).tiny)
        R = torch.where(ok[:, None], L.abs() / torch.where(ok, diag, torch.ones_like(diag))[:, None],
                        torch.zeros_like(L))
    else:
        raise ValueError(f"small_diagonal must be one of {', '.join(SMALL_DIAGONAL_RULES)}; got {small_diagonal!r}")
    keep = R >= theta * R.max()
    return keep.double() if binary else torch.where(keep, R, torch.zeros_like(R))


class PCALocalityDenoiser:
    """PCA locality machine (Lukoianov et al. 2025, docs/theory.md §3.6) on the masked-local operator.

    With the data covariance ``Sigma = U diag(l) U^T`` (one eigendecomposition per class),
    the mask ``M(sigma)`` is :func:`wiener_mask` and, per output unit ``m``,
    ``x0_hat_m = sum_i softmax_i(-sum_n M_nm (z_n - phi^i_n)^2 / (2 sigma^2 tau)) phi^i_m``,
    the softmax exact over every training image (the published code normalises per data batch).

    Args:
        theta: mask threshold relative to the largest entry (default 0.005 for one channel,
            0.05 for more: the values for MNIST-like and CIFAR-like data; the published default is 0.02).
            ``theta = 0`` gives the all-ones mask, i.e. the ideal machine.
        tau: softmax temperature (> 0).
        channels: ``"full"`` (as published): units are channel-pixels, ``Sigma`` and ``M`` are
            ``[C*H*W, C*H*W]``, one softmax per (channel, pixel). ``"shared"``: units are pixels,
            ``Sigma`` is the ``[H*W, H*W]`` pixel covariance pooled over channels, the mask is
            shared by the channels and one softmax per pixel covers all of them. Same for ``C = 1``.
        binary: 0/1 mask (as published) or the thresholded normalised weights.
        small_diagonal: ``"absolute"`` (default, as published) or ``"relative"``: the rule for pixels
            whose Wiener diagonal is tiny (:func:`wiener_mask`).
        ddof: the covariance is ``sum (x - mean)(x - mean)^T / (N - ddof)``: 0 (default, the
            maximum-likelihood covariance) or 1 (the unbiased one of the published code).
        mask: a fixed mask instead of the Wiener one (``[U, U]`` for the chosen ``channels``),
            used at every sigma; ``torch.ones`` gives the ideal machine.
        max_cached: masks kept (an LRU keyed by class and sigma value; a mask depends on sigma).
    """

    def __init__(self, data, *, theta: Optional[float] = None, tau: float = 1.0, channels: str = "full",
                 binary: bool = True, mask: Optional[torch.Tensor] = None, labels=None,
                 class_label: Optional[int] = None, backend: str = "auto", chunk_size: Optional[int] = None,
                 max_cached: int = 64, small_diagonal: str = "absolute", ddof: int = 0):
        self.classes = TrainingClasses(data, labels, class_label)
        C, H, W = self.data.shape[1:]
        if theta is None:
            theta = 0.005 if C == 1 else 0.05
        self.theta = _positive("theta", theta, allow_zero=True)
        if self.theta > 1:
            raise ValueError(f"theta is relative to the largest mask entry and must lie in [0, 1]; got {theta}")
        self.tau = _positive("tau", tau)
        self.channels = check_choice("channels", channels, ("full", "shared"))
        self.binary = bool(binary)
        self.small_diagonal = check_choice("small_diagonal", small_diagonal, SMALL_DIAGONAL_RULES)
        if isinstance(ddof, bool) or ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 (divide the covariance by N) or 1 (by N - 1); got {ddof!r}")
        self.ddof = int(ddof)
        self.backend = check_backend(backend)
        self.chunk_size = chunk_size
        self.units = C * H * W if self.channels == "full" else H * W
        self.fixed_support: Optional[MaskedSupport] = None
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.float64)
            if tuple(mask.shape) != (self.units, self.units):
                raise ValueError(f"mask must be [{self.units}, {self.units}] for channels={self.channels!r} "
                                 f"and {C}x{H}x{W} images; got {list(mask.shape)}")
            self.fixed_support = support_from_mask(mask)
        self.max_cached = max(1, int(max_cached))
        self._eig: dict = {}
        self._masks: OrderedDict = OrderedDict()

    @property
    def data(self) -> torch.Tensor:
        return self.classes.data

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        """[n, C, H, W] -> [n, C_unit, U]."""
        n = x.shape[0]
        return x.reshape(n, 1, -1) if self.channels == "full" else x.reshape(n, x.shape[1], -1)

    def eig(self, label: Optional[int]):
        """``(eigenvalues [U], eigenvectors [U, U])`` of the (class's) covariance, float64."""
        if label not in self._eig:
            x = self.classes.subset(label).double()
            x = x.reshape(x.shape[0], -1) if self.channels == "full" else x.reshape(-1, x.shape[2] * x.shape[3])
            centred = x - x.mean(0)
            cov = centred.T @ centred / max(1, x.shape[0] - self.ddof)
            evals, evecs = torch.linalg.eigh(cov)
            self._eig[label] = (evals.clamp_min(0), evecs)
        return self._eig[label]

    def mask(self, sigma: float, label: Optional[int] = None) -> torch.Tensor:
        """The dense mask ``M(sigma) [U, U]`` (``M[n, m]``: input ``n`` for output unit ``m``)."""
        evals, evecs = self.eig(label)
        return wiener_mask(evals, evecs, sigma, self.theta, binary=self.binary, small_diagonal=self.small_diagonal)

    def support(self, sigma: float, label: Optional[int] = None) -> MaskedSupport:
        if self.fixed_support is not None:
            return self.fixed_support
        key = (label, float(sigma))
        if key in self._masks:
            self._masks.move_to_end(key)
            return self._masks[key]
        sup = support_from_mask(self.mask(sigma, label))
        self._masks[key] = sup
        while len(self._masks) > self.max_cached:
            self._masks.popitem(last=False)
        return sup

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        _check_query(z, self.data)
        sig = check_sigma(sigma, z.shape[0], z)
        out = torch.empty_like(z)
        scale = math.sqrt(self.tau)
        for label, rows in self.classes.groups(z.shape[0], class_labels):
            data = self._view(self.classes.subset(label).to(z.dtype))
            values = sig[rows]
            for s in values.unique().tolist():  # the mask depends on sigma
                idx = rows[values == s]
                mean, _ = masked_local_posterior(self._view(z[idx]), data, sig[idx] * scale, self.support(s, label),
                                                 backend=self.backend, chunk_size=self.chunk_size)
                out[idx] = mean.reshape(out[idx].shape)
        return out


# --------------------------------------------------------------------------- #
# pspc
# --------------------------------------------------------------------------- #

class PatchPosteriorAverage:
    """Patch posterior average, PSPC-square (Niedoba et al. 2025, docs/theory.md §3.6).

    For every ``P x P`` crop ``K`` lying inside the image,
    ``E[phi_K | z] = sum_i softmax_i(-|z_K - phi^i_K|^2 / (2 sigma^2)) phi^i_K`` over the
    training crops at the same place (all channels, exact softmax); each pixel averages
    ``E[phi_K | z]`` over the crops ``K`` covering it. Not the local machine: the whole
    crop's posterior mean is kept, then averaged, instead of one softmax per pixel.
    A crop is ``min(P, H) x min(P, W)``, so ``P >= max(H, W)`` is one crop, the ideal machine,
    and ``P = 1`` is the local machine with ``P = 1``.

    Args:
        P: odd crop size or a callable ``sigma -> P`` (a patch-size schedule).
    """

    def __init__(self, data, P: PatchSize = 3, *, labels=None, class_label: Optional[int] = None,
                 backend: str = "auto", chunk_size: Optional[int] = None):
        self.classes = TrainingClasses(data, labels, class_label)
        self.P = P if callable(P) else check_patch_size(P)
        self.backend = check_backend(backend)
        self.chunk_size = chunk_size
        self._supports: dict[int, tuple[MaskedSupport, torch.Tensor]] = {}

    @property
    def data(self) -> torch.Tensor:
        return self.classes.data

    def patch_size(self, sigma: float) -> int:
        return patch_size_at(self.P, sigma)

    def support(self, P: int) -> tuple[MaskedSupport, torch.Tensor]:
        """Crop supports and the number of crops covering each pixel ``[H*W]``."""
        H, W = self.data.shape[2:]
        key = min(P, max(H, W))
        if key not in self._supports:
            sup = square_crop_support(H, W, P)
            self._supports[key] = (sup, torch.bincount(sup.out_index, minlength=H * W))
        return self._supports[key]

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        _check_query(z, self.data)
        sig = check_sigma(sigma, z.shape[0], z)
        B, C, H, W = z.shape
        out = torch.empty_like(z)
        for label, rows in self.classes.groups(B, class_labels):
            data = self.classes.subset(label).to(z.dtype).reshape(-1, C, H * W)
            for P, idx in by_patch_size(self.patch_size, sig, rows):
                sup, count = self.support(P)
                mean, _ = masked_local_posterior(z[idx].reshape(-1, C, H * W), data, sig[idx], sup,
                                                 backend=self.backend, chunk_size=self.chunk_size)
                total = mean.new_zeros(idx.numel(), C, H * W).index_add_(2, sup.out_index.to(z.device), mean)
                out[idx] = (total / count.to(z.device, z.dtype)).reshape(-1, C, H, W)
        return out
