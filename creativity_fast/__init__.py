"""creativity_fast: exact, fast equivariant local score machines (Kamb & Ganguli 2025).

The operators (``ops``: ``patch_posterior_mean``, ``patch_argmax_attention``,
``masked_local_posterior``, ``paired_patch_posterior_mean``) compute the machines exactly; ``denoisers``, ``attention``
and ``peers`` wrap them as ``denoiser(z, sigma) -> x0_hat``, all built by name from
one ``registry``; ``samplers`` and ``schedules`` drive them. The mathematics is in
``docs/theory.md``.
"""

from . import dictionary, samplers, schedules
from . import attention, metrics, peers, registry  # noqa: F401
from .attention import AELSDenoiser
from .denoisers import ELSDenoiser, GaussianDenoiser, IdealDenoiser, LocalDenoiser, PatchMachine
from .dictionary import admissible_centres, count_pairs, patch_offsets
from .ops import (PatchPosterior, has_kernel, masked_local_posterior, paired_patch_posterior_mean,
                  patch_argmax_attention, patch_posterior_mean)
from .registry import machine_names, make_denoiser, register_machine
from .schedules import PatchSchedule

__version__ = "0.1.0"

__all__ = [
    "AELSDenoiser", "attention", "metrics", "patch_argmax_attention", "peers", "registry",
    "ELSDenoiser", "GaussianDenoiser", "IdealDenoiser", "LocalDenoiser", "PatchMachine", "PatchPosterior",
    "PatchSchedule", "admissible_centres", "count_pairs", "dictionary", "has_kernel", "machine_names",
    "make_denoiser", "masked_local_posterior", "paired_patch_posterior_mean", "patch_offsets", "patch_posterior_mean", "register_machine",
    "samplers", "schedules",
]
