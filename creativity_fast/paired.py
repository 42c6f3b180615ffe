r"""The paired-patch machine (PELS, docs/theory.md §3.7): the optimum of a CNN with one top-1 attention layer.

A network whose output at pixel ``x`` is one function of two patches, its own and the
one it attends to, ``F(Pi_x z, Pi_{y*(x)} z)``, has (under the noised empirical
distribution, with a training location's partner taken on the clean training image)
the closed-form optimum

    x0_hat(x) = sum_{mu,u} w_{mu,u}(x) phi^mu(u) / sum w,
    w_{mu,u}(x) = [u admissible for x, as in ELS]
                  * exp(-(|Pi_x z - Pi_u phi^mu|^2 + beta |Pi2_{y*(x)} z - Pi2_{a_mu(u)} phi^mu|^2) / (2 sigma^2)),

computed by the operator ``paired_patch_posterior_mean``. Its parts here:

- :class:`TrainingPartners`: the partner ``a_mu(u)`` of every training location (top-1
  attention within each training image, cached per (data, attention patch, exclusion))
  and the attention centre (the mean patch of the whole set);
- :class:`PairedPosterior`: the machine's step: the query partners ``y*(x)`` from
  ``patch_argmax_attention`` on the current sample (``attend_on="z"``) or on that step's
  ELS estimate (``"x0"``), then the paired posterior mean;
- :class:`PELSDenoiser` (machine ``"pels"``). The sharded form is in
  ``distributed.machines``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._validate import check_beta, check_choice, check_exclude, check_patch_size
from .attention import training_partners
from .denoisers import PatchMachine, PatchSize
from .ops import mean_patch, paired_patch_posterior_mean, patch_argmax_attention

__all__ = ["ATTEND_ON", "PELSDenoiser", "PairedPosterior", "TrainingPartners"]

ATTEND_ON = ("z", "x0")


class TrainingPartners:
    """Partners of the training locations and the attention centre, per attention patch size.

    Args:
        data: [N, C, H, W] training images.
        exclude: the exclusion radius of the attention (default: the attention patch size:
            the two patches do not overlap).
        backend: as ``patch_argmax_attention``.
    """

    def __init__(self, data: torch.Tensor, *, exclude: Optional[int] = None, backend: str = "auto"):
        if exclude is not None:
            check_exclude(exclude, 1)
        self.data, self.exclude, self.backend = data, exclude, backend
        self._centers: dict[int, torch.Tensor] = {}

    def center(self, Pa: int) -> torch.Tensor:
        """The embedding centre ``[C, Pa, Pa]``: the mean patch of the whole training set."""
        if Pa not in self._centers:
            self._centers[Pa] = mean_patch(self.data, Pa)
        return self._centers[Pa]

    def partners(self, Pa: int) -> torch.Tensor:
        """``a [N, H, W]`` int64: the top-1 partner of every training location (cached)."""
        return training_partners(self.data, Pa, exclude=self.exclude, backend=self.backend)


class PairedPosterior:
    """The step of the paired-patch machine, mixed into a ``PatchMachine`` (plain or sharded) in mode ``"els"``.

    ``posterior(z, sigma, P, label)`` finds the query partners and calls
    ``paired_posterior``, which the concrete class defines (one process:
    :class:`PELSDenoiser`; sharded: ``distributed.machines.DistributedPELSDenoiser``). The
    ELS estimate used by ``attend_on="x0"`` is the base class's own posterior, so it is
    sharded too when the machine is.
    """

    def _configure(self, partners: TrainingPartners, beta: float, P2: Optional[int], attention_P: Optional[int],
                   attend_on: str) -> None:
        self.partners = partners
        self.beta = check_beta(beta)
        self.P2 = None if P2 is None else check_patch_size(P2, "P2")
        self.attention_P = None if attention_P is None else check_patch_size(attention_P, "attention_P")
        self.attend_on = check_choice("attend_on", attend_on, ATTEND_ON)

    def attention_size(self, P: int) -> int:
        """The attention patch size used with ELS patch size ``P`` (default ``P``)."""
        return self.attention_P if self.attention_P is not None else P

    def partner_window(self, P: int) -> int:
        """The partner window size ``P2`` used with ELS patch size ``P`` (default ``P``)."""
        return self.P2 if self.P2 is not None else P

    def query_partners(self, z: torch.Tensor, sigma: torch.Tensor, P: int, label: Optional[int]) -> torch.Tensor:
        """``y* [b, H, W]``: top-1 attention on ``z`` or on the step's ELS estimate, with the training centre."""
        Pa = self.attention_size(P)
        center = self.partners.center(Pa).to(z.dtype)  # first, on every rank (a collective when sharded)
        source = z if self.attend_on == "z" else super().posterior(z, sigma, P, label)[0]
        return patch_argmax_attention(source, Pa, exclude=self.partners.exclude, center=center,
                                      backend=self.partners.backend)

    def posterior(self, z: torch.Tensor, sigma: torch.Tensor, P: int, label: Optional[int]):
        if self.beta == 0:  # ELS exactly: no attention needed
            return super().posterior(z, sigma, P, label)
        query_partner = self.query_partners(z, sigma, P, label)
        key_partner = self.classes.select(label, self.partners.partners(self.attention_size(P)))
        return self.paired_posterior(z, sigma, P, label, query_partner, key_partner)


