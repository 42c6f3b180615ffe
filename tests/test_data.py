"""Tests of data loading, synthetic sets, file I/O and image grids (fast, CPU only)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from creativity_fast import io as cf_io
from creativity_fast import viz
from creativity_fast.data import loaders, synthetic
from creativity_fast.data.loaders import Dataset, load_dataset, read_idx, shard_bounds, write_idx


def small_uint8_images(n: int = 7, h: int = 4, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def expected_unit(images_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_uint8.astype(np.float32) / 127.5 - 1.0)


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


def test_save_png_round_trip_and_validation(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = cf_io.save_png(tmp_path / "a.png", array)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), array)
    with pytest.raises(TypeError, match="array_uint8"):
        cf_io.save_png(tmp_path / "b.png", array.astype(np.float32))
    with pytest.raises(ValueError, match="array_uint8"):
        cf_io.save_png(tmp_path / "c.png", np.zeros((2, 2, 2), dtype=np.uint8))


# ---------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip_uint8(tmp_path, name):
    images = small_uint8_images()
    path = write_idx(tmp_path / name, images)
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    # Header: two zero bytes, type code 0x08 (uint8), 3 dims, then big-endian sizes.
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert int.from_bytes(raw[4:8], "big") == 7 and int.from_bytes(raw[12:16], "big") == 5
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (7, 4, 5)
    np.testing.assert_array_equal(back, images)


@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.int16, np.float64])
def test_idx_round_trip_multibyte_dtypes_are_big_endian(tmp_path, dtype):
    values = np.array([1, -2, 300, 70000 if dtype != np.int16 else 7000], dtype=dtype)
    path = write_idx(tmp_path / "v-idx1", values)
    assert path.read_bytes()[8 : 8 + values.itemsize] == values[:1].astype(values.dtype.newbyteorder(">")).tobytes()
    np.testing.assert_array_equal(read_idx(path), values)


def test_raw_idx_is_memory_mapped(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", small_uint8_images())
    assert isinstance(read_idx(path), np.memmap)
    assert not isinstance(read_idx(path, mmap=False), np.memmap)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_raises_value_error(tmp_path, gz):
    images = small_uint8_images()
    full = tmp_path / "full-idx3-ubyte"
    write_idx(full, images)
    cut = full.read_bytes()[:-3]
    path = tmp_path / ("cut-idx3-ubyte.gz" if gz else "cut-idx3-ubyte")
    path.write_bytes(gzip.compress(cut) if gz else cut)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)
    with pytest.raises(ValueError, match="truncated"):
        load_dataset(path)


def test_malformed_idx_headers_and_streams(tmp_path):
    bad_magic = tmp_path / "a-idx1-ubyte"
    bad_magic.write_bytes(bytes([1, 0, 8, 1]) + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad_magic)
    bad_code = tmp_path / "b-idx1-ubyte"
    bad_code.write_bytes(bytes([0, 0, 0x42, 1]) + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="type code"):
        read_idx(bad_code)
    trailing = tmp_path / "c-idx1-ubyte"
    trailing.write_bytes(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + b"abcd")
    with pytest.raises(ValueError, match="more data"):
        read_idx(trailing)
    short_header = tmp_path / "d-idx3-ubyte"
    short_header.write_bytes(bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="header"):
        read_idx(short_header)
    broken_gzip = tmp_path / "e-idx1-ubyte.gz"
    broken_gzip.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (300).to_bytes(4, "big") + bytes(300))[:-20])
    with pytest.raises(ValueError, match="e-idx1-ubyte.gz"):
        read_idx(broken_gzip)


def write_idx_directory(root: Path, n_train: int = 9, n_test: int = 4) -> dict[str, np.ndarray]:
    """An MNIST-style directory: gzip train files, raw t10k files."""
    arrays = {
        "train_images": small_uint8_images(n_train, 6, 6, seed=1),
        "train_labels": (np.arange(n_train) % 3).astype(np.uint8),
        "test_images": small_uint8_images(n_test, 6, 6, seed=2),
        "test_labels": (np.arange(n_test) % 3).astype(np.uint8),
    }
    write_idx(root / "train-images-idx3-ubyte.gz", arrays["train_images"])
    write_idx(root / "train-labels-idx1-ubyte.gz", arrays["train_labels"])
    write_idx(root / "t10k-images-idx3-ubyte", arrays["test_images"])
    write_idx(root / "t10k-labels-idx1-ubyte", arrays["test_labels"])
    return arrays


def test_idx_directory_loader_splits_and_classes(tmp_path):
    arrays = write_idx_directory(tmp_path)
    train = load_dataset(tmp_path)
    assert train.images.shape == (9, 1, 6, 6) and train.images.dtype == torch.float32
    torch.testing.assert_close(train.images[:, 0], expected_unit(arrays["train_images"]))
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 1, 2] * 3
    test = load_dataset(tmp_path, split="test")
    torch.testing.assert_close(test.images[:, 0], expected_unit(arrays["test_images"]))
    only_two = load_dataset(tmp_path, classes=2)
    assert only_two.labels.tolist() == [2, 2, 2]
    torch.testing.assert_close(only_two.images[:, 0], expected_unit(arrays["train_images"][2::3]))
    assert load_dataset(tmp_path, classes=[0, 2], limit=3).labels.tolist() == [0, 2, 0]
    assert load_dataset(tmp_path, classes=torch.tensor([1])).labels.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="split"):
        load_dataset(tmp_path, split="validation")
    with pytest.raises(ValueError, match="classes"):
        load_dataset(tmp_path, classes=7)


def test_single_idx_file_uses_sibling_labels(tmp_path):
    arrays = write_idx_directory(tmp_path)
    dataset = load_dataset(tmp_path / "t10k-images-idx3-ubyte")
    assert dataset.labels.tolist() == arrays["test_labels"].tolist()
    with pytest.raises(ValueError, match="not images"):
        load_dataset(tmp_path / "t10k-labels-idx1-ubyte")


def test_idx_directory_missing_split(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", small_uint8_images())
    assert len(load_dataset(tmp_path)) == 7
    assert load_dataset(tmp_path).labels is None
    with pytest.raises(ValueError, match="split='test'"):
        load_dataset(tmp_path, split="test")


# ---------------------------------------------------------------------------
# npz / npy
# ---------------------------------------------------------------------------


def test_npz_uint8_and_float_conventions(tmp_path):
    images = small_uint8_images(5, 3, 3)
    np.savez(tmp_path / "u8.npz", images=images, labels=np.arange(5))
    u8 = load_dataset(tmp_path / "u8.npz")
    torch.testing.assert_close(u8.images[:, 0], expected_unit(images))
    assert u8.labels.tolist() == [0, 1, 2, 3, 4]

    unit = np.linspace(0, 1, 5 * 9, dtype=np.float32).reshape(5, 3, 3)
    np.savez(tmp_path / "unit.npz", x=unit, y=np.zeros(5, dtype=np.int32))
    torch.testing.assert_close(load_dataset(tmp_path / "unit.npz").images[:, 0], torch.from_numpy(unit * 2 - 1))

    signed = np.linspace(-1, 1, 5 * 9, dtype=np.float32).reshape(5, 3, 3)
    np.savez(tmp_path / "signed.npz", train_images=signed, test_images=signed[:2])
    loaded = load_dataset(tmp_path / "signed.npz")
    torch.testing.assert_close(loaded.images[:, 0], torch.from_numpy(signed))
    assert loaded.labels is None
    assert len(load_dataset(tmp_path / "signed.npz", split="test")) == 2
    with pytest.raises(ValueError, match="split='test'"):
        load_dataset(tmp_path / "unit.npz", split="test")

    # An explicit value range overrides the automatic rule.
    explicit = load_dataset(tmp_path / "unit.npz", value_range=(-1, 1))
    torch.testing.assert_close(explicit.images[:, 0], torch.from_numpy(unit))


def test_npz_channels_last_rgb_becomes_channels_first(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=images)
    dataset = load_dataset(tmp_path / "rgb.npz")
    assert dataset.images.shape == (2, 3, 4, 5)
    assert dataset.images[1, 2, 3, 4].item() == pytest.approx(images[1, 3, 4, 2] / 127.5 - 1, abs=1e-6)
    np.savez(tmp_path / "nchw.npz", images=np.zeros((2, 3, 8, 8), dtype=np.uint8))
    assert load_dataset(tmp_path / "nchw.npz").images.shape == (2, 3, 8, 8)


def test_npz_bad_contents(tmp_path):
    np.savez(tmp_path / "range.npz", images=np.full((2, 3, 3), 300.0, dtype=np.float32))
    with pytest.raises(ValueError, match="value range"):
        load_dataset(tmp_path / "range.npz")
    np.savez(tmp_path / "nan.npz", images=np.full((2, 3, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load_dataset(tmp_path / "nan.npz")
    np.savez(tmp_path / "nokey.npz", pictures=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="keys"):
        load_dataset(tmp_path / "nokey.npz")
    np.savez(tmp_path / "labels.npz", images=np.zeros((2, 3, 3), dtype=np.uint8), labels=np.arange(3))
    with pytest.raises(ValueError, match="labels"):
        load_dataset(tmp_path / "labels.npz")


def test_npy_is_memory_mapped_and_shards_read_only_their_rows(tmp_path, monkeypatch):
    # Rows >= 4500 are NaN: only a load that reads them can fail. The value-range
    # probe reads the first 4096 rows, so shard 0 of 2 (rows 0..2499) never does.
    images = np.random.default_rng(4).uniform(-1, 1, size=(5000, 4, 4)).astype(np.float32)
    images[4500:] = np.nan
    np.save(tmp_path / "train_images.npy", images)
    np.save(tmp_path / "train_labels.npy", np.arange(5000) % 10)
    first_half = load_dataset(tmp_path / "train_images.npy", shard=(0, 2))
    assert len(first_half) == 2500
    torch.testing.assert_close(first_half.images[:, 0], torch.from_numpy(images[:2500]))
    assert first_half.labels.tolist() == (np.arange(2500) % 10).tolist()
    limited = load_dataset(tmp_path / "train_images.npy", limit=10, shard=(1, 3))
    torch.testing.assert_close(limited.images[:, 0], torch.from_numpy(images[4:7]))
    with pytest.raises(ValueError, match="NaN"):
        load_dataset(tmp_path / "train_images.npy", shard=(1, 2))

    opened = []
    real_load = np.load

    def recording_load(*args, **kwargs):
        opened.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", recording_load)
    load_dataset(tmp_path / "train_images.npy", limit=3)
    assert opened and all(mode == "r" for mode in opened)


def test_truncated_npy_raises_value_error(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((100, 4, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match="x.npy"):
        load_dataset(path)


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(5)
    pictures = {}
    for class_name, count in (("zebra", 2), ("apple", 3)):
        for i in range(count):
            pictures[(class_name, i)] = rng.integers(0, 256, size=(4, 6), dtype=np.uint8)
            write_png(tmp_path / class_name / f"{i}.png", pictures[(class_name, i)])
    dataset = load_dataset(tmp_path)
    assert dataset.class_names == ["apple", "zebra"]  # sorted by name
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1]
    assert dataset.images.shape == (5, 1, 4, 6)
    torch.testing.assert_close(dataset.images[3, 0], expected_unit(pictures[("zebra", 0)]))
    assert load_dataset(tmp_path, classes="zebra").labels.tolist() == [1, 1]
    assert len(load_dataset(tmp_path, shard=(1, 2))) == 2


def test_image_folder_flat_rgb_and_splits(tmp_path):
    rgb = np.random.default_rng(6).integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "flat" / "a.png", rgb)
    write_png(tmp_path / "flat" / "b.png", rgb[::-1].copy())
    flat = load_dataset(tmp_path / "flat")
    assert flat.images.shape == (2, 3, 3, 5) and flat.labels is None
    torch.testing.assert_close(flat.images[0], expected_unit(rgb).permute(2, 0, 1))

    write_png(tmp_path / "split" / "train" / "cat" / "0.png", np.zeros((4, 4), dtype=np.uint8))
    write_png(tmp_path / "split" / "test" / "cat" / "0.png", np.full((4, 4), 255, dtype=np.uint8))
    assert load_dataset(tmp_path / "split").images.max().item() == -1.0
    assert load_dataset(tmp_path / "split", split="test").images.min().item() == 1.0


def test_image_folder_errors(tmp_path):
    write_png(tmp_path / "sizes" / "a.png", np.zeros((4, 4), dtype=np.uint8))
    write_png(tmp_path / "sizes" / "b.png", np.zeros((5, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="same size"):
        load_dataset(tmp_path / "sizes")
    write_png(tmp_path / "corrupt" / "a.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "corrupt" / "b.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="b.png"):
        load_dataset(tmp_path / "corrupt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nothing-here")


# ---------------------------------------------------------------------------
# Dataset and sharding
# ---------------------------------------------------------------------------


def test_shards_cover_every_row_exactly_once_including_empty_shards():
    for num_items in (0, 1, 5, 10, 11):
        for world_size in (1, 2, 3, 7, 12):
            bounds = [shard_bounds(num_items, rank, world_size) for rank in range(world_size)]
            rows = [row for start, stop in bounds for row in range(start, stop)]
            assert rows == list(range(num_items))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1

    dataset = synthetic.twin_glyphs(5, 11, 11)
    parts = [dataset.shard(rank, 7) for rank in range(7)]
    assert [len(part) for part in parts] == [1, 1, 1, 1, 1, 0, 0]
    assert parts[6].images.shape == (0, 1, 11, 11)
    torch.testing.assert_close(torch.cat([part.images for part in parts]), dataset.images)
    assert torch.cat([part.labels for part in parts]).tolist() == dataset.labels.tolist()
    with pytest.raises(ValueError, match="rank"):
        dataset.shard(7, 7)
    with pytest.raises(ValueError, match="world_size"):
        dataset.shard(0, 0)


def test_dataset_subset_with_class_and_validation():
    images = torch.linspace(-1, 1, 4 * 4).reshape(4, 1, 2, 2)
    dataset = Dataset(images, torch.tensor([0, 1, 0, 2]), ["a", "b", "c"], "tiny", "test")
    assert len(dataset) == 4 and dataset.image_shape == (1, 2, 2)
    picked = dataset.subset([3, 0])
    assert picked.labels.tolist() == [2, 0]
    torch.testing.assert_close(picked.images[0], images[3])
    assert dataset.with_class(0).labels.tolist() == [0, 0]
    assert dataset.with_class("c").labels.tolist() == [2]
    with pytest.raises(ValueError, match="label"):
        dataset.with_class(5)
    with pytest.raises(ValueError, match="label"):
        dataset.with_class("zzz")
    with pytest.raises(ValueError, match="indices"):
        dataset.subset([4])
    with pytest.raises(TypeError, match="float32"):
        Dataset(images.double())
    with pytest.raises(ValueError, match="labels"):
        Dataset(images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no labels"):
        Dataset(images).with_class(0)


def test_load_dataset_shard_matches_dataset_shard(tmp_path):
    write_idx_directory(tmp_path, n_train=10)
    whole = load_dataset(tmp_path, classes=[1, 2])
    for rank in range(3):
        part = load_dataset(tmp_path, classes=[1, 2], shard=(rank, 3))
        torch.testing.assert_close(part.images, whole.shard(rank, 3).images)
    with pytest.raises(ValueError, match="limit"):
        load_dataset(tmp_path, limit=0)
    with pytest.raises(ValueError, match="shard"):
        load_dataset(tmp_path, shard=(0,))


# ---------------------------------------------------------------------------
# Embedded and full Fashion-MNIST
# ---------------------------------------------------------------------------


def test_embedded_subset_is_class_balanced():
    train = load_dataset()
    assert train.images.shape == (3000, 1, 28, 28) and train.images.dtype == torch.float32
    assert train.images.min().item() == -1.0 and train.images.max().item() == 1.0
    assert torch.bincount(train.labels).tolist() == [300] * 10
    assert train.class_names == list(loaders.FASHION_MNIST_CLASSES)
    test = load_dataset(split="test")
    assert torch.bincount(test.labels).tolist() == [50] * 10
    assert len(load_dataset(classes="Bag", limit=7)) == 7

    stored = cf_io.load_npz(loaders.embedded_dataset_path())
    assert stored["train_images"].dtype == np.uint8 and stored["train_labels"].dtype == np.int64
    indices = stored["source_indices"]
    assert indices.shape == (3000,) and len(set(indices.tolist())) == 3000 and np.all(np.diff(indices) > 0)
    licence = (loaders.embedded_dataset_path().parent / "LICENSE-fashion-mnist.txt").read_text()
    assert "Copyright (c) 2017 Zalando SE" in licence and "MIT" in licence


@pytest.mark.skipif(not Path(loaders.FASHION_MNIST_ROOT).is_dir(), reason="dataset-fashion-mnist not installed")
def test_embedded_subset_matches_full_fashion_mnist():
    stored = cf_io.load_npz(loaders.embedded_dataset_path())
    full_images = read_idx(Path(loaders.FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz")
    rows = stored["source_indices"][[0, 1234, 2999]]
    np.testing.assert_array_equal(full_images[rows], stored["train_images"][[0, 1234, 2999]])
    full = loaders.load_fashion_mnist_full(split="test", classes=[3], limit=4)
    assert full.labels.tolist() == [3] * 4 and full.images.shape == (4, 1, 28, 28)


def test_full_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        loaders.load_fashion_mnist_full(tmp_path)


# ---------------------------------------------------------------------------
# Synthetic sets
# ---------------------------------------------------------------------------


def test_black_white_toy():
    toy = synthetic.black_white_toy(H=3, W=5, C=2)
    assert toy.images.shape == (2, 2, 3, 5)
    assert torch.all(toy.images[0] == -1) and torch.all(toy.images[1] == 1)
    assert toy.labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="H"):
        synthetic.black_white_toy(H=0)


def test_glyph_alphabet_is_distinct_and_shift_free():
    glyphs = synthetic.GLYPHS
    assert glyphs.shape[0] >= 4 and glyphs.shape[1:] == (5, 5)
    for glyph in glyphs:
        # Touching all four sides of the box means no shift of it fits in the box.
        assert glyph[0].any() and glyph[-1].any() and glyph[:, 0].any() and glyph[:, -1].any()
    for a in range(len(glyphs)):
        for b in range(a + 1, len(glyphs)):
            # Far apart, so one wrong pixel never turns one glyph into another.
            assert np.sum(glyphs[a] != glyphs[b]) >= 3


def test_twin_glyphs_hold_two_copies_of_one_glyph():
    dataset = synthetic.twin_glyphs(40, alphabet=4, seed=1)
    assert dataset.images.shape == (40, 1, 16, 16)
    assert set(torch.unique(dataset.images).tolist()) == {-1.0, 1.0}
    assert set(dataset.labels.tolist()) == {0, 1, 2, 3}
    stroke_pixels = (dataset.images > 0).sum(dim=(1, 2, 3))
    glyph_pixels = torch.from_numpy(synthetic.GLYPHS.sum(axis=(1, 2)))[dataset.labels]
    assert torch.equal(stroke_pixels, 2 * glyph_pixels)
    found = synthetic.find_glyphs(dataset.images, alphabet=4)
    assert found == [[label, label] for label in dataset.labels.tolist()]
    torch.testing.assert_close(synthetic.twin_glyphs(40, alphabet=4, seed=1).images, dataset.images)
    assert not torch.equal(synthetic.twin_glyphs(40, alphabet=4, seed=2).images, dataset.images)
    with pytest.raises(ValueError, match="alphabet"):
        synthetic.twin_glyphs(2, alphabet=99)
    with pytest.raises(ValueError, match="H, W"):
        synthetic.twin_glyphs(2, H=8, W=8)


def test_find_glyphs_detects_mixed_glyphs_and_tolerates_one_flipped_pixel():
    strokes = torch.from_numpy(synthetic.GLYPHS.astype(np.float32) * 2 - 1)
    image = torch.full((3, 1, 14, 14), -1.0)
    image[0, 0, 1:6, 2:7] = strokes[0]
    image[0, 0, 8:13, 8:13] = strokes[2]
    image[1, 0, 0:5, 0:5] = strokes[3] * 0.7  # faded strokes still have the right signs
    image[1, 0, 9:14, 9:14] = strokes[3]
    image[1, 0, 11, 11] *= -1  # one flipped pixel
    found = synthetic.find_glyphs(image, alphabet=4)
    assert found[0] == [0, 2] and len(set(found[0])) == 2  # inconsistent
    assert found[1] == [3, 3]
    assert found[2] == []  # blank image: nothing detected
    located = synthetic.locate_glyphs(image, alphabet=4)
    assert located[0] == [(0, 1, 2), (2, 8, 8)]
    assert synthetic.find_glyphs(image, alphabet=4, threshold=1.0)[1] == [3]
    # A glyph outside the alphabet searched is not reported.
    assert synthetic.find_glyphs(image, alphabet=2)[0] == [0]


def test_digits8x8_needs_sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="scikit-learn"):
            synthetic.digits8x8()
    else:
        digits = synthetic.digits8x8()
        assert digits.images.shape[1:] == (1, 8, 8)
        assert digits.images.min() >= -1 and digits.images.max() <= 1


# ---------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------


def test_image_grid_layout_and_values():
    images = torch.full((5, 1, 3, 4), -1.0)
    images[4] = 1.0
    grid = viz.image_grid(images, nrow=2, padding=1, scale=2)
    # 3 rows of 2 tiles, each tile 6x8 after upscaling, 1-pixel padding around.
    assert grid.shape == (3 * (6 + 1) + 1, 2 * (8 + 1) + 1) and grid.dtype == np.uint8
    assert grid[0, 0] == 255 and grid[1, 1] == 0  # padding, then first (black) tile
    assert np.all(grid[15:21, 1:9] == 255)  # fifth tile (white) at row 2, column 0
    assert np.all(grid[15:21, 10:18] == 255)  # empty cell is padding colour
    rgb = viz.image_grid(torch.zeros(4, 3, 2, 2))
    assert rgb.shape == (2 * (2 + 2) + 2, 2 * (2 + 2) + 2, 3) and rgb[2, 2, 1] == 128
    with pytest.raises(ValueError, match="channels"):
        viz.image_grid(torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="images"):
        viz.image_grid(torch.zeros(0, 1, 3, 3))


def test_save_image_grid_writes_png(tmp_path):
    images = torch.rand(6, 1, 28, 28) * 2 - 1
    path = viz.save_image_grid(images, tmp_path / "out" / "grid.png", nrow=3, scale=4)
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (3 * (28 * 4 + 2) + 2, 2 * (28 * 4 + 2) + 2)
    assert os.listdir(path.parent) == ["grid.png"]
