"""Training-free denoisers with the k-diffusion contract ``denoiser(z, sigma) -> x0_hat`` (docs/theory.md §2, §3).

- :class:`PatchMachine`: the ideal (IS), local (LS) and equivariant local (ELS) score
  machines, one class over ``patch_posterior_mean`` with ``mode`` in
  ``ideal | local | els``; :class:`IdealDenoiser`, :class:`LocalDenoiser` and
  :class:`ELSDenoiser` fix the mode.
- :class:`GaussianDenoiser`: the linear (Wiener) machine of §3.5.

All are class-conditional through labels (``classes.TrainingClasses``): give the
training labels once, then either a fixed ``class_label`` or per-sample
``class_labels [B]`` at call time; the softmax then runs over that class's images only.

The patch size may follow a schedule: ``P`` is an int, or any callable
``sigma -> P`` (``schedules.PatchSchedule`` maps the sampler's sigmas to the
published or calibrated per-step sizes); :func:`by_patch_size` groups a batch so
that each distinct ``P`` is one operator call.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ._validate import check_backend, check_choice, check_images, check_patch_size
from .classes import TrainingClasses
from .dictionary import BOUNDARIES, KEY_SETS, MODES
from .ops import PatchPosterior, patch_posterior_mean

PatchSize = Union[int, Callable[[float], int]]
# A log prior per key: a tensor ([N, H, W], or [N] for ideal), or a callable P -> tensor or None
# (a prior that depends on the patch size, as the attention prior of AELS does).
KeyLogW = Union[torch.Tensor, Callable[[int], Optional[torch.Tensor]], None]


def sigma_vector(sigma, batch: int, like: torch.Tensor) -> torch.Tensor:
    """``sigma`` (a float or a [1] / [B] tensor) as a [B] tensor of ``like``'s dtype."""
    if isinstance(sigma, torch.Tensor):
        return sigma.to(like.dtype).reshape(-1).expand(batch) if sigma.numel() == 1 else sigma.to(like.dtype)
    return torch.full((batch,), float(sigma), dtype=like.dtype, device=like.device)


def patch_size_at(P: PatchSize, sigma: float) -> int:
    """The patch size at noise level ``sigma``: ``P`` itself or ``P(sigma)`` for a schedule."""
    return check_patch_size(P(sigma) if callable(P) else P, "P (from the patch schedule)")


