import numpy as np
import pytest

from corrseg3d.separability import affinity_separability
from corrseg3d.targets import label_affinities
from emcore.conventions import PEA_OFFSETS

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, -3, -2)]


def _volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=(3, 6, 7))
    affinities = rng.integers(0, 256, size=(len(OFFSETS),) + labels.shape).astype(np.uint8)
    return labels, affinities


def _brute_force(affinities: np.ndarray, labels: np.ndarray, offset: tuple[int, int, int]) -> tuple[float, float, float]:
    """AUC and class means by enumerating every (positive, negative) pair."""
    positives, negatives = [], []
    for p in np.ndindex(labels.shape):
        q = tuple(i + o for i, o in zip(p, offset))
        if min(q) < 0 or labels[p] == 0 or labels[q] == 0:
            continue
        (positives if labels[p] == labels[q] else negatives).append(int(affinities[p]))
    pos, neg = np.array(positives)[:, None], np.array(negatives)[None, :]
    auc = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    return auc, pos.mean() / 255, neg.mean() / 255


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separability_equals_pairwise_mann_whitney(seed):
    labels, affinities = _volume(seed)
    rows = affinity_separability(affinities, labels, OFFSETS)
    for channel, (row, offset) in enumerate(zip(rows, OFFSETS)):
        auc, mean_positive, mean_negative = _brute_force(affinities[channel], labels, offset)
        assert row["offset"] == offset
        assert row["auc"] == pytest.approx(auc, abs=1e-12)
        assert row["mean_positive"] == pytest.approx(mean_positive)
        assert row["mean_negative"] == pytest.approx(mean_negative)


def test_gt_affinities_separate_perfectly_and_constant_ones_are_chance():
    labels = np.random.default_rng(3).integers(0, 5, size=(6, 40, 40))
    gt, _ = label_affinities(labels, PEA_OFFSETS)
    assert all(row["auc"] == 1.0 for row in affinity_separability(gt.astype(np.float32), labels, PEA_OFFSETS))
    constant = np.full_like(gt, 0.7, dtype=np.float32)
    assert all(row["auc"] == 0.5 for row in affinity_separability(constant, labels, PEA_OFFSETS))


def test_float_affinities_score_as_their_uint8_quantisation():
    labels, affinities = _volume(4)
    as_float = affinities.astype(np.float64) / 255
    assert affinity_separability(as_float, labels, OFFSETS) == affinity_separability(affinities, labels, OFFSETS)


def test_misaligned_affinities_are_rejected():
    labels, affinities = _volume()
    with pytest.raises(ValueError, match=r"one channel per offset"):
        affinity_separability(affinities[:2], labels, OFFSETS)
