"""Augmentations keep image and labels aligned, keep the label dtype, and follow their config."""

import numpy as np
import pytest

from corrseg3d.augment import (
    adjust_intensity,
    augment,
    drop_sections,
    elastic_coordinates,
    flip_transpose,
    misalign,
    rotation_coordinates,
    warp_xy,
)
from corrseg3d.config import AugmentConfig

LABEL_SCALE = 1000.0


def _label_coded(seed=0, shape=(4, 48, 48), block=8):
    """uint64 labels made of block x block squares with huge ids, and an image that encodes them."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(1, 2**40, size=(shape[0], shape[1] // block, shape[2] // block), dtype=np.uint64)
    labels = np.repeat(np.repeat(grid, block, axis=1), block, axis=2)
    codes = {int(v): i + 1 for i, v in enumerate(np.unique(labels))}
    image = np.vectorize(codes.get)(labels).astype(np.float32) / LABEL_SCALE
    return image, labels, codes


def _consistent(image, labels, codes):
    """Fraction of labelled voxels whose image value still encodes their label."""
    lookup = np.vectorize(lambda v: codes.get(int(v), 0))(labels).astype(np.float32) / LABEL_SCALE
    inside = labels > 0
    return np.mean(np.isclose(image[inside], lookup[inside], atol=1e-6))


@pytest.mark.parametrize("rule", [(1, 0, 0, 0), (0, 1, 0, 1), (1, 1, 1, 1), (0, 0, 1, 0)])
def test_flip_transpose_moves_image_and_labels_together(rule):
    image, labels, codes = _label_coded()
    out_image, out_labels = flip_transpose(image, labels, rule)
    assert out_labels.dtype == np.uint64 and out_image.shape == image.shape
    assert _consistent(out_image, out_labels, codes) == 1.0


def test_flip_rule_semantics():
    labels = np.arange(2 * 3 * 3, dtype=np.uint32).reshape(2, 3, 3)
    _, out = flip_transpose(labels.astype(np.float32), labels, (1, 0, 0, 1))
    assert np.array_equal(out, labels[::-1].transpose(0, 2, 1))


def test_quarter_rotation_is_exact_and_dtype_agnostic():
    image, labels, codes = _label_coded()
    out_image, out_labels = warp_xy(image, labels, rotation_coordinates(labels.shape[1:], 90.0))
    assert out_labels.dtype == np.uint64
    assert np.array_equal(out_labels, np.rot90(labels, k=-1, axes=(1, 2)))
    assert _consistent(out_image, out_labels, codes) == 1.0


@pytest.mark.parametrize("angle", [17.0, 133.0])
def test_arbitrary_rotation_keeps_labels_under_their_pixels(angle):
    image, labels, codes = _label_coded()
    out_image, out_labels = warp_xy(image, labels, rotation_coordinates(labels.shape[1:], angle))
    assert set(np.unique(out_labels)) - {0} <= set(codes)  # ids are moved, never blended
    # Bilinear image vs nearest labels disagree only on the one-pixel rim of each square.
    assert _consistent(out_image, out_labels, codes) > 0.7
    centre = (slice(None), slice(16, 32), slice(16, 32))
    assert (out_labels[centre] > 0).all()


def test_elastic_strength_matches_the_reference():
    rng = np.random.default_rng(0)
    coords = elastic_coordinates((160, 160), rng, alpha=16.0, sigma=4.0)
    grid = np.stack(np.meshgrid(np.arange(160), np.arange(160), indexing="ij"))
    displacement = coords - grid
    assert 0.4 < displacement.std() < 0.9 and np.abs(displacement).max() < 4  # docs/method.md §8


def test_elastic_warp_keeps_alignment():
    image, labels, codes = _label_coded()
    coords = elastic_coordinates(labels.shape[1:], np.random.default_rng(1), alpha=16.0, sigma=4.0)
    out_image, out_labels = warp_xy(image, labels, coords)
    assert _consistent(out_image, out_labels, codes) > 0.6


def test_intensity_per_slice_and_whole():
    image = np.full((6, 8, 8), 0.5, np.float32)
    rng = np.random.default_rng(0)
    per_slice = adjust_intensity(image, rng, contrast=0.3, brightness=0.3, per_slice=True)
    whole = adjust_intensity(image, rng, contrast=0.3, brightness=0.3, per_slice=False)
    assert len(np.unique(per_slice.reshape(6, -1)[:, 0])) == 6
    assert len(np.unique(whole)) == 1 and not np.isclose(whole[0, 0, 0], 0.5)
    assert per_slice.min() >= 0 and per_slice.max() <= 1


def test_missing_sections_blank_whole_slices_only_in_the_image():
    image = np.full((8, 4, 4), 0.5, np.float32)
    out = drop_sections(image, np.random.default_rng(3), max_sections=2)
    blank = [z for z in range(8) if not out[z].any()]
    assert 1 <= len(blank) <= 2 and all(np.all(out[z] == 0.5) for z in range(8) if z not in blank)


def test_misalignment_shifts_image_and_labels_together():
    image, labels, codes = _label_coded()
    out_image, out_labels = misalign(image, labels, np.random.default_rng(2), max_shift=5)
    assert _consistent(out_image, out_labels, codes) == 1.0
    assert np.array_equal(out_labels[0], labels[0]) and not np.array_equal(out_labels, labels)


def test_augment_respects_probabilities_and_alignment():
    image, labels, codes = _label_coded()
    off = AugmentConfig(chain=0.0, missing_section=0.0, misalignment=0.0)
    same_image, same_labels = augment(image, labels, np.random.default_rng(0), off)
    assert np.array_equal(same_image, image) and np.array_equal(same_labels, labels)
    geometric = AugmentConfig(chain=1.0, flip=1.0, rotate=0.0, elastic=0.0, intensity=0.0, misalignment=1.0)
    for seed in range(4):
        out_image, out_labels = augment(image, labels, np.random.default_rng(seed), geometric)
        assert out_labels.dtype == np.uint64 and _consistent(out_image, out_labels, codes) == 1.0
    a = augment(image, labels, np.random.default_rng(7), AugmentConfig(chain=1.0))
    b = augment(image, labels, np.random.default_rng(7), AugmentConfig(chain=1.0))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
