"""Tests of the CIFAR-10 binary, CelebA and Hugging Face loaders and of ``resize`` (docs/theory.md §8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from creativity_fast.data import load_dataset
from creativity_fast.data.cifar import RECORD_BYTES
from creativity_fast.data.resize import convert_rows, resize_images

CIFAR_NAMES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def unit(pixels_uint8: np.ndarray) -> torch.Tensor:
    """0..255 onto [-1, 1] with the loaders' float32 operations (v * (2/255) - 1), so comparisons are exact."""
    values = pixels_uint8.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    return torch.from_numpy(values)


# ---------------------------------------------------------------------------
# CIFAR-10 binary
# ---------------------------------------------------------------------------


def write_cifar(root: Path, batches=(5, 5), test=4, seed=0, meta=True) -> dict:
    """Tiny CIFAR-10 release under root/cifar-10-batches-bin; returns the pixels [N,3,32,32] and labels per split."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    written = {}
    files = [(f"data_batch_{i + 1}.bin", n) for i, n in enumerate(batches)] + [("test_batch.bin", test)]
    for name, n in files:
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None], pixels.reshape(n, -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
        split = "test" if name.startswith("test") else "train"
        old_p, old_l = written.get(split, (np.zeros((0, 3, 32, 32), np.uint8), np.zeros(0, np.uint8)))
        written[split] = (np.concatenate([old_p, pixels]), np.concatenate([old_l, labels]))
    if meta:
        (folder / "batches.meta.txt").write_text("\n".join(CIFAR_NAMES) + "\n\n")
    return written


@pytest.fixture
def cifar(tmp_path):
    return tmp_path, write_cifar(tmp_path)


def test_cifar_record_layout_is_label_then_planar_rgb(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    record = np.zeros(RECORD_BYTES, dtype=np.uint8)
    record[0] = 7
    record[1 + 0 * 1024 + 2 * 32 + 5] = 255  # red, row 2, column 5
    record[1 + 2 * 1024 + 31 * 32 + 0] = 255  # blue, row 31, column 0
    (folder / "data_batch_1.bin").write_bytes(record.tobytes())
    data = load_dataset(folder)
    assert data.images.shape == (1, 3, 32, 32) and data.labels.tolist() == [7]
    bright = (data.images[0] == 1.0).nonzero().tolist()
    assert bright == [[0, 2, 5], [2, 31, 0]]
    assert data.class_names[7] == "horse"  # no meta file: the standard names


@pytest.mark.parametrize("inner", [False, True])
def test_cifar_pixels_labels_names_and_splits(cifar, inner):
    root, written = cifar
    path = root / "cifar-10-batches-bin" if inner else root
    for split, count in (("train", 10), ("test", 4)):
        data = load_dataset(path, split=split)
        pixels, labels = written[split]
        assert data.images.shape == (count, 3, 32, 32) and data.images.dtype == torch.float32
        assert torch.equal(data.images, unit(pixels))
        assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
        assert data.class_names == CIFAR_NAMES
        assert data.name == f"cifar10:{split}"


def test_cifar_limit_shard_classes_across_batch_files(cifar):
    root, written = cifar
    pixels, labels = written["train"]
    data = load_dataset(root, limit=7)
    assert torch.equal(data.images, unit(pixels[:7]))
    parts = [load_dataset(root, shard=(rank, 3)) for rank in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3]
    assert torch.equal(torch.cat([p.images for p in parts]), unit(pixels))
    wanted = sorted(set(labels.tolist()))[:2]
    chosen = load_dataset(root, classes=[CIFAR_NAMES[wanted[0]], wanted[1]])
    keep = np.isin(labels, wanted)
    assert chosen.labels.tolist() == labels[keep].tolist()
    assert torch.equal(chosen.images, unit(pixels[keep]))  # rows spread over both batch files


def test_cifar_batch_files_are_read_in_numeric_order(tmp_path):
    written = write_cifar(tmp_path, batches=(1,) * 11, test=1)
    data = load_dataset(tmp_path)  # data_batch_10.bin and _11 come after _9, not after _1
    assert torch.equal(data.images, unit(written["train"][0]))


@pytest.mark.parametrize("size", [0, 3072, 3073 * 2 + 1, 3074 * 3])
def test_cifar_truncated_file_is_an_error_naming_it(cifar, size):
    root, _ = cifar
    bad = root / "cifar-10-batches-bin" / "data_batch_2.bin"
    bad.write_bytes(bad.read_bytes()[:size] if size <= bad.stat().st_size else bytes(size))
    with pytest.raises(ValueError, match="data_batch_2.bin.*truncated or malformed.*3073"):
        load_dataset(root)
    assert len(load_dataset(root, split="test")) == 4  # the test split does not read it


def test_cifar_missing_split_and_bad_labels(cifar):
    root, _ = cifar
    (root / "cifar-10-batches-bin" / "test_batch.bin").unlink()
    with pytest.raises(ValueError, match="split='test'"):
        load_dataset(root, split="test")
    (root / "cifar-10-batches-bin" / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="data_batch_.*2 class names"):
        load_dataset(root)


# ---------------------------------------------------------------------------
# CelebA
# ---------------------------------------------------------------------------


def write_celeba(root: Path, n=6, partition=(0, 0, 1, 2, 0, 2), size=(12, 10), seed=1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    written = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
        path = folder / f"{i + 1:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=100)
        with Image.open(path) as image:  # JPEG is lossy: the truth is what Pillow reads back
            written.append(np.asarray(image.convert("RGB")))
    if partition is not None:
        lines = [f"{i + 1:06d}.jpg {p}" for i, p in enumerate(partition[:n])]
        (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return written


def expected_images(pixels: list[np.ndarray]) -> torch.Tensor:
    return unit(np.stack(pixels).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("given", ["parent", "folder"])
def test_celeba_splits_by_partition_file(tmp_path, given):
    pixels = write_celeba(tmp_path)
    path = tmp_path if given == "parent" else tmp_path / "img_align_celeba"
    train = load_dataset(path)
    assert train.labels is None and train.class_names is None and train.name == "celeba:train"
    assert torch.equal(train.images, expected_images([pixels[i] for i in (0, 1, 4)]))
    test = load_dataset(path, split="test")
    assert torch.equal(test.images, expected_images([pixels[i] for i in (3, 5)]))  # valid (index 2) in neither
    assert train.images.shape[1:] == (3, 12, 10)
    assert torch.equal(load_dataset(path, limit=2, shard=(1, 2)).images, expected_images([pixels[1]]))


def test_celeba_without_partition_file_is_the_whole_folder(tmp_path):
    pixels = write_celeba(tmp_path, n=3, partition=None)
    for split in ("train", "test"):
        assert torch.equal(load_dataset(tmp_path, split=split).images, expected_images(pixels))
    with pytest.raises(ValueError, match="needs labels"):
        load_dataset(tmp_path, classes=0)


def test_celeba_kaggle_csv_and_nested_folder(tmp_path):
    pixels = write_celeba(tmp_path / "img_align_celeba", n=4, partition=None)  # img_align_celeba/img_align_celeba/
    (tmp_path / "list_eval_partition.csv").write_text(
        "image_id,partition\n000001.jpg,2\n000002.jpg,0\n000003.jpg,0\n000004.jpg,1\n000099.jpg,0\n")
    assert torch.equal(load_dataset(tmp_path).images, expected_images(pixels[1:3]))
    assert torch.equal(load_dataset(tmp_path, split="test").images, expected_images(pixels[:1]))


def test_celeba_partition_file_must_list_every_image(tmp_path):
    write_celeba(tmp_path, n=3)
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 0\n")
    with pytest.raises(ValueError, match="does not list 1 image.*000003.jpg"):
        load_dataset(tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 5\n000003.jpg 0\n")
    with pytest.raises(ValueError, match="line 2: partition must be 0, 1 or 2"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------------------
# resize
# ---------------------------------------------------------------------------


def test_resize_shapes_range_and_matches_interpolate(cifar):
    root, written = cifar
    reference = load_dataset(root).images
    for size, antialias in ((8, True), (32, None), (40, False)):
        data = load_dataset(root, resize=size)
        assert data.images.shape == (10, 3, size, size) and data.images.dtype == torch.float32
        assert data.images.min() >= -1 and data.images.max() <= 1
        if antialias is None:
            assert torch.equal(data.images, reference)  # already S x S: untouched
        else:
            direct = F.interpolate(reference, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=antialias).clamp(-1, 1)
            assert torch.equal(data.images, direct)
    assert load_dataset(root, resize=8).labels.tolist() == written["train"][1].tolist()


def test_resize_known_bilinear_case():
    # 2x2 -> 4x4 upsampling, align_corners=False: output row 1 = 3/4 * row 0 + 1/4 * row 1 of the input, etc.
    image = torch.tensor([[[[-1.0, 1.0], [1.0, -1.0]]]])
    out = resize_images(image, 4)[0, 0]
    assert torch.allclose(out[0], torch.tensor([-1.0, -0.5, 0.5, 1.0]))
    assert torch.allclose(out[1], torch.tensor([-0.5, -0.25, 0.25, 0.5]))
    # 4 -> 2 with antialias: a triangle filter widened to the scale 2, weights 1 - |d|/2 at distances
    # d = 0.5, 0.5, 1.5 from the output centre (the fourth tap falls outside), normalised: (3a + 3b + c) / 7.
    a, b, c, d = -1.0, -0.5, 0.25, 1.0
    ramp = torch.tensor([a, b, c, d]).reshape(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    down = resize_images(ramp, 2)[0, 0]
    expected = torch.tensor([(3 * a + 3 * b + c) / 7, (b + 3 * c + 3 * d) / 7])
    assert torch.allclose(down, expected.expand(2, 2), atol=1e-6)
    plain = F.interpolate(ramp, size=(2, 2), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(plain[0], torch.tensor([(a + b) / 2, (c + d) / 2]))  # no antialias: 2 taps only


def test_resize_keeps_constants_and_stays_in_range():
    for value in (-1.0, 0.3, 1.0):
        constant = torch.full((2, 3, 28, 28), value)
        for size in (8, 13, 32, 57):
            out = resize_images(constant, size)
            assert out.shape == (2, 3, size, size)
            assert torch.allclose(out, torch.full_like(out, value), atol=1e-6)
    # Antialiased downsampling of a +-1 image overshoots by float rounding only; the clamp removes it.
    binary = torch.randint(0, 2, (64, 3, 37, 29), generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    for size in (8, 16, 32):
        raw = F.interpolate(binary, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        assert raw.max() <= 1 + 1e-6 and raw.min() >= -1 - 1e-6
        out = resize_images(binary, size)
        assert out.max() <= 1 and out.min() >= -1


def test_resize_in_chunks_equals_at_once(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, size=(23, 20, 20), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    array = np.load(tmp_path / "x.npy", mmap_mode="r")[:, None]
    rows = np.array([0, 1, 2, 5, 9, 10, 22])

    def fetch(r):
        return array[r]

    whole = convert_rows(fetch, rows, (0, 255), size=9, chunk_bytes=10**9)
    chunked = convert_rows(fetch, rows, (0, 255), size=9, chunk_bytes=1)  # one row per chunk
    assert torch.equal(whole, chunked) and whole.shape == (7, 1, 9, 9)
    loaded = load_dataset(tmp_path / "x.npy", resize=9)
    assert torch.equal(loaded.images[rows], whole)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_resize_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="resize must be a positive int"):
        load_dataset(None, limit=3, resize=bad)


def test_resize_embedded_image_folder_and_celeba(tmp_path):
    data = load_dataset(None, limit=5, resize=32)  # 28 -> 32: plain bilinear
    assert data.images.shape == (5, 1, 32, 32)
    reference = load_dataset(None, limit=5).images
    assert torch.equal(data.images, F.interpolate(reference, size=(32, 32), mode="bilinear", align_corners=False))
    write_celeba(tmp_path, n=6)
    celeba = load_dataset(tmp_path, resize=5)
    direct = F.interpolate(load_dataset(tmp_path).images, size=(5, 5), mode="bilinear", align_corners=False,
                           antialias=True).clamp(-1, 1)
    assert torch.equal(celeba.images, direct)


def test_cli_sample_records_resize(tmp_path):
    from creativity_fast.cli import main

    write_cifar(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["sample", "--data", str(tmp_path / "data"), "--resize", "8", "--seeds", "0", "--steps", "2",
                 "--limit", "10", "--patch-schedule", "3", "--no-progress", "--out", str(out)]) == 0
    arrays = np.load(out / "samples.npz")
    assert arrays["samples"].shape == (1, 3, 8, 8)
    settings = json.loads(str(arrays["settings"]))
    assert settings["resize"] == 8 and settings["data_name"] == "cifar10:train" and settings["n_train"] == 10
    # analyze reloads the training set (and the test split as held-out images) at the recorded size.
    assert main(["analyze", str(out / "samples.npz"), "--out", str(out / "analysis")]) == 0
    metrics = json.loads((out / "analysis" / "samples_metrics.json").read_text())
    assert metrics["inputs"]["resize"] == 8 and metrics["inputs"]["n_train"] == 10 and metrics["inputs"]["heldout"] == 4


def test_cli_resize_must_be_positive(tmp_path, capsys):
    from creativity_fast.cli import main

    code = main(["sample", "--resize", "0", "--seeds", "0", "--steps", "1", "--out", str(tmp_path)])
    assert code != 0 and "--resize must be a positive int" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Hugging Face datasets (optional dependency)
# ---------------------------------------------------------------------------


def test_hf_folder_without_datasets_installed_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    (tmp_path / "state.json").write_text("{}")
    (tmp_path / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(ValueError, match="Hugging Face datasets folder.*pip install datasets"):
        load_dataset(tmp_path)


def test_hf_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(6, 7, 9, 3), dtype=np.uint8)
    labels = [0, 2, 1, 2, 0, 1]
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["a", "b", "c"])})
    table = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p) for p in pixels], "fine": labels}, features=features)
    table.save_to_disk(str(tmp_path / "single"))
    data = load_dataset(tmp_path / "single")
    assert torch.equal(data.images, unit(pixels.transpose(0, 3, 1, 2)))  # PNG-encoded: lossless
    assert data.labels.tolist() == labels and data.class_names == ["a", "b", "c"]
    assert load_dataset(tmp_path / "single", classes="c", resize=4).images.shape == (2, 3, 4, 4)
    datasets.DatasetDict({"train": table, "test": table.select([1, 2])}).save_to_disk(str(tmp_path / "dict"))
    test = load_dataset(tmp_path / "dict", split="test")
    assert torch.equal(test.images, unit(pixels[1:3].transpose(0, 3, 1, 2))) and test.labels.tolist() == [2, 1]
