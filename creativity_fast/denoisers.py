"""Training-free denoisers with the k-diffusion contract ``denoiser(z, sigma) -> x0_hat`` (SPEC 2, 3).

- ``PatchMachine``: the ideal (IS), local (LS) and equivariant local (ELS) score
  machines, one class over ``patch_posterior_mean`` with ``mode`` in
  ``ideal | local | els``; ``IdealDenoiser``, ``LocalDenoiser`` and ``ELSDenoiser`` fix it.
- ``GaussianDenoiser``: the linear (Wiener) machine of SPEC 3.5.

All are class-conditional through labels: give the training labels once, then
either a fixed ``class_label`` or per-sample ``class_labels [B]`` at call time; the
softmax then runs over that class's images only.

The patch size may follow a schedule: ``P`` is an int, or any callable
``sigma -> P`` (``schedules.PatchSchedule`` maps the sampler's sigmas to the
published or calibrated per-step sizes).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ._validate import check_choice, check_images, check_patch_size
from .dictionary import BOUNDARIES, KEY_SETS, MODES
from .ops import PatchPosterior, patch_posterior_mean

PatchSize = Union[int, Callable[[float], int]]


def _sigma_vector(sigma, batch: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(sigma, torch.Tensor):
        return sigma.to(like.dtype).reshape(-1).expand(batch) if sigma.numel() == 1 else sigma.to(like.dtype)
    return torch.full((batch,), float(sigma), dtype=like.dtype, device=like.device)


class _ClassConditional:
    """Holds the training set and its per-class subsets: ``data [N, C, H, W]``, ``labels [N]``."""

    def __init__(self, data: torch.Tensor, labels: Optional[torch.Tensor], class_label: Optional[int]):
        self.data = check_images("data", data)
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1).long()
            if labels.shape[0] != data.shape[0]:
                raise ValueError(f"labels has {labels.shape[0]} entries but data has {data.shape[0]} images")
        self.labels = labels
        self.class_label = class_label
        self._subsets: dict[int, torch.Tensor] = {}
        if class_label is not None:
            self.subset(class_label)  # fail early on an absent class

    def subset(self, label: Optional[int]) -> torch.Tensor:
        """Training images of one class (all images for ``None``)."""
        if label is None:
            return self.data
        if self.labels is None:
            raise ValueError("class-conditional sampling needs the training labels (labels=...)")
        label = int(label)
        if label not in self._subsets:
            index = (self.labels == label).nonzero().reshape(-1)
            if index.numel() == 0:
                present = sorted(set(self.labels.tolist()))
                raise ValueError(f"class_label {label} has no training images; labels present: {present}")
            self._subsets[label] = self.data[index]
        return self._subsets[label]

    def groups(self, batch: int, class_labels) -> list[tuple[Optional[int], torch.Tensor]]:
        """``(label, sample indices)`` groups; one group when not class-conditional per sample."""
        if class_labels is None:
            return [(self.class_label, torch.arange(batch))]
        class_labels = torch.as_tensor(class_labels).reshape(-1).long()
        if class_labels.shape[0] != batch:
            raise ValueError(f"class_labels has {class_labels.shape[0]} entries for a batch of {batch}")
        return [(int(c), (class_labels == c).nonzero().reshape(-1)) for c in class_labels.unique()]


class PatchMachine:
    """IS / LS / ELS machine as a denoiser (SPEC 3.1-3.3).

    Args:
        data: [N, C, H, W] training images in [-1, 1].
        mode: ``"ideal" | "local" | "els"``.
        P: patch size, an odd int or a callable ``sigma -> P`` (a patch-size schedule).
        boundary, keys, backend: as ``patch_posterior_mean``.
        labels: [N] training labels for class-conditional sampling.
        class_label: sample from this class only (per-sample ``class_labels`` at call time override it).
        key_logw: [N, H, W] (or [N] for ideal) log prior per key.
        record_stats: keep the last call's ``PatchPosterior`` in ``last_stats`` (provenance maps).

    Call: ``machine(z [B,C,H,W], sigma float|[B], class_labels=None) -> x0_hat [B,C,H,W]``.
    """

    def __init__(self, data, mode: str = "els", P: PatchSize = 3, *, boundary: str = "zeros", keys: str = "all",
                 labels=None, class_label: Optional[int] = None, key_logw: Optional[torch.Tensor] = None,
                 backend: str = "auto", record_stats: bool = False):
        self.mode = check_choice("mode", mode, MODES)
        self.boundary = check_choice("boundary", boundary, BOUNDARIES)
        self.keys = check_choice("keys", keys, KEY_SETS)
        if not callable(P):
            P = check_patch_size(P)
        self.P = P
        self.classes = _ClassConditional(data, labels, class_label)
        self.key_logw = key_logw
        self.backend = backend
        self.record_stats = record_stats
        self.last_stats: Optional[PatchPosterior] = None

    @property
    def data(self) -> torch.Tensor:
        return self.classes.data

    def patch_size(self, sigma: float) -> int:
        """P used at noise level ``sigma``."""
        return check_patch_size(self.P(sigma) if callable(self.P) else self.P, "P (from the patch schedule)")

    def _key_logw_for(self, label: Optional[int]):
        if self.key_logw is None or label is None:
            return self.key_logw
        return self.key_logw[(self.classes.labels == int(label)).nonzero().reshape(-1)]

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        check_images("z", z)
        sig = _sigma_vector(sigma, z.shape[0], z)
        x0_hat = torch.empty_like(z)
        stats = [None] * z.shape[0] if self.record_stats else None
        for label, rows in self.classes.groups(z.shape[0], class_labels):
            data = self.classes.subset(label)
            key_logw = self._key_logw_for(label)
            # Samples may sit at different sigmas (hence patch sizes): one call per P.
            sizes = torch.tensor([self.patch_size(float(s)) for s in sig[rows]], dtype=torch.long)
            for P in sizes.unique().tolist():
                idx = rows[sizes == P]
                out = patch_posterior_mean(z[idx], data, sig[idx], P, mode=self.mode, boundary=self.boundary,
                                           keys=self.keys, key_logw=key_logw, return_stats=self.record_stats,
                                           backend=self.backend)
                if self.record_stats:
                    x0_hat[idx] = out.x0_hat
                    argmax = out.argmax.clone()
                    if label is not None:  # report image ids in the full training set
                        argmax[..., 0] = (self.classes.labels == label).nonzero().reshape(-1)[argmax[..., 0]]
                    for j, i in enumerate(idx.tolist()):
                        stats[i] = (out.lse[j], argmax[j])
                else:
                    x0_hat[idx] = out
        if self.record_stats:
            self.last_stats = PatchPosterior(x0_hat, torch.stack([s[0] for s in stats]),
                                             torch.stack([s[1] for s in stats]))
        return x0_hat


def IdealDenoiser(data, **kwargs) -> PatchMachine:
    """Ideal score machine (SPEC 3.1): memorizes the training set."""
    kwargs.pop("P", None)
    return PatchMachine(data, "ideal", 1, **kwargs)


def LocalDenoiser(data, P: PatchSize = 3, **kwargs) -> PatchMachine:
    """Local score machine (SPEC 3.2): patches at the same location only."""
    return PatchMachine(data, "local", P, **kwargs)


def ELSDenoiser(data, P: PatchSize = 3, **kwargs) -> PatchMachine:
    """Equivariant local score machine (SPEC 3.3): every admissible patch of every image."""
    return PatchMachine(data, "els", P, **kwargs)


class GaussianDenoiser:
    """Gaussian (linear) machine, SPEC 3.5: ``x0_hat = mu + Sigma (Sigma + sigma^2 I)^-1 (z - mu)``.

    With ``Sigma = U diag(l) U^T`` (one eigendecomposition at construction) this is
    ``mu + U diag(l / (l + sigma^2)) U^T (z - mu)``: the Wiener filter of the data's
    mean and pixel covariance (Wang & Vastola). Class-conditional like ``PatchMachine``.
    """

    def __init__(self, data, *, labels=None, class_label: Optional[int] = None):
        self.classes = _ClassConditional(data, labels, class_label)
        self._moments: dict[Optional[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def moments(self, label: Optional[int]):
        """``(mean [D], eigenvalues [D], eigenvectors [D, D])`` in float64 for one class."""
        if label not in self._moments:
            x = self.classes.subset(label).reshape(-1, self.classes.data[0].numel()).double()
            mean = x.mean(0)
            centred = x - mean
            cov = centred.T @ centred / max(1, x.shape[0])
            evals, evecs = torch.linalg.eigh(cov)
            self._moments[label] = (mean, evals.clamp_min(0), evecs)
        return self._moments[label]

    def __call__(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        check_images("z", z)
        sig = _sigma_vector(sigma, z.shape[0], z).double()
        out = torch.empty_like(z)
        for label, rows in self.classes.groups(z.shape[0], class_labels):
            mean, evals, evecs = self.moments(label)
            coeff = (z[rows].reshape(len(rows), -1).double() - mean) @ evecs  # [b, D]
            shrink = evals[None, :] / (evals[None, :] + sig[rows, None] ** 2)
            out[rows] = (mean + (coeff * shrink) @ evecs.T).to(z.dtype).reshape(out[rows].shape)
        return out


# Registry of denoisers by name, used by make_denoiser and every CLI --machine option.
# Other modules (attention, peers) add theirs with register_machine.
_FACTORIES: dict[str, Callable] = {}


def register_machine(name: str):
    """Decorator: register ``factory(data, *, P, labels, class_label, boundary, keys, backend, **opts)``."""
    def wrap(factory):
        _FACTORIES[name] = factory
        return factory
    return wrap


def machine_names() -> tuple[str, ...]:
    return tuple(_FACTORIES)


def make_denoiser(machine: str, data, **kwargs):
    """Build a registered denoiser by name (``ideal | local | els | gaussian`` and any added ones)."""
    check_choice("machine", machine, machine_names())
    try:
        return _FACTORIES[machine](data, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        bad = str(exc).split("unexpected keyword argument")[-1].strip()
        raise ValueError(f"machine {machine!r} does not take the option {bad}") from None


for _mode in MODES:
    register_machine(_mode)(lambda data, _mode=_mode, P=3, **kw: PatchMachine(data, _mode, 1 if _mode == "ideal" else P, **kw))


@register_machine("gaussian")
def _gaussian(data, *, labels=None, class_label=None, **_unused):
    return GaussianDenoiser(data, labels=labels, class_label=class_label)
