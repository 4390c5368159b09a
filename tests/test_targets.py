"""Tests for corrseg3d.targets: border widening, class balancing, pyramid targets."""

import numpy as np
import pytest
from skimage.metrics import variation_of_information

from corrseg3d.targets import balance_weights, label_affinities, pyramid_targets, widen_borders
from emcore.conventions import NEAREST_OFFSETS, PEA_OFFSETS
from emcore.mws import mutex_watershed


def _blob_labels(shape=(8, 64, 64), n=12, seed=0) -> np.ndarray:
    """Voronoi-like instance labels from random seeds (anisotropic: z distances count 4x)."""
    rng = np.random.default_rng(seed)
    seeds = rng.random((n, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    distance = (((grid[..., None, :] - seeds) * np.array([4.0, 1.0, 1.0])) ** 2).sum(-1)
    return distance.argmin(-1).astype(np.uint32) + 1


def test_widen_borders_per_slice_contacts_only():
    labels = np.zeros((2, 6, 7), dtype=np.uint16)
    labels[:, :, :3] = 1
    labels[:, :, 3:] = 2
    labels[:, 0, :] = 0  # contact with background
    labels[1] = 5  # one object: no contact in this slice even though slice 0 differs
    widened = widen_borders(labels)
    assert widened.dtype == labels.dtype
    expected = labels[0].copy()
    expected[1:, 2:4] = 0
    np.testing.assert_array_equal(widened[0], expected)
    np.testing.assert_array_equal(widened[1], labels[1])


def test_widen_borders_diagonal_contact_and_matches_loop_reference():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(3, 9, 11))
    expected = labels.copy()
    for z, y, x in np.ndindex(labels.shape):
        window = labels[z, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
        if np.any((window != 0) & (window != labels[z, y, x])):
            expected[z, y, x] = 0
    np.testing.assert_array_equal(widen_borders(labels), expected)


def test_balance_weights_valid_region_only():
    affinities = np.zeros((3, 1, 1, 10), dtype=np.uint8)
    valid = np.ones_like(affinities, dtype=bool)
    affinities[0, ..., :8] = 1          # f = 0.8 -> negatives 4
    affinities[1, ..., :1] = 1          # f = 0.1 -> positives 9
    affinities[2] = 1                   # constant -> 1
    valid[:, ..., 9] = False            # invalid band, not counted
    affinities[0, ..., 8] = 0
    weights = balance_weights(affinities, valid)
    assert weights.dtype == np.float32
    f0 = 8 / 9
    np.testing.assert_allclose(weights[0, 0, 0], [1] * 8 + [f0 / (1 - f0), 0], rtol=1e-6)
    f1 = 1 / 9
    np.testing.assert_allclose(weights[1, 0, 0], [(1 - f1) / f1] + [1] * 8 + [0], rtol=1e-6)
    np.testing.assert_allclose(weights[2, 0, 0], [1] * 9 + [0])


def test_balance_weights_clips_fraction():
    affinities = np.zeros((1, 1, 1, 1000), dtype=np.uint8)
    affinities[..., :999] = 1           # f = 0.999 -> clipped 0.99 -> negatives 99
    weights = balance_weights(affinities, np.ones_like(affinities, dtype=bool))
    assert weights.max() == pytest.approx(99.0, rel=1e-5)


@pytest.mark.parametrize("cap", [1.0, 3.0, 50.0])
def test_balance_weights_cap_clips_every_weight_and_keeps_the_rest(cap):
    rng = np.random.default_rng(3)
    affinities = (rng.random((4, 2, 8, 8)) < [[[[0.05]]], [[[0.3]]], [[[0.7]]], [[[0.97]]]]).astype(np.uint8)
    valid = rng.random(affinities.shape) < 0.9
    paper = balance_weights(affinities, valid)
    capped = balance_weights(affinities, valid, cap=cap)
    np.testing.assert_array_equal(capped, np.minimum(paper, cap))
    assert paper.max() > cap or cap == 50.0
    if cap == 1.0:
        np.testing.assert_array_equal(capped, valid.astype(np.float32))  # unweighted MSE
    levels = pyramid_targets(np.repeat(np.arange(4).repeat(8)[None, :, None], 32, axis=2)[:, :, :32], (2,), cap=cap)
    assert levels[0][1].max() <= cap
    with pytest.raises(ValueError, match="cap must be > 0"):
        balance_weights(affinities, valid, cap=0.0)


def test_pyramid_targets_top_left_subsampling_coarse_to_fine():
    labels = _blob_labels((3, 32, 48), n=5)
    levels = pyramid_targets(labels)
    assert [level[0].shape for level in levels] == [(3, 3, 2, 3), (3, 3, 4, 6), (3, 3, 8, 12), (3, 3, 16, 24)]
    for (affinities, weights, valid), factor in zip(levels, (16, 8, 4, 2)):
        expected, expected_valid = label_affinities(labels[:, ::factor, ::factor], NEAREST_OFFSETS)
        np.testing.assert_array_equal(affinities, expected)
        np.testing.assert_array_equal(valid, expected_valid)
        np.testing.assert_array_equal(weights, balance_weights(expected, expected_valid))
    with pytest.raises(ValueError):
        pyramid_targets(np.ones((2, 40, 40), dtype=np.uint8))


def test_gt_affinities_through_mutex_watershed_reproduce_labels():
    labels = widen_borders(_blob_labels())
    affinities, _ = label_affinities(labels, PEA_OFFSETS)
    segmentation = mutex_watershed(affinities.astype(np.float32), PEA_OFFSETS, strides=(1, 1, 1))
    split, merge = variation_of_information(labels, segmentation, ignore_labels=(0,))
    assert split + merge < 0.05
