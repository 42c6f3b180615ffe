"""Array normalisation of loaded images: layout to ``[N, C, H, W]``, values onto ``[-1, 1]``, labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_labels", "as_nchw", "auto_value_range", "check_value_range", "to_unit_range"]


# ---------------------------------------------------------------------------
# Array normalisation: layout and value range
# ---------------------------------------------------------------------------


def as_nchw(array: np.ndarray, *, what: str, channels_last: bool | None = None) -> np.ndarray:
    """View an image array as [N, C, H, W] (no copy; works on memory maps).

    channels_last: the layout of a 4-D array if known; None guesses it: a last
    dimension of 1 or 3 means channels-last unless dimension 1 is also 1 or 3
    (then [N, C, H, W] is assumed).
    """
    if array.ndim == 3:
        return array[:, None, :, :]
    if array.ndim == 4:
        if channels_last is None:
            channels_last = array.shape[3] in (1, 3) and array.shape[1] not in (1, 3)
        return array.transpose(0, 3, 1, 2) if channels_last else array
    raise ValueError(f"{what} must have shape [N, H, W], [N, H, W, C] or [N, C, H, W], got {list(array.shape)}")


def auto_value_range(probe: np.ndarray, *, what: str) -> tuple[float, float]:
    """Decide the value range of an array from its dtype and (for floats) a sample of its values."""
    if probe.dtype == np.bool_:
        return (0.0, 1.0)
    if np.issubdtype(probe.dtype, np.integer):
        return (0.0, 255.0)
    if not np.issubdtype(probe.dtype, np.floating):
        raise TypeError(f"{what} must hold integers or floats, got dtype {probe.dtype}")
    if probe.size == 0:
        return (-1.0, 1.0)
    low, high = float(np.min(probe)), float(np.max(probe))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{what} contains NaN or infinite values")
    if low < 0:
        return (-1.0, 1.0)
    if high > 1:
        return (0.0, 255.0)
    return (0.0, 1.0)


def to_unit_range(
    array: np.ndarray, value_range: tuple[float, float] | None = None, *, what: str = "images"
) -> torch.Tensor:
    """Convert an image array to a float32 tensor in [-1, 1].

    array: [N, C, H, W] (any numeric dtype).
    value_range: (low, high) mapped onto (-1, 1); None decides it from the
    dtype and values (see the module docstring).
    Raises ValueError (mentioning ``what``) on non-finite or out-of-range values.
    """
    if value_range is None:
        value_range = auto_value_range(array, what=what)
    low, high = check_value_range(value_range)
    # A private copy: the input may be a read-only memory map or the caller's array.
    values = np.array(array, dtype=np.float32, copy=True)
    if values.size:
        if not np.isfinite(values).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        found_low, found_high = float(values.min()), float(values.max())
        # A little slack for values written as float32 after a round trip.
        slack = 1e-5 * (high - low)
        if found_low < low - slack or found_high > high + slack:
            raise ValueError(
                f"{what} has values in [{found_low:g}, {found_high:g}], outside the value range "
                f"({low:g}, {high:g}); pass value_range=(low, high) to state the range"
            )
    # In place, to hold one float copy of a possibly large array.
    values -= np.float32(low)
    values *= np.float32(2.0 / (high - low))
    values -= np.float32(1.0)
    np.clip(values, -1.0, 1.0, out=values)
    return torch.from_numpy(values)


def check_value_range(value_range: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (low, high), got {value_range!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(f"value_range must be finite with high > low, got {value_range!r}")
    return low, high


def as_labels(labels: Any, num_items: int, *, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_items:
        raise ValueError(f"{what} must have shape [{num_items}] to match the images, got {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must hold integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)
