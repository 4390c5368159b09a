"""Supervoxels: an over-segmentation whose segments the region graph (:mod:`emcore.regiongraph`) merges.

Affinities: (3, z, y, x) nearest-neighbour channels in the order of offsets (-1, 0, 0),
(0, -1, 0), (0, 0, -1), 1 = same object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["REFERENCE_SETTINGS", "SupervoxelSettings", "consecutive_labels", "slice_supervoxels"]


@dataclass(frozen=True)
class SupervoxelSettings:
    """Distance-transform watershed settings of :func:`slice_supervoxels` (elf's ``distance_transform_watershed``).

    The defaults were chosen with the multicut's bias on real FIB-SEM (gala-test, the medulla training
    slices) and a synthetic slab with the shipped weights: the lowest mean VOI of
    ``benchmarks/model_quality.py --segment-sweep`` (README "Segment"). Less smoothing and smaller
    regions than the PEA reference's settings (:data:`REFERENCE_SETTINGS`) keep thin neurites apart.

    Attributes
    ----------
    threshold
        Pixels whose height ``max(1 - a_y, 1 - a_x)`` exceeds it are boundary; seeds come from the
        distance to the boundary.
    seed_sigma
        Gaussian sigma (pixels) that smooths the distance map before its local maxima become seeds
        (0: no smoothing); larger values give fewer seeds.
    weight_sigma
        Gaussian sigma (pixels) that smooths the height before the watershed floods it (0: none).
        The flooded map is ``0.9 * smoothed height + 0.1 * (1 - normalised distance)``.
    min_size
        Watershed regions with fewer pixels than this join a neighbour (per slice).
    """

    threshold: float = 0.55
    seed_sigma: float = 1.0
    weight_sigma: float = 1.0
    min_size: int = 25

    def problems(self) -> list[tuple[str, str]]:
        """(setting, what it must be) for every setting out of range (NaN and infinities included)."""
        found = []
        if not 0.0 < self.threshold < 1.0:
            found.append(("threshold", "must be in (0, 1): it is compared with 1 - affinity"))
        for name in ("seed_sigma", "weight_sigma", "min_size"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                found.append((name, "must be a finite number >= 0 (pixels; 0 = off)"))
        return found


#: The PEA reference's supervoxels (elf's ``distance_transform_watershed`` with threshold 0.25, seed
#: sigma 2 and its defaults): ``pipeline.segment``'s multicut ran on them before the defaults above.
REFERENCE_SETTINGS = SupervoxelSettings(threshold=0.25, seed_sigma=2.0, weight_sigma=2.0, min_size=100)


def consecutive_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` (any integer array) relabelled to 1..n (uint64) in the order of their values (0 included)."""
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.uint64) + np.uint64(1)


def slice_supervoxels(nn_affs: np.ndarray, settings: SupervoxelSettings = SupervoxelSettings()) -> np.ndarray:
    """Distance-transform watershed supervoxels of every z slice.

    Parameters
    ----------
    nn_affs
        (3, z, y, x) float nearest-neighbour affinities in [0, 1], 1 = same object.
    settings
        The watershed's boundary threshold, smoothing and smallest region (:class:`SupervoxelSettings`).

    Returns
    -------
    (z, y, x) uint64 supervoxels 1..n.

    Notes
    -----
    The height of slice ``z`` is ``max(1 - a_y, 1 - a_x)`` of its in-plane affinities; pixels above
    ``settings.threshold`` are boundary, seeds are the maxima of the smoothed distance to it (elf's
    ``distance_transform_watershed``, :class:`SupervoxelSettings`). No supervoxel spans two slices,
    so on anisotropic (serial-section) data the z links are left to the region graph. A slice with
    no pixel at or below the threshold (a blank section, missing affinities) is one supervoxel.
    """
    from elf.segmentation.watershed import distance_transform_watershed

    heights = np.maximum(1.0 - nn_affs[1], 1.0 - nn_affs[2])
    supervoxels = np.zeros(heights.shape, dtype=np.uint64)
    next_id = 0
    for z, height in enumerate(heights):
        if (height > settings.threshold).all():
            # no interior (a blank section, missing affinities): one supervoxel, what elf returns after
            # normalising by a zero distance, without its division warning
            slice_labels, max_id = np.zeros(height.shape, np.uint64), 0
        else:
            slice_labels, max_id = distance_transform_watershed(
                height, threshold=settings.threshold, sigma_seeds=settings.seed_sigma,
                sigma_weights=settings.weight_sigma, min_size=settings.min_size)
        supervoxels[z] = slice_labels.astype(np.uint64) + np.uint64(next_id)
        next_id += int(max_id) + 1
    return consecutive_labels(supervoxels)
