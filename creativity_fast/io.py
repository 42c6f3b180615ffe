"""Safe, atomic file input/output.

Every writer here writes to a temporary file in the destination directory and
then renames it over the destination with ``os.replace``. A crash or a killed
job therefore leaves either the old file or the complete new one, never a
truncated file that a resumed run would trip over.

Every reader refuses to run code from the file: arrays are loaded with
``allow_pickle=False`` and a malformed or truncated file raises a
``ValueError`` naming the path and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

__all__ = ["atomic_open", "save_npz", "save_json", "save_png", "load_npz"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; set it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the block succeeds.

    The temporary file lives in the same directory as ``path`` (so the final
    ``os.replace`` is an atomic rename on one file system). On an exception
    the temporary file is removed and ``path`` is left untouched. Missing
    parent directories are created.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file with mode 0600; give it the permissions an
        # ordinary open() would have given so other users can read results.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """Convert an array-like (numpy array, torch tensor, scalar, list) to numpy."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        # Object arrays can only be stored by pickling, and load_npz refuses pickles.
        raise TypeError(f"array {name!r} has dtype object, which cannot be saved without pickle")
    return array


def save_npz(path: str | os.PathLike, /, **arrays: Any) -> Path:
    """Write ``arrays`` to a compressed ``.npz`` file at ``path``, atomically.

    Values may be numpy arrays, torch tensors, scalars or (unicode) string
    arrays; object arrays are refused because reading them back needs pickle.
    Returns the path written.
    """
    if not arrays:
        raise ValueError("save_npz needs at least one array")
    converted = {name: _to_numpy(value, name) for name, value in arrays.items()}
    path = Path(path)
    # Writing through a file object stops numpy from appending a second ".npz".
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, **converted)
    return path


def _json_default(value: Any) -> Any:
    """Make numpy/torch scalars and arrays, paths and sets JSON-serialisable."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch.Tensor
        return value.detach().cpu().tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def _standard_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (after :func:`_json_default`)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _standard_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_standard_json(v) for v in value]
    if value is None or isinstance(value, (str, int)):
        return value
    return _standard_json(_json_default(value))


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, standard JSON to ``path``, atomically.

    numpy and torch scalars/arrays become numbers/lists, paths become strings, and
    non-finite floats (an undefined rate, say) become ``null``, so that any JSON reader
    (JavaScript, jq, pandas) accepts the file. Returns the path written.
    """
    text = json.dumps(_standard_json(obj), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return path


def save_png(path: str | os.PathLike, array_uint8: Any) -> Path:
    """Write a uint8 image to ``path`` as PNG, atomically.

    array_uint8: [h, w] (grey), [h, w, 3] (RGB) or [h, w, 4] (RGBA) uint8.
    Returns the path written.
    """
    from PIL import Image  # imported here so that numpy-only users need no Pillow

    array = _to_numpy(array_uint8, "array_uint8")
    if array.dtype != np.uint8:
        raise TypeError(f"array_uint8 must have dtype uint8, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"array_uint8 must have shape [h, w], [h, w, 3] or [h, w, 4], got {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"array_uint8 must not be empty, got shape {list(array.shape)}")
    image = Image.fromarray(np.ascontiguousarray(array))
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")
    return path


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file into memory, without pickle.

    Returns {name: array}. Raises FileNotFoundError if ``path`` does not
    exist and ValueError (naming ``path``) if it is not a readable ``.npz``
    archive: truncated, corrupt, a plain ``.npy``, or holding object arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
        raise ValueError(f"cannot read {path} as an .npz file: {exc}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"cannot read {path} as an .npz file: it holds a single .npy array, not an archive")
    try:
        with loaded as archive:
            # Read everything now: a truncated member only fails when it is read.
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, OSError) as exc:
        raise ValueError(f"cannot read {path} as an .npz file: {exc}") from exc