def by_patch_size(patch_size: Callable[[float], int], sigma: torch.Tensor,
                  rows: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(patch size, sample indices)`` for each distinct ``patch_size(sigma)`` over ``sigma[rows]`` (ascending).

    Samples of one batch may sit at different sigmas, hence patch sizes; each group is one
    operator call. ``sigma [B]``, ``rows`` [b] int64 indices into the batch.
    """
    sizes = torch.tensor([patch_size(float(s)) for s in sigma[rows]], dtype=torch.long)
    return [(size, rows[sizes == size]) for size in sizes.unique().tolist()]


class PatchMachine:
    """IS / LS / ELS machine as a denoiser (docs/theory.md §3.1-3.3).

    Args:
        data: [N, C, H, W] training images in [-1, 1] (or a ``TrainingClasses`` holding them).
        mode: ``"ideal" | "local" | "els"``.
        P: patch size, an odd int or a callable ``sigma -> P`` (a patch-size schedule).
        boundary, keys, backend: as ``patch_posterior_mean``.
        labels: [N] training labels for class-conditional sampling.
        class_label: sample from this class only (per-sample ``class_labels`` at call time override it).
        key_logw: log prior per key, [N, H, W] (or [N] for ideal), or a callable ``P -> prior``.
        record_stats: keep the last call's ``PatchPosterior`` in ``last_stats`` (provenance maps,
            with image ids in the full training set).

    Call: ``machine(z [B,C,H,W], sigma float|[B], class_labels=None) -> x0_hat [B,C,H,W]``.
    """

    def __init__(self, data, mode: str = "els", P: PatchSize = 3, *, boundary: str = "zeros", keys: str = "all",
                 labels=None, class_label: Optional[int] = None, key_logw: KeyLogW = None,
                 backend: str = "auto", record_stats: bool = False):
        self.mode = check_choice("mode", mode, MODES)
        self.boundary = check_choice("boundary", boundary, BOUNDARIES)
        self.keys = check_choice("keys", keys, KEY_SETS)
        self.P = P if callable(P) else check_patch_size(P)
        self.classes = data if isinstance(data, TrainingClasses) else TrainingClasses(data, labels, class_label)
        self.key_logw = key_logw
        self.backend = check_backend(backend)
        self.record_stats = record_stats
        self.last_stats: Optional[PatchPosterior] = None

    @property
    def data(self) -> torch.Tensor:
        return self.classes.data

    def patch_size(self, sigma: float) -> int:
        """P used at noise level ``sigma``."""
        return patch_size_at(self.P, sigma)

    def key_logw_for(self, P: int, label: Optional[int]) -> Optional[torch.Tensor]:
        """The log prior of the keys of ``subset(label)`` at patch size ``P`` (None: uniform)."""
        prior = self.key_logw(P) if callable(self.key_logw) else self.key_logw
        return self.classes.select(label, prior)

    def posterior(self, z: torch.Tensor, sigma: torch.Tensor, P: int, label: Optional[int]):
        """``(x0_hat, lse or None, argmax or None)`` of one operator call; argmax with global image ids."""
        out = patch_posterior_mean(z, self.classes.subset(label), sigma, P, mode=self.mode, boundary=self.boundary,
                                   keys=self.keys, key_logw=self.key_logw_for(P, label),
                                   return_stats=self.record_stats, backend=self.backend)
        if not self.record_stats:
            return out, None, None
        argmax = out.argmax.clone()
        argmax[..., 0] = self.classes.global_ids(label, argmax[..., 0])
        return out.x0_hat, out.lse, argmax

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        check_images("z", z)
        B, _, H, W = z.shape
        sig = sigma_vector(sigma, B, z)
        x0_hat = torch.empty_like(z)
        lse = z.new_empty(B, H, W) if self.record_stats else None
        argmax = torch.empty(B, H, W, 2, dtype=torch.long, device=z.device) if self.record_stats else None
        for label, rows in self.classes.groups(B, class_labels):
            for P, idx in by_patch_size(self.patch_size, sig, rows):
                out, out_lse, out_argmax = self.posterior(z[idx], sig[idx], P, label)
                x0_hat[idx] = out
                if self.record_stats:
                    lse[idx] = out_lse
                    argmax[idx] = out_argmax
        if self.record_stats:
            self.last_stats = PatchPosterior(x0_hat, lse, argmax)
        return x0_hat


class IdealDenoiser(PatchMachine):
    """Ideal score machine (docs/theory.md §3.1): memorizes the training set."""

    def __init__(self, data, *, labels=None, class_label: Optional[int] = None, key_logw: KeyLogW = None,
                 backend: str = "auto", record_stats: bool = False):
        super().__init__(data, "ideal", 1, labels=labels, class_label=class_label, key_logw=key_logw,
                         backend=backend, record_stats=record_stats)


class LocalDenoiser(PatchMachine):
    """Local score machine (docs/theory.md §3.2): patches at the same location only."""

    def __init__(self, data, P: PatchSize = 3, *, boundary: str = "zeros", labels=None,
                 class_label: Optional[int] = None, key_logw: KeyLogW = None, backend: str = "auto",
                 record_stats: bool = False):
        super().__init__(data, "local", P, boundary=boundary, labels=labels, class_label=class_label,
                         key_logw=key_logw, backend=backend, record_stats=record_stats)


class ELSDenoiser(PatchMachine):
    """Equivariant local score machine (docs/theory.md §3.3): every admissible patch of every image."""

    def __init__(self, data, P: PatchSize = 3, *, boundary: str = "zeros", keys: str = "all", labels=None,
                 class_label: Optional[int] = None, key_logw: KeyLogW = None, backend: str = "auto",
                 record_stats: bool = False):
        super().__init__(data, "els", P, boundary=boundary, keys=keys, labels=labels, class_label=class_label,
                         key_logw=key_logw, backend=backend, record_stats=record_stats)


class GaussianDenoiser:
    """Gaussian (linear) machine, docs/theory.md §3.5: ``x0_hat = mu + Sigma (Sigma + sigma^2 I)^-1 (z - mu)``.

    With ``Sigma = U diag(l) U^T`` (one eigendecomposition per class, on first use) this is
    ``mu + U diag(l / (l + sigma^2)) U^T (z - mu)``: the Wiener filter of the data's
    mean and pixel covariance (Wang & Vastola). Class-conditional like ``PatchMachine``.

    Args:
        data: [N, C, H, W] training images (or a ``TrainingClasses``); labels, class_label as ``PatchMachine``.
    """

    def __init__(self, data, *, labels=None, class_label: Optional[int] = None):
        self.classes = data if isinstance(data, TrainingClasses) else TrainingClasses(data, labels, class_label)
        self._moments: dict[Optional[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def data(self) -> torch.Tensor:
        return self.classes.data

    def _sum(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """Sum of ``t`` over every part of the training set (one part here; ranks when sharded)."""
        return t

    def moments(self, label: Optional[int]):
        """``(mean [D], eigenvalues [D], eigenvectors [D, D])`` in float64 for one class."""
        if label not in self._moments:
            data = self.classes.subset(label)
            x = data.reshape(data.shape[0], self.data.shape[1:].numel()).double()
            packed = self._sum(torch.cat([x.new_tensor([float(x.shape[0])]), x.sum(0)]), "the data mean")
            n = float(packed[0])
            if n == 0:
                what = "the training set" if label is None else f"class_label {label}"
                raise ValueError(f"{what} has no training images on any rank")
            mean = packed[1:] / n
            centred = x - mean
            cov = self._sum(centred.T @ centred, "the data covariance") / n
            evals, evecs = torch.linalg.eigh(cov)
            self._moments[label] = (mean, evals.clamp_min(0), evecs)
        return self._moments[label]

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        check_images("z", z)
        sig = sigma_vector(sigma, z.shape[0], z).double()
        out = torch.empty_like(z)
        for label, rows in self.classes.groups(z.shape[0], class_labels):
            mean, evals, evecs = self.moments(label)
            coeff = (z[rows].reshape(len(rows), -1).double() - mean) @ evecs  # [b, D]
            shrink = evals[None, :] / (evals[None, :] + sig[rows, None] ** 2)
            out[rows] = (mean + (coeff * shrink) @ evecs.T).to(z.dtype).reshape(out[rows].shape)
        return out
