"""Tests of the synthetic training sets and of image grids (fast, CPU only)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from creativity_fast import viz
from creativity_fast.data import synthetic


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
