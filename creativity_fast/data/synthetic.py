"""Small synthetic training sets for tests and analyses.

- ``black_white_toy``: the two-image set of Kamb & Ganguli (one all-black, one
  all-white image). The ideal score machine can only reproduce these two, while
  a local machine can mix black and white patches into new images.
- twin glyphs: every image holds two copies of one glyph from a small
  alphabet. A sample is *globally consistent* when all the glyphs it holds are
  the same; local machines (ELS) tend to mix glyphs, attention should not.
- ``digits8x8``: scikit-learn's 8x8 digits, when scikit-learn is installed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from creativity_fast.data.loaders import Dataset

__all__ = [
    "GLYPHS",
    "GLYPH_SIZE",
    "DEFAULT_ALPHABET",
    "DEFAULT_GLYPH_THRESHOLD",
    "black_white_toy",
    "glyph_templates",
    "twin_glyphs",
    "glyph_match_scores",
    "locate_glyphs",
    "find_glyphs",
    "digits8x8",
]


def _check_positive_int(value: object, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")
    return int(value)


def black_white_toy(H: int = 8, W: int = 8, C: int = 1) -> Dataset:
    """The black/white toy training set: images [2, C, H, W], image 0 all -1, image 1 all +1.

    Labels are 0 (black) and 1 (white).
    """
    H, W, C = (_check_positive_int(v, name) for v, name in ((H, "H"), (W, "W"), (C, "C")))
    images = torch.stack([torch.full((C, H, W), -1.0), torch.full((C, H, W), 1.0)])
    return Dataset(images, torch.tensor([0, 1]), ["black", "white"], "black_white_toy", "synthetic:black_white_toy")


# Glyph templates: '#' is a stroke (+1), '.' is background (-1). Every glyph
# touches all four sides of its 5x5 box, so no glyph is a shifted copy of
# another, and every row and column of every glyph holds a stroke.
_GLYPH_ART = (
    ("plus", "..#..", "..#..", "#####", "..#..", "..#.."),
    ("cross", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    ("ring", "#####", "#...#", "#...#", "#...#", "#####"),
    ("tee", "#####", "..#..", "..#..", "..#..", "..#.."),
    ("diamond", "..#..", ".#.#.", "#...#", ".#.#.", "..#.."),
    ("aitch", "#...#", "#...#", "#####", "#...#", "#...#"),
)
GLYPH_NAMES: tuple[str, ...] = tuple(art[0] for art in _GLYPH_ART)
#: Binary glyph templates [len(GLYPH_NAMES), 5, 5] bool (True = stroke).
GLYPHS: np.ndarray = np.array([[[c == "#" for c in row] for row in art[1:]] for art in _GLYPH_ART], dtype=bool)
GLYPHS.setflags(write=False)
GLYPH_SIZE = GLYPHS.shape[1]
DEFAULT_ALPHABET = 4
# Fraction of the 25 template pixels whose sign must agree: one flipped pixel is allowed.
DEFAULT_GLYPH_THRESHOLD = 0.96
# Empty pixels kept between the boxes of the two glyphs of an image.
_GLYPH_GAP = 1


def _check_alphabet(alphabet: object) -> int:
    alphabet = _check_positive_int(alphabet, "alphabet")
    if alphabet > len(GLYPHS):
        raise ValueError(f"alphabet must be at most {len(GLYPHS)} (the number of glyphs), got {alphabet}")
    return alphabet


def glyph_templates(alphabet: int = DEFAULT_ALPHABET) -> torch.Tensor:
    """The first ``alphabet`` glyphs as +-1 images: [alphabet, 1, 5, 5] float32."""
    alphabet = _check_alphabet(alphabet)
    return torch.from_numpy(GLYPHS[:alphabet].astype(np.float32) * 2 - 1)[:, None]


def _place_two_boxes(rng: np.random.Generator, H: int, W: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Top-left corners of two glyph boxes inside [H, W] that neither overlap nor touch."""
    span = GLYPH_SIZE + _GLYPH_GAP
    for _ in range(10_000):
        first = (int(rng.integers(0, H - GLYPH_SIZE + 1)), int(rng.integers(0, W - GLYPH_SIZE + 1)))
        second = (int(rng.integers(0, H - GLYPH_SIZE + 1)), int(rng.integers(0, W - GLYPH_SIZE + 1)))
        if abs(first[0] - second[0]) >= span or abs(first[1] - second[1]) >= span:
            return first, second
    raise RuntimeError("could not place two glyphs")  # unreachable when the size check passed


