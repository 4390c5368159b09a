"""Supervoxels: an over-segmentation whose segments the region graph (:mod:`emcore.regiongraph`) merges.

Affinities: (3, z, y, x) nearest-neighbour channels in the order of offsets (-1, 0, 0),
(0, -1, 0), (0, 0, -1), 1 = same object.
"""

from __future__ import annotations

import numpy as np

__all__ = ["consecutive_labels", "slice_supervoxels"]

#: Distance-transform watershed settings of :func:`slice_supervoxels`: boundary threshold on the
#: height ``1 - affinity`` and the Gaussian sigma (pixels) that smooths the distance map before seeding.
BOUNDARY_THRESHOLD = 0.25
SEED_SIGMA = 2.0


def consecutive_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` (any integer array) relabelled to 1..n (uint64) in the order of their values (0 included)."""
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.uint64) + np.uint64(1)


def slice_supervoxels(nn_affs: np.ndarray) -> np.ndarray:
    """Distance-transform watershed supervoxels of every z slice.

    Parameters
    ----------
    nn_affs
        (3, z, y, x) float nearest-neighbour affinities in [0, 1], 1 = same object.

    Returns
    -------
    (z, y, x) uint64 supervoxels 1..n.

    Notes
    -----
    The height of slice ``z`` is ``max(1 - a_y, 1 - a_x)`` of its in-plane affinities; pixels above
    :data:`BOUNDARY_THRESHOLD` are boundary, seeds are the maxima of the smoothed distance to it
    (elf's ``distance_transform_watershed``). No supervoxel spans two slices, so on anisotropic
    (serial-section) data the z links are left to the region graph.
    """
    from elf.segmentation.watershed import distance_transform_watershed

    heights = np.maximum(1.0 - nn_affs[1], 1.0 - nn_affs[2])
    supervoxels = np.zeros(heights.shape, dtype=np.uint64)
    next_id = 0
    for z, height in enumerate(heights):
        slice_labels, max_id = distance_transform_watershed(height, threshold=BOUNDARY_THRESHOLD,
                                                            sigma_seeds=SEED_SIGMA)
        supervoxels[z] = slice_labels.astype(np.uint64) + np.uint64(next_id)
        next_id += int(max_id) + 1
    return consecutive_labels(supervoxels)
