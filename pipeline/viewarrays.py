"""Lazy (z, y, x) array views that Neuroglancer's ``LocalVolume`` reads one requested chunk at a time.

``neuroglancer.LocalVolume`` needs only ``shape``, ``dtype`` and ``__getitem__`` with a tuple of
slices; it indexes the box of each chunk the browser asks for. These views forward that box to
the stored volume (a zarr or precomputed :class:`emcore.store.Volume`), so the viewer reads
only the storage chunks it shows and never the whole volume.

Conventions: axis order (z, y, x); affinities are (c, z, y, x) with the offsets in the ``offsets``
attribute and uint8 values ``round(255 a)`` (``dtype_scale`` 255) or float values (scale 1).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from emcore.store import Volume

__all__ = ["VolumeView", "MeanAffinityView", "nearest_neighbour_channels"]


class VolumeView:
    """A 3D volume read where indexed, cast to ``dtype``.

    Parameters
    ----------
    volume
        An opened (z, y, x) volume.
    dtype
        Element type handed to the viewer (default: the stored one); segmentations use uint64
        or uint32, the types Neuroglancer accepts for segment ids.
    """

    def __init__(self, volume: Volume, dtype: Any = None):
        self.volume = volume
        self.shape = volume.spatial_shape
        self.dtype = np.dtype(dtype or volume.dtype)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.volume[key]).astype(self.dtype, copy=False)


def nearest_neighbour_channels(offsets: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the offsets one voxel long (the attractive nearest-neighbour channels)."""
    return [k for k, offset in enumerate(offsets) if sum(abs(int(v)) for v in offset) == 1]


class MeanAffinityView:
    """Mean nearest-neighbour affinity of a (c, z, y, x) volume as uint8 (255 = 1), per requested box.

    Parameters
    ----------
    volume
        Affinities with an ``offsets`` attribute (channels 0-2 when it is missing: the PEA
        offsets start with the three nearest neighbours) and optionally ``dtype_scale``.
    """

    def __init__(self, volume: Volume):
        offsets = volume.attrs.get("offsets")
        self.volume = volume
        self.channels = (nearest_neighbour_channels(offsets) if offsets else []) or [0, 1, 2]
        self.scale = float(volume.attrs.get("dtype_scale", 255 if volume.dtype == np.uint8 else 1))
        self.shape = volume.spatial_shape
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        low, high = min(self.channels), max(self.channels) + 1
        data = np.asarray(self.volume[(slice(low, high),) + tuple(key)])
        mean = data[[c - low for c in self.channels]].astype(np.float32).mean(axis=0)
        return np.clip(np.rint(mean * (255.0 / self.scale)), 0, 255).astype(np.uint8)
