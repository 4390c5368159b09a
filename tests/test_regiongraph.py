"""The region graph: agglomeration against a brute-force reference and waterz, the multicut, and the
whole-volume multicut segmentation against ``pipeline.segment``."""

from __future__ import annotations

import numpy as np
import pytest
import waterz

from corrseg3d.config import ValidationConfig
from corrseg3d.validation import validation_segmentation
from emcore.conventions import PEA_OFFSETS
from emcore.regiongraph import agglomerate, multicut, multicut_segmentation
from emcore.store import open_volume
from emcore.supervoxels import SupervoxelSettings, slice_supervoxels
from pipeline.noisy_affinities import noisy_affinities
from pipeline.segment import SegmentOptions, segment, supervoxel_options
from pipeline.synth import generate
from test_segment import _write_store


def _brute_force(n, edges, sums, counts, threshold):
    """Merge the adjacent pair of highest mean affinity, recomputing every mean from scratch."""
    labels = np.arange(n)
    while True:
        totals = {}
        for (a, b), s, c in zip(edges, sums, counts):
            la, lb = sorted((labels[a], labels[b]))
            if la != lb:
                entry = totals.setdefault((la, lb), [0.0, 0.0])
                entry[0] += s
                entry[1] += c
        if not totals:
            return labels
        (la, lb), (s, c) = max(totals.items(), key=lambda item: item[1][0] / item[1][1])
        if s / c <= threshold:
            return labels
        labels[labels == lb] = la


def _same_partition(a, b):
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_agglomeration_equals_brute_force_merging(seed, threshold):
    rng = np.random.default_rng(seed)
    n = 60
    edges = rng.integers(0, n, (200, 2))
    edges = edges[edges[:, 0] != edges[:, 1]]
    counts = rng.integers(1, 30, len(edges))
    sums = counts * rng.random(len(edges))
    ours = agglomerate(np.arange(n), edges, sums, counts, threshold=threshold)
    assert _same_partition(ours, _brute_force(n, edges, sums, counts, threshold))


def test_agglomeration_respects_given_segments_and_keeps_lone_nodes():
    edges = np.array([[0, 1], [1, 2], [2, 3]])
    sums, counts = np.array([9.0, 1.0, 9.0]), np.array([10, 10, 10])
    merged = agglomerate(np.array([0, 0, 1, 2, 3]), edges, sums, counts, threshold=0.5)
    # nodes 0 and 1 are one segment already (their edge is inside it); 2-3 merge; 1-2 stays cut; node 4 has no edge
    assert merged[0] == merged[1] != merged[2] == merged[3] != merged[4]
    assert np.array_equal(agglomerate(np.array([0, 1, 2, 3, 4]), edges, sums, counts, threshold=1.0), np.arange(5))


def test_multicut_bias_decides_a_borderline_boundary_and_lone_nodes_stay_apart():
    edges = np.array([[0, 1], [1, 2]])
    sums, counts = np.array([6.0, 0.5]), np.array([10, 10])  # mean affinities 0.6 and 0.05
    joined = multicut(np.arange(4), edges, sums, counts, beta=0.3)
    cut = multicut(np.arange(4), edges, sums, counts, beta=0.7)
    assert joined[0] == joined[1] != joined[2] != joined[3]
    assert len(set(cut.tolist())) == 4
    assert np.array_equal(multicut(np.array([0, 1, 1]), np.zeros((0, 2), np.int64), np.zeros(0), np.zeros(0)),
                          [0, 1, 1])


