"""The uint8 mutex watershed kernel gives bioimage-cpp's partition on the same quantised weights."""

from __future__ import annotations

import numpy as np
import pytest
from bioimage_cpp.segmentation import mutex_watershed as bioimage_cpp_mutex_watershed

from emcore.conventions import PEA_OFFSETS
from emcore.mws import mutex_watershed
from emcore.mws_uint8 import mutex_watershed_uint8
from pipeline.noisy_affinities import noisy_affinities
from pipeline.synth import generate

OFFSETS = np.array(PEA_OFFSETS)


def _bioimage_cpp(affs: np.ndarray, strides, mask=None) -> np.ndarray:
    """bioimage-cpp on weights a/255 (attractive) and (255 - a)/255 (repulsive): exact ties."""
    weights = affs.astype(np.float64)
    weights[3:] = 255 - weights[3:]
    return bioimage_cpp_mutex_watershed((weights / 255).astype(np.float32), OFFSETS.tolist(), 3,
                                        strides=list(strides), randomized_strides=False, mask=mask)


@pytest.mark.parametrize("shape", [(5, 37, 41), (8, 64, 48)])
@pytest.mark.parametrize("strides", [(1, 1, 1), (1, 4, 4), (2, 3, 5)])
def test_random_weights_equal_bioimage_cpp(shape, strides):
    # uniform uint8 weights: every level has ties between channels, so the tie rule is exercised
    affs = np.random.default_rng(sum(shape) + sum(strides)).integers(0, 256, (12,) + shape).astype(np.uint8)
    np.testing.assert_array_equal(mutex_watershed_uint8(affs, OFFSETS, strides), _bioimage_cpp(affs, strides))


def test_noisy_affinities_with_mask_equal_bioimage_cpp():
    _, labels = generate((12, 96, 96), seed=4)
    affs = noisy_affinities(labels, seed=4)
    mask = np.random.default_rng(1).random(labels.shape) > 0.1
    ours = mutex_watershed_uint8(affs, OFFSETS, (1, 4, 4), mask=mask)
    theirs = _bioimage_cpp(affs, (1, 4, 4), mask=mask)  # not consecutive under a mask
    assert (ours[~mask] == 0).all() and ours.max() == len(np.unique(ours[mask])) > 50
    pairs = np.unique(np.stack([ours.ravel(), theirs.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(ours)) == len(np.unique(theirs))  # the same partition


def test_uint8_and_float_inputs_give_the_same_segmentation():
    _, labels = generate((8, 64, 64), seed=5)
    affs = noisy_affinities(labels, seed=5)
    from_uint8 = mutex_watershed(affs, PEA_OFFSETS)
    from_float = mutex_watershed(affs.astype(np.float32) / 255, PEA_OFFSETS)
    np.testing.assert_array_equal(from_uint8, from_float)


def test_more_channels_than_the_edge_code_holds_is_an_error():
    offsets = np.array([[0, 0, -1]] * 17)
    with pytest.raises(ValueError, match="at most 16 affinity channels"):
        mutex_watershed_uint8(np.zeros((17, 2, 4, 4), np.uint8), offsets, (1, 1, 1))


def test_positive_offsets_are_an_error():
    with pytest.raises(ValueError, match="non-positive"):
        mutex_watershed_uint8(np.zeros((3, 2, 4, 4), np.uint8), np.array([[-1, 0, 0], [0, 1, 0], [0, 0, -1]]), (1, 1, 1))
