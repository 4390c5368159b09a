"""In-memory scores: agreement with scikit-image, hand-computed cases, conventions, edge cases."""

import math

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from emcore.contingency import ContingencyTable, EvaluationError, count_block
from emcore.metrics import (
    SCORE_KEYS,
    merge_contributions,
    segmentation_scores,
    split_contributions,
)
from pipeline.synth import generate


def _skimage_scores(seg, gt, ignore=(0,)):
    split, merge = variation_of_information(gt, seg, ignore_labels=ignore)
    return {"voi_split": split, "voi_merge": merge, "arand": adapted_rand_error(gt, seg, ignore_labels=ignore)[0]}


def _blocky(rng, shape, n_labels, block=(2, 4, 4)):
    small = rng.integers(0, n_labels, tuple(-(-s // b) for s, b in zip(shape, block)))
    big = small
    for axis, b in enumerate(block):
        big = np.repeat(big, b, axis=axis)
    return big[tuple(slice(0, s) for s in shape)]


def _perturbed(rng, gt):
    """A segmentation with splits (half the volume relabelled) and merges (ids folded)."""
    seg = gt.astype(np.int64) % 23
    seg[:, gt.shape[1] // 2:] += 1000
    seg[rng.random(gt.shape) < 0.02] = 0
    return seg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_skimage_on_random_volumes(seed):
    rng = np.random.default_rng(seed)
    gt = _blocky(rng, (9, 30, 26), 40)
    seg = _perturbed(rng, gt)
    ours = segmentation_scores(seg, gt)
    for key, value in _skimage_scores(seg, gt).items():
        assert ours[key] == pytest.approx(value, abs=1e-9)
    assert ours["voi"] == pytest.approx(ours["voi_split"] + ours["voi_merge"], abs=1e-12)
    assert ours["cremi"] == pytest.approx(math.sqrt(ours["arand"] * ours["voi"]), abs=1e-12)


def test_matches_skimage_on_synthetic_em_labels():
    _, gt = generate((12, 64, 64), seed=3)
    seg = _perturbed(np.random.default_rng(3), gt)
    ours = segmentation_scores(seg, gt)
    for key, value in _skimage_scores(seg, gt).items():
        assert ours[key] == pytest.approx(value, abs=1e-9)
    assert ours["voi"] > 0.1


def test_ignore_gt_none_matches_skimage_without_ignore():
    rng = np.random.default_rng(4)
    gt = _blocky(rng, (6, 20, 20), 5)
    seg = _perturbed(rng, gt)
    ours = segmentation_scores(seg, gt, ignore_gt=())
    for key, value in _skimage_scores(seg, gt, ignore=()).items():
        assert ours[key] == pytest.approx(value, abs=1e-9)


def test_hand_computed_split():
    # One GT object of 4 voxels split 2/2: H(S|G) = 1 bit, H(G|S) = 0.
    # Pairs (no self pairs): X = 2*(4-2) = 4, A = 16-4 = 12, B = 8-4 = 4 -> recall 1/3, precision 1.
    gt = np.array([5, 5, 5, 5, 0])
    seg = np.array([1, 1, 2, 2, 9])
    scores = segmentation_scores(seg, gt)
    assert scores["voi_split"] == pytest.approx(1.0)
    assert scores["voi_merge"] == pytest.approx(0.0)
    assert scores["rand_split"] == pytest.approx(2 / 3)
    assert scores["rand_merge"] == pytest.approx(0.0)
    assert scores["arand"] == pytest.approx(1 - 4 / 8)


def test_identical_and_relabelled_segmentations_are_perfect():
    rng = np.random.default_rng(5)
    gt = _blocky(rng, (5, 16, 16), 30).astype(np.uint64) + 1
    permuted = rng.permutation(gt.max() + 1).astype(np.uint64)[gt] + np.uint64(2**40)
    for seg in (gt, permuted):
        scores = segmentation_scores(seg, gt)
        assert all(abs(scores[k]) < 1e-12 for k in SCORE_KEYS)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.uint64, np.int32, np.int64])
def test_dtypes_and_large_ids_give_identical_scores(dtype):
    rng = np.random.default_rng(6)
    gt = _blocky(rng, (6, 20, 24), 60)
    seg = _perturbed(rng, gt) % 100
    reference = segmentation_scores(seg.astype(np.uint64), gt.astype(np.uint64))
    assert segmentation_scores(seg.astype(dtype), gt.astype(dtype)) == pytest.approx(reference, abs=1e-12)
    shifted_gt = np.where(gt > 0, gt.astype(np.uint64) + np.uint64(2**33 + 2**60), 0)
    shifted_seg = seg.astype(np.uint64) * np.uint64(2**35) + np.uint64(7)
    assert segmentation_scores(shifted_seg, shifted_gt) == pytest.approx(reference, abs=1e-12)


def test_ids_at_the_32_and_64_bit_boundaries_are_distinct_labels():
    rng = np.random.default_rng(9)
    small_gt = rng.integers(0, 5, (4, 10, 10))
    small_seg = rng.integers(0, 5, (4, 10, 10))
    edge_ids = np.array([0, 2**32 - 2, 2**32 - 1, 2**32, 2**64 - 1], np.uint64)
    expected = segmentation_scores(small_seg, small_gt)
    assert segmentation_scores(edge_ids[small_seg], np.where(small_gt > 0, edge_ids[small_gt], 0)) == \
        pytest.approx(expected, abs=1e-12)
    assert segmentation_scores(edge_ids[small_seg], small_gt) == pytest.approx(expected, abs=1e-12)


def test_segment_zero_is_an_ordinary_label_and_ignore_seg_drops_it():
    gt = np.array([1, 1, 2, 2, 0, 0])
    seg = np.array([0, 0, 0, 0, 3, 3])
    merged = segmentation_scores(seg, gt)
    assert merged["voi_merge"] == pytest.approx(1.0)  # segment 0 merges two equal GT objects
    assert merged["voi_split"] == pytest.approx(0.0)
    seg_kept = np.array([0, 0, 4, 4, 3, 3])
    dropped = segmentation_scores(seg_kept, gt, ignore_seg=(0,))
    assert dropped == pytest.approx(segmentation_scores(seg_kept[2:4], gt[2:4]))


def test_swapping_arguments_swaps_split_and_merge():
    rng = np.random.default_rng(7)
    a = _blocky(rng, (4, 12, 12), 9) + 1
    b = _perturbed(rng, a) + 1
    ab, ba = segmentation_scores(a, b, ignore_gt=()), segmentation_scores(b, a, ignore_gt=())
    assert ab["voi_split"] == pytest.approx(ba["voi_merge"], abs=1e-12)
    assert ab["rand_split"] == pytest.approx(ba["rand_merge"], abs=1e-12)
    assert ab["arand"] == pytest.approx(ba["arand"], abs=1e-12)


def test_single_object_and_single_voxel_are_perfect():
    ones = np.ones((3, 4, 5), np.uint16)
    assert segmentation_scores(ones, ones * 7)["voi"] == 0.0
    single = segmentation_scores(np.array([[[4]]]), np.array([[[2]]]))
    assert single["arand"] == 0.0 and single["voi"] == 0.0  # no voxel pairs: 0/0 taken as agreement


def test_all_background_gt_is_an_error():
    with pytest.raises(EvaluationError, match="no voxel left to evaluate"):
        segmentation_scores(np.arange(8).reshape(2, 2, 2), np.zeros((2, 2, 2), np.uint64))


@pytest.mark.parametrize("seg, gt, message", [
    (np.zeros(4, np.float32), np.zeros(4, np.uint64), "labels must be integers"),
    (np.zeros(4, np.uint64), np.ones(4, bool), "labels must be integers"),
    (np.array([1, -2, 3, 4]), np.ones(4, np.int64), "negative labels"),
    (np.zeros(4, np.uint64), np.zeros(5, np.uint64), "shape mismatch"),
])
def test_bad_inputs_raise_one_clear_error(seg, gt, message):
    with pytest.raises(EvaluationError, match=message):
        segmentation_scores(seg, gt)


def test_contributions_sum_to_voi_terms_and_tables_merge_exactly():
    rng = np.random.default_rng(8)
    gt = _blocky(rng, (8, 20, 20), 25)
    seg = _perturbed(rng, gt)
    table = count_block(seg, gt).table
    scores = segmentation_scores(seg, gt)
    assert split_contributions(table)[2].sum() == pytest.approx(scores["voi_split"], abs=1e-12)
    assert merge_contributions(table)[2].sum() == pytest.approx(scores["voi_merge"], abs=1e-12)
    halves = [count_block(seg[:3], gt[:3]).table, count_block(seg[3:], gt[3:]).table]
    merged = ContingencyTable.merge(halves)
    for field in ("gt", "seg", "counts"):
        np.testing.assert_array_equal(getattr(merged, field), getattr(table, field))
    assert table.n_voxels == int((gt != 0).sum())
