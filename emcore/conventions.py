"""The conventions every package shares: offsets, affinity storage, input scale, fragment ids.

A leaf module (numpy only), imported by the model library :mod:`corrseg3d` and by the engine
:mod:`pipeline`, so that each convention is written once.

Axis order is (z, y, x) everywhere; affinity channels come first: (C, z, y, x).

**Offsets.** An offset ``o = (dz, dy, dx)`` has non-positive components; the affinity stored at
voxel ``p`` for offset ``o`` describes the pair ``(p, p + o)`` (a neighbour *before* ``p``).
Affinity 1 means "same object". The first three offsets are the nearest neighbours along z, y, x
(the attractive channels of mutex watershed); the rest are long range.

**Affinity storage.** Affinities ``a`` in [0, 1] are stored as uint8 ``round(255 a)``
(:func:`affinities_as_uint8`) and read back as ``q / 255`` (:func:`affinities_as_float`); float
arrays hold ``a`` itself.

**Input scale.** The network sees grey values in [0, 1]: uint8 raw data ``r`` becomes
``r / 255`` (:func:`raw_to_float`). Raw data is a 3D (z, y, x) uint8 volume; every reader
(prediction, training and its validation) refuses anything else (:func:`check_raw`).

**Fragment ids.** Blockwise segmentation numbers the fragments of block ``b`` (its index in
C order of the block grid) ``1..n_b`` and stores them as the uint64 id
``b << 32 | local`` (:func:`fragment_ids`); 0 is background. :func:`fragment_block` and
:func:`fragment_local` invert it.

**Voxel sizes** are (z, y, x) in nm: finite numbers greater than 0, one per spatial axis
(:func:`finite_positive`), wherever they are read (stores, configs, checkpoints, options).

**Mutex edge strides.** Mutex watershed keeps every attractive edge and the long-range (mutex)
edges on a regular (z, y, x) sub-grid, by default :data:`DEFAULT_STRIDES`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import DTypeLike

Offset = tuple[int, int, int]

#: The 12 offsets of Pixel-Embedded Affinity for serial-section EM: ranges z 1..4, xy 1, 3, 9, 27.
PEA_OFFSETS: tuple[Offset, ...] = (
    (-1, 0, 0), (0, -1, 0), (0, 0, -1),
    (-2, 0, 0), (0, -3, 0), (0, 0, -3),
    (-3, 0, 0), (0, -9, 0), (0, 0, -9),
    (-4, 0, 0), (0, -27, 0), (0, 0, -27),
)

#: The nearest-neighbour offsets (the first three channels of any offset list used here).
NEAREST_OFFSETS: tuple[Offset, ...] = PEA_OFFSETS[:3]

#: Default sub-sampling of the mutex edges: 1x4x4 measured 2.4x faster and better than 1x2x2
#: (docs/conventions.md §2).
DEFAULT_STRIDES: tuple[int, int, int] = (1, 4, 4)


def validate_offsets(offsets: Sequence[Sequence[int]]) -> tuple[Offset, ...]:
    """Return ``offsets`` as a tuple of int triples, checking the conventions above.

    Raises
    ------
    ValueError
        If an offset is not three non-positive integers, is all zero, or the first three are not
        the z, y, x nearest neighbours.
    """
    result = tuple(tuple(int(v) for v in o) for o in offsets)
    for o in result:
        if len(o) != 3 or any(v > 0 for v in o) or not any(o):
            raise ValueError(f"offset {o} must be three non-positive integers (z, y, x), not all zero")
    if result[:3] != NEAREST_OFFSETS:
        raise ValueError(f"the first three offsets must be {list(NEAREST_OFFSETS)} (attractive channels), got {list(result[:3])}")
    return result  # type: ignore[return-value]


def finite_positive(values: Sequence[float], count: int) -> bool:
    """True when ``values`` are ``count`` finite numbers greater than 0 (a voxel size, a shape).

    NaN, infinities, 0, negative numbers and a wrong count all give False; so do values that are
    not numbers (text such as ``"30"``, booleans, None).
    """
    try:
        numbers = list(values)
    except TypeError:
        return False
    return len(numbers) == count and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v) and v > 0
        for v in numbers)


def max_offset(offsets: Sequence[Sequence[int]]) -> Offset:
    """Largest absolute offset per axis (z, y, x): the halo affinities need on top of context."""
    return tuple(max(abs(o[axis]) for o in offsets) for axis in range(3))  # type: ignore[return-value]


def halo_shortfall(halo: Sequence[int], offsets: Sequence[Sequence[int]]) -> str:
    """Why ``halo`` (z, y, x) misses partner voxels of ``offsets``, or ``""`` when it covers them.

    A halo covers the offsets when it is at least :func:`max_offset` along every axis; otherwise the
    text reads e.g. ``"2,8,8 is smaller than the largest offset 4,27,27"``.
    """
    reach = max_offset(offsets)
    if all(h >= r for h, r in zip(halo, reach)):
        return ""
    return f"{','.join(map(str, halo))} is smaller than the largest offset {','.join(map(str, reach))}"


#: uint8 level of affinity 1 (and of the brightest input grey value).
UINT8_SCALE = 255
#: Bits of a fragment id that hold the block-local label; the block index sits above them.
FRAGMENT_ID_SHIFT = np.uint64(32)
LOCAL_ID_MASK = np.uint64(0xFFFFFFFF)


def affinities_as_float(affinities: np.ndarray) -> np.ndarray:
    """Affinities as float32 in [0, 1]: uint8 storage ``q`` becomes ``q / 255``, floats pass through."""
    if affinities.dtype == np.uint8:
        return affinities.astype(np.float32) / np.float32(UINT8_SCALE)
    if not np.issubdtype(affinities.dtype, np.floating):
        raise ValueError(f"affinities must be uint8 (x/255) or float, got {affinities.dtype}")
    return affinities.astype(np.float32, copy=False)


def affinities_as_uint8(affinities: np.ndarray) -> np.ndarray:
    """Affinities in the stored uint8 format ``round(255 a)``; floats are clipped to [0, 1] first,
    uint8 passes through (the inverse of :func:`affinities_as_float` on the 256 levels)."""
    if affinities.dtype == np.uint8:
        return affinities
    if not np.issubdtype(affinities.dtype, np.floating):
        raise ValueError(f"affinities must be uint8 (x/255) or float, got {affinities.dtype}")
    return np.rint(np.clip(affinities, 0.0, 1.0) * UINT8_SCALE).astype(np.uint8)


def check_raw_dtype(name: str, dtype: DTypeLike, reader: str) -> None:
    """Refuse raw grey values that are not uint8 (float, uint16, label ids, ...).

    Parameters
    ----------
    name
        The data's location or description, named in the error.
    dtype
        The data's dtype.
    reader
        What reads the data (``predict``, ``training``), named in the error.

    Raises
    ------
    ValueError
        ``dtype`` is not uint8; the message names the conversion that fixes it.
    """
    if np.dtype(dtype) != np.uint8:
        raise ValueError(f"{name} is {np.dtype(dtype)}: {reader} reads uint8 grey values; convert with "
                         "`python -m pipeline.data convert` (rescales to uint8)")


def check_raw(location: str, shape: Sequence[int], dtype: DTypeLike, reader: str) -> None:
    """Refuse a raw volume the network cannot read: it must be 3D (z, y, x) and uint8.

    Parameters
    ----------
    location
        The volume's location, named in the error.
    shape
        The volume's shape.
    dtype
        The volume's dtype.
    reader
        What reads the volume (``predict``, ``training``), named in the error.

    Raises
    ------
    ValueError
        The volume is not 3D, is empty along an axis, or is not uint8 (:func:`check_raw_dtype`).
    """
    if len(shape) != 3:
        raise ValueError(f"{location} has shape {tuple(shape)}: {reader} needs a 3D (z, y, x) volume; "
                         "stack 2D images into a volume with `python -m pipeline.data convert`")
    if min(shape) == 0:
        raise ValueError(f"{location} has shape {tuple(shape)}: it holds no voxels; write the image into it first "
                         "(`python -m pipeline.data convert`)")
    check_raw_dtype(location, dtype, reader)


def raw_to_float(raw: np.ndarray) -> np.ndarray:
    """Network input scale: uint8 ``r`` -> float32 ``r / 255``.

    Raises
    ------
    ValueError
        ``raw`` is not uint8 (:func:`check_raw_dtype`): other dtypes have no agreed scale.
    """
    check_raw_dtype("raw data", raw.dtype, "the network")
    return raw.astype(np.float32) / np.float32(UINT8_SCALE)


def fragment_ids(block_index: int | np.ndarray, local: np.ndarray) -> np.ndarray:
    """Global uint64 ids ``block_index << 32 | local`` of block-local labels (0 stays 0); ``block_index``
    is one block's index or an array of them, one per label."""
    local = local.astype(np.uint64, copy=False)
    return np.where(local > 0, (np.uint64(block_index) << FRAGMENT_ID_SHIFT) | local, np.uint64(0))


def fragment_block(ids: np.ndarray) -> np.ndarray:
    """Block index of each fragment id (``id >> 32``)."""
    return ids.astype(np.uint64, copy=False) >> FRAGMENT_ID_SHIFT


def fragment_local(ids: np.ndarray) -> np.ndarray:
    """Block-local label of each fragment id (``id & 0xFFFFFFFF``)."""
    return ids.astype(np.uint64, copy=False) & LOCAL_ID_MASK
