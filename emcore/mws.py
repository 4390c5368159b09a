"""Mutex watershed on affinities in this project's convention.

uint8 affinities (the stored format) run :func:`emcore.mws_uint8.mutex_watershed_uint8`, a
bucket-sorted implementation that gives bioimage-cpp's partition on the same quantised weights
without a float copy (faster inside ``pipeline.segment``, see ``benchmarks/segment.py``); float
affinities run bioimage-cpp.
bioimage-cpp treats the first ``ndim`` channels as attractive with weight = affinity and the
remaining channels as mutex (repulsive) edges whose weight is a *repulsion*; edges are processed
by descending weight. This project stores affinity 1 = same object for every channel, so the
long-range channels are passed as ``1 - affinity`` (docs/conventions.md §2).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from bioimage_cpp.segmentation import mutex_watershed as _bic_mutex_watershed

from .conventions import DEFAULT_STRIDES, affinities_as_float, validate_offsets
from .mws_uint8 import mutex_watershed_uint8


class AffinityError(ValueError):
    """Affinity values outside their meaning (NaN, or floats outside [0, 1])."""


def check_affinity_values(affinities: np.ndarray, where: str) -> None:
    """Refuse float affinities holding NaN or values outside [0, 1] (uint8 storage is always in range).

    Raises
    ------
    AffinityError
        Naming ``where`` (the dataset, or one block of it), the range found and the fix.
    """
    if affinities.dtype == np.uint8 or affinities.size == 0:
        return
    if np.isnan(affinities).any():
        raise AffinityError(f"{where} contains NaN affinities: fix or re-run the prediction that wrote it")
    low, high = float(affinities.min()), float(affinities.max())
    if low < 0 or high > 1:
        raise AffinityError(f"{where} holds affinities in [{low:g}, {high:g}]: float affinities must lie in [0, 1] "
                            "(1 = same object); rescale them (0..255 values: divide by 255) or store round(255 a) "
                            "as uint8")


def mutex_watershed(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    *,
    strides: Sequence[int] = DEFAULT_STRIDES,
    randomize_strides: bool = False,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Mutex watershed segmentation of one (C, z, y, x) affinity array.

    Parameters
    ----------
    affinities
        (C, z, y, x) affinities, 1 = same object; uint8 (``round(255 a)``) or float in [0, 1].
        Channel k links voxel p with p + offsets[k].
    offsets
        Non-positive (dz, dy, dx) offsets; the first three are the attractive nearest neighbours.
    strides
        Regular (z, y, x) sub-sampling of the mutex (long-range) edges (default
        :data:`DEFAULT_STRIDES`); attractive edges are all kept.
    randomize_strides
        Sample mutex edges with probability 1/prod(strides) instead of on a grid.
    mask
        Optional boolean foreground mask; False voxels get label 0.

    Returns
    -------
    (z, y, x) uint64 labels, consecutive from 1 (0 only where ``mask`` is False).
    """
    offsets = validate_offsets(offsets)
    if affinities.ndim != 4 or affinities.shape[0] != len(offsets):
        raise ValueError(f"affinities must be (C, z, y, x) with C = {len(offsets)} offsets, got shape {affinities.shape}")
    if affinities.dtype == np.uint8 and not randomize_strides:
        return mutex_watershed_uint8(affinities, offsets, strides, mask=mask)
    weights = affinities_as_float(affinities)
    if np.may_share_memory(weights, affinities):
        weights = weights.copy()
    np.subtract(np.float32(1), weights[3:], out=weights[3:])
    return _bic_mutex_watershed(weights, offsets, 3, strides=list(strides),
                                randomized_strides=randomize_strides, mask=mask)
