"""Tests of data loading: file formats, value conventions, datasets and shards (fast, CPU only)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from creativity_fast import io as cf_io
from creativity_fast.data import loaders, synthetic
from creativity_fast.data.loaders import Dataset, load_dataset, read_idx, shard_bounds, write_idx


def small_uint8_images(n: int = 7, h: int = 4, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def expected_unit(images_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_uint8.astype(np.float32) / 127.5 - 1.0)


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
