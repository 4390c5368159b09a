"""Tests for corrseg3d.ccm: the CCM view transform and its exact inverse."""

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from corrseg3d.ccm import FlipRule, apply_flip, invert_flip, invert_flips, make_view

ALL_RULES = [FlipRule(*bits) for bits in itertools.product((False, True), repeat=4)]


@pytest.mark.parametrize("shape", [(3, 5, 5), (2, 4, 7, 16, 16), (1, 1, 1)])
def test_invert_flip_is_exact_inverse_for_all_rules(shape):
    data = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)
    images = {apply_flip(data, rule).numpy().tobytes() for rule in ALL_RULES}
    if shape[-1] > 1:
        assert len(images) == 16
    for rule in ALL_RULES:
        assert torch.equal(invert_flip(apply_flip(data, rule), rule), data)
        array = data.numpy()
        back = invert_flip(apply_flip(array, rule), rule)
        np.testing.assert_array_equal(back, array)
        assert back.flags.c_contiguous


@pytest.mark.parametrize("shape", [(3, 5, 6), (4, 7, 3)])
def test_non_square_inverse_without_transpose_and_error_with(shape):
    data = np.arange(int(np.prod(shape))).reshape(shape)
    for rule in ALL_RULES:
        if rule.transpose:
            with pytest.raises(ValueError, match="square"):
                apply_flip(data, rule)
        else:
            np.testing.assert_array_equal(invert_flip(apply_flip(data, rule), rule), data)


def test_apply_flip_order_z_x_y_then_transpose():
    data = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    np.testing.assert_array_equal(apply_flip(data, FlipRule(True, True, False, True)), data[::-1, :, ::-1].swapaxes(1, 2))
    np.testing.assert_array_equal(apply_flip(data, FlipRule(False, False, True, False)), data[:, ::-1])


def test_invert_flips_per_sample():
    rules = [ALL_RULES[5], ALL_RULES[14]]
    batch = torch.randn(2, 3, 4, 8, 8)
    flipped = torch.stack([apply_flip(sample, rule) for sample, rule in zip(batch, rules)])
    assert torch.equal(invert_flips(flipped, rules), batch)


def test_make_view_statistics_and_reproducibility():
    image = np.random.default_rng(0).random((12, 64, 64)).astype(np.float32)
    view, rule = make_view(image, np.random.default_rng(7))
    view2, rule2 = make_view(image, np.random.default_rng(7))
    assert view.dtype == np.float32 and view.shape == image.shape and rule == rule2
    np.testing.assert_array_equal(view, view2)
    assert 0 <= view.min() and view.max() <= 1
    rules, jittered = set(), 0
    for seed in range(60):
        view, rule = make_view(image, np.random.default_rng(seed))
        rules.add(rule)
        unflipped = invert_flip(view, rule)
        kept = unflipped != 0
        jittered += not np.allclose(unflipped[kept], image[kept])
    assert len(rules) >= 12
    assert 15 <= jittered <= 45  # probability 0.5


def test_cutout_zeroes_cuboids_of_allowed_size():
    image = np.random.default_rng(2).uniform(0.1, 1.0, (24, 96, 96)).astype(np.float32)
    counts = []
    for seed in range(20):
        view, _ = make_view(image, np.random.default_rng(seed), intensity=False, flip=False)
        zero = view == 0
        np.testing.assert_array_equal(view[~zero], image[~zero])
        components, count = ndimage.label(zero)
        counts.append(count)
        for box in ndimage.find_objects(components):
            depth, height, width = (s.stop - s.start for s in box)
            assert depth >= 5 and height >= 10 and width >= 10
    assert min(counts) < max(counts)
    assert max(counts) > 5


def test_make_view_switches_and_non_square():
    image = np.random.default_rng(1).random((4, 32, 48)).astype(np.float32)
    view, rule = make_view(image, np.random.default_rng(0), intensity=False, cutout=False, flip=False)
    np.testing.assert_array_equal(view, image)
    assert rule == FlipRule(False, False, False, False)
    for seed in range(30):
        view, rule = make_view(image, np.random.default_rng(seed), intensity=False, cutout=False)
        assert not rule.transpose
        np.testing.assert_array_equal(invert_flip(view, rule), image)
