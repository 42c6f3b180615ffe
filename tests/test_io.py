"""Tests of the atomic file I/O of creativity_fast.io (fast, CPU only)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from creativity_fast import io as cf_io


# ---------------------------------------------------------------------------
# io
# ---------------------------------------------------------------------------


def test_npz_round_trip_with_tensors_and_strings(tmp_path):
    path = tmp_path / "sub" / "arrays.npz"
    cf_io.save_npz(path, a=torch.arange(6).reshape(2, 3), names=np.array(["x", "yy"]), s=np.float32(1.5))
    loaded = cf_io.load_npz(path)
    assert sorted(loaded) == ["a", "names", "s"]
    np.testing.assert_array_equal(loaded["a"], np.arange(6).reshape(2, 3))
    assert loaded["names"].tolist() == ["x", "yy"]
    assert float(loaded["s"]) == 1.5
    assert os.listdir(path.parent) == ["arrays.npz"]  # no temp files left behind


def test_save_npz_refuses_object_arrays(tmp_path):
    with pytest.raises(TypeError, match="'bad'"):
        cf_io.save_npz(tmp_path / "x.npz", bad=np.array([{"a": 1}], dtype=object))


def test_load_npz_malformed_files_raise_value_error_naming_path(tmp_path):
    good = tmp_path / "good.npz"
    cf_io.save_npz(good, a=np.arange(1000))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        cf_io.load_npz(truncated)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(ValueError, match="garbage.npz"):
        cf_io.load_npz(garbage)

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, a=np.array([{"code": 1}], dtype=object))  # needs pickle to read
    with pytest.raises(ValueError, match="pickled.npz"):
        cf_io.load_npz(pickled)

    single = tmp_path / "single.npy"
    np.save(single, np.arange(3))
    with pytest.raises(ValueError, match="single.npy"):
        cf_io.load_npz(single)

    with pytest.raises(FileNotFoundError):
        cf_io.load_npz(tmp_path / "missing.npz")


def test_atomic_open_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "result.json"
    cf_io.save_json(path, {"old": 1})
    with pytest.raises(RuntimeError):
        with cf_io.atomic_open(path, "w") as handle:
            handle.write('{"new": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["result.json"]


def test_save_json_handles_numpy_and_torch_scalars(tmp_path):
    path = tmp_path / "metrics.json"
    cf_io.save_json(path, {"a": np.float32(0.5), "b": torch.tensor(3), "c": np.arange(3), "d": tmp_path})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 3, "c": [0, 1, 2], "d": str(tmp_path)}
    assert "\n  " in path.read_text()  # indented


def test_save_json_writes_standard_json_with_null_for_non_finite(tmp_path):
    path = tmp_path / "rates.json"
    cf_io.save_json(path, {"share": float("nan"), "hi": float("inf"), "v": np.array([1.0, np.nan]),
                           "t": (torch.tensor(float("-inf")), True), "ok": 0.25})

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "share": None, "hi": None, "v": [1.0, None], "t": [None, True], "ok": 0.25}


def test_save_png_round_trip_and_validation(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = cf_io.save_png(tmp_path / "a.png", array)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), array)
    with pytest.raises(TypeError, match="array_uint8"):
        cf_io.save_png(tmp_path / "b.png", array.astype(np.float32))
    with pytest.raises(ValueError, match="array_uint8"):
        cf_io.save_png(tmp_path / "c.png", np.zeros((2, 2, 2), dtype=np.uint8))
