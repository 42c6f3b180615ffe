"""creativity_fast: exact, fast equivariant local score machines (Kamb & Ganguli 2025)."""

from .dictionary import admissible_centres, count_pairs, patch_offsets
from .ops import PatchPosterior, has_kernel, patch_posterior_mean

__version__ = "0.1.0"

__all__ = [
    "PatchPosterior", "admissible_centres", "count_pairs", "has_kernel", "patch_offsets",
    "patch_posterior_mean",
]