@pytest.mark.parametrize("threshold", [0.4, 0.7])
def test_blockwise_agglomeration_equals_waterz_on_the_stitched_fragments(tmp_path, threshold):
    """Every voxel link is counted once (inside a block or across a face), so the blockwise result is
    waterz's mean-affinity agglomeration (threshold 1 - t) given the stitched fragments."""
    _, labels = generate((16, 128, 128), seed=3)
    rng = np.random.default_rng(3)
    affs = np.clip(noisy_affinities(labels, seed=3) / 255 + rng.normal(0, 0.01, (12,) + labels.shape), 0, 1)
    store = _write_store(tmp_path / "agg.zarr", labels, affs.astype(np.float32))
    segment(store, SegmentOptions(method="mws", block=(8, 64, 64), min_size=0, consecutive=True),
            output_name="stitched", fragments_name="fragments", progress=False)
    segment(store, SegmentOptions(method="mws", block=(8, 64, 64), min_size=0, agglomerate=threshold),
            output_name="agglomerated", fragments_name="fragments2", progress=False)
    stitched = open_volume(f"{store}/stitched")[...]
    ours = open_volume(f"{store}/agglomerated")[...]
    nn = np.ascontiguousarray(open_volume(f"{store}/affinities")[:3])
    # ids 1..K (waterz sizes its tables by the largest id); a copy, as waterz relabels its fragments in place
    theirs = next(iter(waterz.agglomerate(nn, [1 - threshold], fragments=stitched.copy())))
    assert len(np.unique(ours)) < len(np.unique(stitched))
    assert _same_partition(ours, theirs)


@pytest.mark.parametrize("settings", [SupervoxelSettings(), SupervoxelSettings(0.5, 0.5, 0.0, 5)])
def test_whole_volume_multicut_equals_pipeline_segment_on_one_block(tmp_path, settings):
    """Training's validation segments as ``pipeline.segment``'s default does: the same partition as
    the pipeline on one block, directly (uint8) and through ``validation_segmentation`` (float);
    the pipeline's ``sv_*`` options and ``validation.supervoxels`` reach the supervoxels (other
    settings, other supervoxels)."""
    _, labels = generate((12, 96, 96), seed=5)
    affs = noisy_affinities(labels, seed=5)
    store = _write_store(tmp_path / "mc.zarr", labels, affs)
    options = SegmentOptions(method="multicut", block=labels.shape, min_size=60, **supervoxel_options(settings))
    segment(store, options, progress=False)
    pipeline_result = open_volume(f"{store}/segmentation")[...]
    ours = multicut_segmentation(affs[:3], min_size=60, supervoxels=settings)  # uint8, as stored
    assert 10 < len(np.unique(ours)) and ours.min() == 1 and ours.max() == len(np.unique(ours))
    assert _same_partition(ours, pipeline_result)
    fragments = open_volume(f"{store}/fragments")[...]
    assert _same_partition(fragments, slice_supervoxels(affs[:3].astype(np.float32) / 255, settings))
    assert not _same_partition(fragments, slice_supervoxels(affs[:3].astype(np.float32) / 255,
                                                            SupervoxelSettings(0.3, 3.0, 3.0, 200)))
    validation = validation_segmentation(affs.astype(np.float32) / 255, PEA_OFFSETS,
                                         ValidationConfig(min_size=60, supervoxels=settings), labels_2d=False)
    assert np.array_equal(ours, validation)


def test_a_slice_without_interior_is_one_supervoxel_without_a_warning(recwarn):
    """A blank slice (affinities 0: a missing section, or missing chunks read with --allow-incomplete)
    is one supervoxel, as elf gives it, and the slices around it are segmented as alone."""
    _, labels = generate((3, 64, 64), seed=4)
    affs = noisy_affinities(labels, seed=4)[:3].astype(np.float32) / 255
    blank = affs.copy()
    blank[:, 1] = 0.0
    supervoxels = slice_supervoxels(blank)
    assert len(np.unique(supervoxels[1])) == 1 and not np.isin(supervoxels[1], supervoxels[[0, 2]]).any()
    alone = slice_supervoxels(affs[:, :1])
    assert _same_partition(supervoxels[:1], alone)
    assert not [w for w in recwarn if "invalid value" in str(w.message)]
