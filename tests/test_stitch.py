"""Mutual-majority face joins and size merging on small tables."""

from __future__ import annotations

import numpy as np
import pytest

from emcore.regiongraph import merge_small_segments
from pipeline.stitch import mutual_majority


def test_mutual_majority_joins_agreeing_labels_only():
    a = np.array([1] * 10 + [2] * 10 + [3] * 4)
    b = np.array([7] * 10 + [8] * 6 + [9] * 4 + [9] * 4)
    pairs = {tuple(p) for p in mutual_majority(a, b).tolist()}
    # 1<->7 agree fully; 2 is 6/10 in 8 and 8 is fully in 2; 9 is split 4/8 between 2 and 3 (not > 0.5)
    assert pairs == {(1, 7), (2, 8)}


def test_one_false_overlap_cannot_merge_two_large_objects():
    rng = np.random.default_rng(0)
    a = np.array([1] * 1000 + [2] * 1000)
    b = a + 10
    b[995:1005] = 99  # a small false bridge touching both objects
    b = rng.permutation(np.stack([a, b], 1))
    pairs = mutual_majority(b[:, 0], b[:, 1])
    joined = {tuple(p) for p in pairs.tolist()}
    assert joined == {(1, 11), (2, 12)}


def test_background_is_never_joined():
    a = np.array([0, 0, 0, 1])
    assert len(mutual_majority(a, a)) == 1


def _independent_check(labels, sizes, edges, sums, counts, min_size, floor):
    """Every final segment below min_size has no neighbour with mean affinity above floor."""
    seg_size = np.bincount(labels, weights=sizes)
    means = {}
    for (u, v), s, c in zip(edges, sums, counts):
        su, sv = labels[u], labels[v]
        if su != sv:
            key = (min(su, sv), max(su, sv))
            total = means.setdefault(key, [0.0, 0])
            total[0] += s
            total[1] += c
    for (su, sv), (s, c) in means.items():
        if s / c > floor:
            assert seg_size[su] >= min_size and seg_size[sv] >= min_size, (su, sv, s / c)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("min_size,floor", [(10, 0.0), (30, 0.5), (1000, 0.2)])
def test_size_merging_leaves_no_small_segment_with_a_qualifying_neighbour(seed, min_size, floor):
    rng = np.random.default_rng(seed)
    n = 200
    sizes = rng.integers(1, 40, n)
    edges = rng.integers(0, n, (600, 2))
    edges = edges[edges[:, 0] != edges[:, 1]]
    counts = rng.integers(1, 20, len(edges))
    sums = counts * rng.random(len(edges))
    labels0 = np.arange(n)
    merged = merge_small_segments(labels0, sizes, edges, sums, counts, min_size=min_size, merge_floor=floor)
    _independent_check(merged, sizes, edges, sums, counts, min_size, floor)
    # merging only joins adjacent nodes: every segment stays connected through edges
    seg_size = np.bincount(merged, weights=sizes)
    assert seg_size.sum() == sizes.sum()


def test_small_segment_picks_the_neighbour_with_highest_mean_affinity():
    sizes = np.array([5, 100, 100])
    edges = np.array([[0, 1], [0, 2]])
    sums = np.array([3.0, 8.0])  # means 0.3 and 0.8: node 0 must join node 2
    counts = np.array([10, 10])
    merged = merge_small_segments(np.arange(3), sizes, edges, sums, counts, min_size=10, merge_floor=0.0)
    assert merged[0] == merged[2] != merged[1]
    kept = merge_small_segments(np.arange(3), sizes, edges, sums, counts, min_size=10, merge_floor=0.9)
    assert len(set(kept.tolist())) == 3
