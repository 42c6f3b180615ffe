"""IDX files, the format MNIST and Fashion-MNIST ship in: read (memory-mapped when raw), write, find."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from creativity_fast.io import atomic_open

__all__ = ["IDX_SPLIT_PREFIX", "find_idx_file", "has_idx_files", "read_idx", "write_idx"]

# IDX files name the test split "t10k" (MNIST's 10k test images).
IDX_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


# ---------------------------------------------------------------------------
# IDX files (the MNIST / Fashion-MNIST format)
# ---------------------------------------------------------------------------

# IDX type codes -> numpy dtypes. Multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype.newbyteorder(">") if dtype.itemsize > 1 else dtype: code for code, dtype in _IDX_DTYPES.items()}


def _read_up_to(handle: Any, num_bytes: int, path: Path) -> bytes:
    """Read at most num_bytes, in chunks (a bogus header cannot make us allocate a huge buffer)."""
    chunks: list[bytes] = []
    remaining = num_bytes
    try:
        while remaining > 0:
            chunk = handle.read(min(remaining, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip stream
        raise ValueError(f"cannot read IDX file {path} (truncated or corrupt gzip data): {exc}") from exc
    return b"".join(chunks)


def _parse_idx_header(header: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse the magic number and dimensions; returns (dtype, dims, header length)."""
    if len(header) < 4:
        raise ValueError(f"{path} is not an IDX file: shorter than the 4-byte magic number")
    if header[0] != 0 or header[1] != 0:
        raise ValueError(f"{path} is not an IDX file: magic number must start with two zero bytes")
    code, ndim = header[2], header[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: unknown data type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{path} is not an IDX file: zero dimensions")
    header_length = 4 + 4 * ndim
    if len(header) < header_length:
        raise ValueError(f"{path} is truncated: its header needs {header_length} bytes, file has {len(header)}")
    dims = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return _IDX_DTYPES[code], dims, header_length


def read_idx(path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into an array of the shape its header gives.

    A raw file is memory-mapped when ``mmap`` (only the rows used are read);
    a gzip file is decompressed into memory. Raises ValueError naming the path
    if the header is malformed or the data size does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as handle:
                head = _read_up_to(handle, 4, path)
                ndim = head[3] if len(head) == 4 else 0
                dtype, dims, _ = _parse_idx_header(head + _read_up_to(handle, 4 * ndim, path), path)
                expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
                # One byte more than promised, to detect trailing data.
                payload = _read_up_to(handle, expected + 1, path)
        except gzip.BadGzipFile as exc:
            raise ValueError(f"{path} is not a valid gzip file: {exc}") from exc
        _check_idx_size(len(payload), expected, path)
        return np.frombuffer(payload, dtype=dtype).reshape(dims)

    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(4 + 4 * 255)
    dtype, dims, header_length = _parse_idx_header(header, path)
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    _check_idx_size(file_size - header_length, expected, path)
    if not mmap or expected == 0:
        with open(path, "rb") as handle:
            handle.seek(header_length)
            return np.frombuffer(handle.read(expected), dtype=dtype).reshape(dims)
    return np.memmap(path, dtype=dtype, mode="r", offset=header_length, shape=dims)


def _check_idx_size(actual: int, expected: int, path: Path) -> None:
    if actual < expected:
        raise ValueError(f"{path} is truncated: header promises {expected} data bytes, file has {actual}")
    if actual > expected:
        raise ValueError(f"{path} is malformed: more data than its header promises ({expected} bytes)")


def write_idx(path: str | os.PathLike, array: Any) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``), atomically.

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    """
    array = np.asarray(array)
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"array must have 1 to 255 dimensions, got {array.ndim}")
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big_endian not in _IDX_CODES:
        raise TypeError(f"array dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, _IDX_CODES[big_endian], array.ndim])
    header += b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=big_endian).tobytes()
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        handle.write(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


def find_idx_file(directory: Path, prefix: str, kind: str) -> Path | None:
    """Locate e.g. train-images-idx3-ubyte[.gz] (or the "train-images.idx3-ubyte" spelling)."""
    rank = "3" if kind == "images" else "1"
    for stem in (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"):
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def has_idx_files(directory: Path) -> bool:
    return any(find_idx_file(directory, prefix, "images") for prefix in IDX_SPLIT_PREFIX.values())