class PELSDenoiser(PairedPosterior, PatchMachine):
    r"""Paired-patch machine (docs/theory.md §3.7): ELS whose keys must also agree through their attention partners.

    Args:
        data: [N, C, H, W] training images.
        P: ELS patch size (int or ``sigma -> P`` schedule).
        beta: weight (>= 0) of the partner distance: 0 is ELS, 1 the optimum of the
            attention network, larger values weight agreement with the partner more.
        P2: partner window size (default: the ELS ``P`` of the step).
        attention_P: patch size of the attention embedding (default: the ELS ``P`` of the step).
        exclude: exclusion radius of the attention (default: the attention patch size).
        attend_on: ``"z"`` (attention on the current sample, what the network sees) or
            ``"x0"`` (on the step's ELS estimate).
        boundary, keys, labels, class_label, backend, record_stats: as ``ELSDenoiser``.
            The attention patches are always zero-extended; the partner windows follow ``boundary``.

    The training partners are computed once per attention patch size (cached per data set);
    the query partners at every call.
    """

    def __init__(self, data, P: PatchSize = 3, *, beta: float = 1.0, P2: Optional[int] = None,
                 attention_P: Optional[int] = None, exclude: Optional[int] = None, attend_on: str = "z",
                 boundary: str = "zeros", keys: str = "all", labels=None, class_label: Optional[int] = None,
                 backend: str = "auto", record_stats: bool = False):
        PatchMachine.__init__(self, data, "els", P, boundary=boundary, keys=keys, labels=labels,
                              class_label=class_label, backend=backend, record_stats=record_stats)
        self._configure(TrainingPartners(self.data, exclude=exclude, backend=backend), beta, P2, attention_P,
                        attend_on)

    def paired_posterior(self, z, sigma, P, label, query_partner, key_partner):
        """``(x0_hat, lse or None, argmax or None)`` of one operator call; argmax with global image ids."""
        out = paired_patch_posterior_mean(z, self.classes.subset(label), sigma, P, query_partner, key_partner,
                                          beta=self.beta, P2=self.partner_window(P), boundary=self.boundary,
                                          keys=self.keys, return_stats=self.record_stats, backend=self.backend)
        if not self.record_stats:
            return out, None, None
        argmax = out.argmax.clone()
        argmax[..., 0] = self.classes.global_ids(label, argmax[..., 0])
        return out.x0_hat, out.lse, argmax