def twin_glyphs(n: int, H: int = 16, W: int = 16, *, alphabet: int = DEFAULT_ALPHABET, seed: int = 0) -> Dataset:
    """``n`` images [n, 1, H, W]: background -1 with two copies (+1 strokes) of one glyph.

    The glyph of each image is drawn uniformly from the first ``alphabet``
    glyphs (its id is the label); the two copies sit at random places with at
    least one background pixel between their 5x5 boxes. Deterministic in ``seed``.
    """
    n = _check_positive_int(n, "n")
    H, W = _check_positive_int(H, "H"), _check_positive_int(W, "W")
    alphabet = _check_alphabet(alphabet)
    span = 2 * GLYPH_SIZE + _GLYPH_GAP
    if min(H, W) < GLYPH_SIZE or max(H, W) < span:
        raise ValueError(
            f"H, W = {H}, {W} cannot hold two separated {GLYPH_SIZE}x{GLYPH_SIZE} glyphs; "
            f"need min(H, W) >= {GLYPH_SIZE} and max(H, W) >= {span}"
        )
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, alphabet, size=n)
    images = np.full((n, 1, H, W), -1.0, dtype=np.float32)
    strokes = GLYPHS.astype(np.float32) * 2 - 1
    for index, glyph in enumerate(labels):
        for top, left in _place_two_boxes(rng, H, W):
            images[index, 0, top : top + GLYPH_SIZE, left : left + GLYPH_SIZE] = strokes[glyph]
    return Dataset(
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64)),
        list(GLYPH_NAMES[:alphabet]),
        f"twin_glyphs_{H}x{W}_a{alphabet}",
        f"synthetic:twin_glyphs(n={n}, H={H}, W={W}, alphabet={alphabet}, seed={seed})",
    )


def glyph_match_scores(images: torch.Tensor, *, alphabet: int = DEFAULT_ALPHABET) -> torch.Tensor:
    """Fraction of template pixels whose sign agrees with the image, at every glyph position.

    images: [N, C, H, W] in [-1, 1] (channels are averaged; a pixel > 0 is a stroke).
    Returns [N, alphabet, H - 4, W - 4]: entry [n, g, i, j] is the agreement of
    glyph g with the 5x5 window whose top-left pixel is (i, j); 1.0 is a perfect match.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {list(images.shape)}")
    if images.shape[2] < GLYPH_SIZE or images.shape[3] < GLYPH_SIZE:
        raise ValueError(f"images must be at least {GLYPH_SIZE}x{GLYPH_SIZE}, got {list(images.shape[2:])}")
    # Binarise first: sampled images are near, not exactly at, +-1.
    signs = torch.where(images.detach().float().mean(dim=1, keepdim=True).cpu() > 0, 1.0, -1.0)
    templates = glyph_templates(alphabet)
    # <sign, template> = agreements - disagreements over the 25 pixels.
    correlation = F.conv2d(signs, templates)
    return (correlation / templates[0].numel() + 1) / 2


def locate_glyphs(
    images: torch.Tensor, *, alphabet: int = DEFAULT_ALPHABET, threshold: float = DEFAULT_GLYPH_THRESHOLD
) -> list[list[tuple[int, int, int]]]:
    """Glyph occurrences per image as (glyph id, top, left), in reading order.

    images: [N, C, H, W] in [-1, 1]. A window is a detection when its match
    score (see ``glyph_match_scores``) is at least ``threshold``; detections
    are taken greedily by score and a detection whose 5x5 box overlaps an
    earlier one is dropped (so one glyph is never counted twice).
    """
    if not 0 < float(threshold) <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    scores = glyph_match_scores(images, alphabet=alphabet)
    found: list[list[tuple[int, int, int]]] = []
    for image_scores in scores:
        glyph_ids, tops, lefts = torch.nonzero(image_scores >= float(threshold) - 1e-6, as_tuple=True)
        candidates = sorted(
            zip(image_scores[glyph_ids, tops, lefts].tolist(), glyph_ids.tolist(), tops.tolist(), lefts.tolist()),
            key=lambda item: (-item[0], item[2], item[3], item[1]),
        )
        kept: list[tuple[int, int, int]] = []
        for _, glyph, top, left in candidates:
            overlaps = any(abs(top - t) < GLYPH_SIZE and abs(left - l) < GLYPH_SIZE for _, t, l in kept)
            if not overlaps:
                kept.append((glyph, top, left))
        found.append(sorted(kept, key=lambda item: (item[1], item[2])))
    return found


def find_glyphs(
    images: torch.Tensor, *, alphabet: int = DEFAULT_ALPHABET, threshold: float = DEFAULT_GLYPH_THRESHOLD
) -> list[list[int]]:
    """Ids of the glyphs detected in each image, one entry per occurrence, in reading order.

    images: [N, C, H, W] in [-1, 1]. An image is globally consistent when it
    holds at least one glyph and every detected id is the same.
    """
    return [[glyph for glyph, _, _ in occurrences] for occurrences in locate_glyphs(
        images, alphabet=alphabet, threshold=threshold
    )]


def digits8x8() -> Dataset:
    """scikit-learn's 8x8 handwritten digits: images [1797, 1, 8, 8] in [-1, 1], labels 0..9.

    Needs the optional dependency scikit-learn (``pip install scikit-learn``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("digits8x8() needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    # Pixel values are counts 0..16.
    images = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 8.0 - 1.0)[:, None]
    labels = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    return Dataset(images.contiguous(), labels, [str(d) for d in range(10)], "digits8x8", "sklearn:load_digits")
