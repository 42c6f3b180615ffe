"""creativity_fast: exact, fast equivariant local score machines (Kamb & Ganguli 2025).

The operator ``patch_posterior_mean`` computes the ideal, local and equivariant
local score machines exactly; ``denoisers`` wraps them (and the other machines)
as ``denoiser(z, sigma) -> x0_hat``; ``samplers`` and ``schedules`` drive them.
"""

from . import dictionary, samplers, schedules
from . import attention, metrics, peers  # noqa: F401  (register the aels and peer machines)
from .attention import AELSDenoiser, patch_argmax_attention
from .denoisers import (ELSDenoiser, GaussianDenoiser, IdealDenoiser, LocalDenoiser, PatchMachine, machine_names,
                        make_denoiser, register_machine)
from .dictionary import admissible_centres, count_pairs, patch_offsets
from .ops import PatchPosterior, has_kernel, patch_posterior_mean
from .schedules import PatchSchedule

__version__ = "0.1.0"

__all__ = [
    "AELSDenoiser", "attention", "metrics", "patch_argmax_attention", "peers",
    "ELSDenoiser", "GaussianDenoiser", "IdealDenoiser", "LocalDenoiser", "PatchMachine", "PatchPosterior",
    "PatchSchedule", "admissible_centres", "count_pairs", "dictionary", "has_kernel", "machine_names",
    "make_denoiser", "patch_offsets", "patch_posterior_mean", "register_machine", "samplers", "schedules",
]
