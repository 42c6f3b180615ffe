"""Training data: the ``Dataset`` container, file loaders and synthetic sets."""

from creativity_fast.data.loaders import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    Dataset,
    embedded_dataset_path,
    load_dataset,
    load_fashion_mnist_full,
    read_idx,
    shard_bounds,
    to_unit_range,
    write_idx,
)
from creativity_fast.data.synthetic import (
    DEFAULT_ALPHABET,
    GLYPH_NAMES,
    GLYPHS,
    black_white_toy,
    digits8x8,
    find_glyphs,
    glyph_match_scores,
    glyph_templates,
    locate_glyphs,
    twin_glyphs,
)

__all__ = [
    "DEFAULT_ALPHABET",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "GLYPHS",
    "GLYPH_NAMES",
    "Dataset",
    "black_white_toy",
    "digits8x8",
    "embedded_dataset_path",
    "find_glyphs",
    "glyph_match_scores",
    "glyph_templates",
    "load_dataset",
    "load_fashion_mnist_full",
    "locate_glyphs",
    "read_idx",
    "shard_bounds",
    "to_unit_range",
    "twin_glyphs",
    "write_idx",
]
