"""Exact sparse contingency counts between a segmentation and a ground truth, blockwise.

The contingency table of two labelings lists, for every pair (GT id *i*, segment id *j*) that
co-occurs, the number ``n_ij`` of evaluated voxels carrying both labels. Every overlap metric in
:mod:`emcore.metrics` (VOI, adapted Rand error, CREMI score) is a function of this table only,
so a volume is scored by counting each block independently and summing the per-block tables in
integers: the result is exact, and memory grows with the number of label pairs, not voxels.

Conventions
-----------
* Labels are non-negative integers of any integer dtype (signed is accepted when no value is
  negative) and are reported as ``uint64``; ids above 2**32 are handled exactly.
* A voxel is *evaluated* unless its GT label is in ``ignore_gt``, its segment label is in
  ``ignore_seg``, or the mask is zero there. The segment label 0 is an ordinary label unless
  listed in ``ignore_seg``.
* Bounding boxes are over evaluated voxels, in absolute voxel coordinates of the full volume
  (an ROI does not shift them), as ``lo`` (inclusive) and ``hi`` (exclusive) per axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterable, Sequence

import fastremap
import numpy as np
from scipy import ndimage

from .blocks import BlockGrid, map_reduce_blocks

__all__ = [
    "EvaluationError",
    "ContingencyTable",
    "BoundingBoxes",
    "BlockCounts",
    "check_label_dtype",
    "check_labels",
    "count_block",
    "count_volumes",
    "default_block_shape",
]

_DEFAULT_BLOCK_VOXELS = 1 << 22
_HALF_LIMIT = (1 << 32) - 1
_MERGE_FAN_IN = 8


class EvaluationError(ValueError):
    """Inputs cannot be scored; the message names the problem and how to fix it."""


def _run_starts(*columns: np.ndarray) -> np.ndarray:
    """Index of the first row of each run of equal rows in sorted, non-empty ``columns``."""
    change = np.zeros(columns[0].size, bool)
    change[0] = True
    for column in columns:
        change[1:] |= column[1:] != column[:-1]
    return np.flatnonzero(change)


def _group_sum(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``keys`` (sorted) and the integer sum of ``values`` per key."""
    if keys.size == 0:
        return keys, values
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = _run_starts(keys)
    return keys[starts], np.add.reduceat(values[order], starts)


@dataclass(frozen=True)
class ContingencyTable:
    """Sparse contingency table: one row per co-occurring (GT id, segment id) pair.

    Attributes
    ----------
    gt, seg
        ``uint64`` ids, rows sorted by (gt, seg), each pair once.
    counts
        ``int64`` number of evaluated voxels with that pair (all > 0).
    """

    gt: np.ndarray
    seg: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls) -> ContingencyTable:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))

    @classmethod
    def from_pairs(cls, gt: np.ndarray, seg: np.ndarray, counts: np.ndarray) -> ContingencyTable:
        """Canonical table from unsorted pairs that may repeat (repeats are summed)."""
        gt = np.asarray(gt, np.uint64)
        seg = np.asarray(seg, np.uint64)
        counts = np.asarray(counts, np.int64)
        order = np.lexsort((seg, gt))
        gt, seg, counts = gt[order], seg[order], counts[order]
        if gt.size == 0:
            return cls(gt, seg, counts)
        starts = _run_starts(gt, seg)
        return cls(gt[starts], seg[starts], np.add.reduceat(counts, starts))

    @classmethod
    def merge(cls, tables: Iterable[ContingencyTable]) -> ContingencyTable:
        """Exact (integer) sum of several tables."""
        tables = list(tables)
        return cls.from_pairs(np.concatenate([t.gt for t in tables]),
                              np.concatenate([t.seg for t in tables]),
                              np.concatenate([t.counts for t in tables]))

    @property
    def n_voxels(self) -> int:
        """Number of evaluated voxels, N = sum of all counts."""
        return int(self.counts.sum())

    def gt_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """GT ids and their evaluated sizes ``a_i = sum_j n_ij``."""
        return _group_sum(self.gt, self.counts)

    def seg_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Segment ids and their evaluated sizes ``b_j = sum_i n_ij``."""
        return _group_sum(self.seg, self.counts)


@dataclass(frozen=True)
class BoundingBoxes:
    """Per-id bounding boxes of evaluated voxels: ``ids`` (sorted uint64), ``lo``/``hi`` (n, ndim)."""

    ids: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def empty(cls, ndim: int) -> BoundingBoxes:
        return cls(np.zeros(0, np.uint64), np.zeros((0, ndim), np.int64), np.zeros((0, ndim), np.int64))

    @classmethod
    def merge(cls, boxes: Sequence[BoundingBoxes]) -> BoundingBoxes:
        """Union of boxes per id: element-wise min of ``lo`` and max of ``hi``."""
        ids = np.concatenate([b.ids for b in boxes])
        lo = np.concatenate([b.lo for b in boxes])
        hi = np.concatenate([b.hi for b in boxes])
        if ids.size == 0:
            return cls(ids, lo, hi)
        order = np.argsort(ids, kind="stable")
        ids, lo, hi = ids[order], lo[order], hi[order]
        starts = _run_starts(ids)
        return cls(ids[starts], np.minimum.reduceat(lo, starts), np.maximum.reduceat(hi, starts))

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``lo``, ``hi`` rows of the given ids (each must be present)."""
        index = np.searchsorted(self.ids, np.asarray(ids, np.uint64))
        return self.lo[index], self.hi[index]


@dataclass(frozen=True)
class BlockCounts:
    """What one block (or a merged set of blocks) contributes: table and optional boxes."""

    table: ContingencyTable
    gt_boxes: BoundingBoxes | None = None
    seg_boxes: BoundingBoxes | None = None

    @classmethod
    def empty(cls, ndim: int, *, with_boxes: bool) -> BlockCounts:
        if not with_boxes:
            return cls(ContingencyTable.empty())
        return cls(ContingencyTable.empty(), BoundingBoxes.empty(ndim), BoundingBoxes.empty(ndim))

    @classmethod
    def merge(cls, parts: Sequence[BlockCounts]) -> BlockCounts:
        table = ContingencyTable.merge(p.table for p in parts)
        if any(p.gt_boxes is None for p in parts):
            return cls(table)
        return cls(table, BoundingBoxes.merge([p.gt_boxes for p in parts]),  # type: ignore[misc]
                   BoundingBoxes.merge([p.seg_boxes for p in parts]))  # type: ignore[misc]


def check_label_dtype(dtype: Any, what: str) -> None:
    """Refuse label volumes whose dtype is not an integer type (floats, booleans, ...)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui":
        raise EvaluationError(
            f"{what} has dtype {dtype}, but labels must be integers: convert it to uint64 "
            f"(e.g. with numpy .astype(np.uint64) after checking the values are whole numbers)")


def check_labels(labels: np.ndarray, what: str) -> int:
    """Largest label of a non-empty array; refuses non-integer dtypes and negative values.

    Raises
    ------
    EvaluationError
        Naming ``what`` and the fix.
    """
    check_label_dtype(labels.dtype, what)
    low, high = fastremap.minmax(labels)
    if low < 0:
        raise EvaluationError(f"{what} contains negative labels: labels must be >= 0 "
                              f"(0 = background); relabel it, e.g. with fastremap.renumber")
    return int(high)


def _half_key(labels: np.ndarray, high: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels as values below ``2**32 - 1`` and, when they had to be renumbered, the original
    uint64 id of each renumbered value (else None)."""
    if high < _HALF_LIMIT:
        return labels, None
    compact, mapping = fastremap.renumber(labels, preserve_zero=False, in_place=False)
    ids = np.zeros(len(mapping) + 1, np.uint64)
    ids[np.fromiter(mapping.values(), np.int64, len(mapping))] = np.fromiter(mapping.keys(), np.uint64, len(mapping))
    return compact, ids


def _as_uint64(values: np.ndarray) -> np.ndarray:
    return values.view(np.uint64) if values.dtype.itemsize == 8 else values.astype(np.uint64)


def _matches(labels: np.ndarray, values: Sequence[int]) -> np.ndarray | None:
    """Voxels whose label is one of ``values`` (None when no value fits the dtype)."""
    top = np.iinfo(labels.dtype).max
    hits = [labels == labels.dtype.type(v) for v in values if v <= top]
    return np.logical_or.reduce(hits) if hits else None


def _pair_boxes(pair: np.ndarray, n_pairs: int, gt: np.ndarray, seg: np.ndarray,
                origin: Sequence[int]) -> tuple[BoundingBoxes, BoundingBoxes]:
    """GT and segment boxes as unions of the boxes of the pairs (pair label k -> ``gt[k], seg[k]``)."""
    slices = ndimage.find_objects(pair, max_label=n_pairs)
    bounds = np.array([[(s.start, s.stop) for s in box] for box in slices], np.int64).reshape(n_pairs, pair.ndim, 2)
    shift = np.asarray(origin, np.int64)
    lo, hi = bounds[:, :, 0] + shift, bounds[:, :, 1] + shift
    return BoundingBoxes.merge([BoundingBoxes(gt, lo, hi)]), BoundingBoxes.merge([BoundingBoxes(seg, lo, hi)])


def count_block(
    seg: np.ndarray,
    gt: np.ndarray,
    *,
    ignore_gt: Sequence[int] = (0,),
    ignore_seg: Sequence[int] = (),
    mask: np.ndarray | None = None,
    origin: Sequence[int] | None = None,
    with_boxes: bool = False,
) -> BlockCounts:
    """Contingency table (and bounding boxes) of one in-memory block.

    Parameters
    ----------
    seg, gt
        Label arrays of equal shape, any integer dtype, no negative values.
    ignore_gt, ignore_seg
        Labels whose voxels are not evaluated (GT 0 by default; no segment label by default).
    mask
        Optional array of the same shape; voxels where it is zero are not evaluated.
    origin
        Absolute coordinate of the block's first voxel, added to bounding boxes.
    with_boxes
        Also compute per-id bounding boxes of evaluated voxels.

    Raises
    ------
    EvaluationError
        Non-integer or negative labels, or shapes that differ.

    Notes
    -----
    Each voxel gets the 64-bit key ``(gt + 1) << 32 | seg`` (ids of 2**32 - 1 and above are first
    renumbered within the block); dropped voxels get key 0. A hash renumbering of the keys
    (``fastremap``) gives consecutive pair labels whose ``bincount`` is the table, and whose
    ``scipy.ndimage.find_objects`` boxes, unioned per GT id and per segment id, are the boxes.
    """
    seg, gt = np.asarray(seg), np.asarray(gt)
    if seg.shape != gt.shape or (mask is not None and np.shape(mask) != gt.shape):
        raise EvaluationError(f"block shapes differ: segmentation {seg.shape}, GT {gt.shape}"
                              + (f", mask {np.shape(mask)}" if mask is not None else ""))
    if gt.size == 0:
        return BlockCounts.empty(gt.ndim, with_boxes=with_boxes)
    seg_high, gt_high = check_labels(seg, "segmentation"), check_labels(gt, "GT")
    dropped = [d for d in (_matches(gt, ignore_gt), _matches(seg, ignore_seg),
                           None if mask is None else ~np.asarray(mask, bool)) if d is not None]
    g, g_ids = _half_key(gt, gt_high)
    s, s_ids = _half_key(seg, seg_high)
    keys = np.add(g, 1, dtype=np.uint64, casting="unsafe")
    np.left_shift(keys, np.uint64(32), out=keys)
    np.bitwise_or(keys, _as_uint64(s), out=keys)
    if dropped:
        np.copyto(keys, np.uint64(0), where=np.logical_or.reduce(dropped))
    pair, mapping = fastremap.renumber(keys, preserve_zero=True)
    mapping.pop(0, None)
    pair_keys = np.fromiter(mapping.keys(), np.uint64, len(mapping))
    labels = np.fromiter(mapping.values(), np.int64, len(mapping))
    pair_gt = (pair_keys >> np.uint64(32)) - np.uint64(1)
    pair_seg = pair_keys & np.uint64(_HALF_LIMIT)
    if g_ids is not None:
        pair_gt = g_ids[pair_gt]
    if s_ids is not None:
        pair_seg = s_ids[pair_seg]
    counts = np.bincount(pair.ravel(), minlength=len(mapping) + 1)
    table = ContingencyTable.from_pairs(pair_gt, pair_seg, counts[labels])
    if not with_boxes:
        return BlockCounts(table)
    by_label = np.argsort(labels)
    boxes = _pair_boxes(pair, len(mapping), pair_gt[by_label], pair_seg[by_label],
                        tuple(origin) if origin is not None else (0,) * gt.ndim)
    return BlockCounts(table, *boxes)


def _storage_chunks(array: Any) -> tuple[int, ...] | None:
    chunks = getattr(array, "chunks", None)
    if chunks is not None and len(chunks) == len(array.shape) and all(isinstance(c, int) for c in chunks):
        return tuple(int(c) for c in chunks)
    return None


def default_block_shape(seg: Any, gt: Any) -> tuple[int, ...]:
    """Block grid aligned to storage: the GT's chunks, or the larger of both volumes' chunks per
    axis when one grid refines the other (so no chunk is decoded twice); slabs of about
    4 Mvoxel for arrays without chunks."""
    gt_chunks, seg_chunks = _storage_chunks(gt), _storage_chunks(seg)
    if gt_chunks and seg_chunks and all(max(a, b) % min(a, b) == 0 for a, b in zip(gt_chunks, seg_chunks)):
        return tuple(max(a, b) for a, b in zip(gt_chunks, seg_chunks))
    if gt_chunks or seg_chunks:
        return gt_chunks or seg_chunks  # type: ignore[return-value]
    rows = max(1, _DEFAULT_BLOCK_VOXELS // max(1, math.prod(gt.shape[1:])))
    return (rows,) + tuple(int(n) for n in gt.shape[1:])


def _count_region(seg: Any, gt: Any, mask: Any, region: tuple[slice, ...], *, ignore_gt: Sequence[int],
                  ignore_seg: Sequence[int], with_boxes: bool) -> BlockCounts:
    return count_block(seg[region], gt[region], ignore_gt=ignore_gt, ignore_seg=ignore_seg,
                       mask=None if mask is None else mask[region],
                       origin=[r.start for r in region], with_boxes=with_boxes)


def count_volumes(
    seg: Any,
    gt: Any,
    *,
    ignore_gt: Sequence[int] = (0,),
    ignore_seg: Sequence[int] = (),
    mask: Any = None,
    roi: Sequence[slice] | None = None,
    block_shape: Sequence[int] | None = None,
    scheduler: str = "threads",
    with_boxes: bool = False,
) -> BlockCounts:
    """Blockwise contingency table of two volumes, summed exactly across blocks with Dask.

    Parameters
    ----------
    seg, gt
        Array-likes of equal shape supporting ``shape``, ``dtype`` and slicing (``zarr.Array``,
        ``numpy.ndarray``, :class:`emcore.store.Volume`); only one block of each is in memory
        per worker at a time.
    ignore_gt, ignore_seg, mask
        See :func:`count_block`; ``mask`` is an array-like of the same shape or None.
    roi
        One slice per axis (non-negative, inside the volume) restricting the evaluation.
    block_shape
        Block grid; defaults to :func:`default_block_shape`.
    scheduler
        ``threads`` (default), ``processes``, ``synchronous`` or the address of a distributed
        scheduler (``tcp://HOST:PORT``; any ``PROTOCOL://`` address is passed to ``distributed.Client``).
    with_boxes
        Also reduce per-id bounding boxes across blocks.

    Notes
    -----
    Each block yields a small table; tables are summed pairwise in a tree of fan-in 8, so the
    memory held is a few blocks plus tables, independent of the volume size.
    """
    shape = tuple(int(n) for n in gt.shape)
    if tuple(seg.shape) != shape:
        raise EvaluationError(f"shape mismatch: segmentation {tuple(seg.shape)} vs GT {shape}; "
                              f"both volumes must cover the same voxels")
    if mask is not None and tuple(mask.shape) != shape:
        raise EvaluationError(f"shape mismatch: mask {tuple(mask.shape)} vs GT {shape}; use a mask of the GT's shape")
    check_label_dtype(seg.dtype, "segmentation")
    check_label_dtype(gt.dtype, "GT")
    if mask is not None and np.dtype(mask.dtype).kind not in "biu":
        raise EvaluationError(f"mask has dtype {np.dtype(mask.dtype)}: use a boolean or integer mask "
                              f"(nonzero = evaluated)")
    block_shape = tuple(block_shape) if block_shape is not None else default_block_shape(seg, gt)
    if len(block_shape) != len(shape) or min(block_shape) < 1:
        raise EvaluationError(f"block shape {block_shape} must have {len(shape)} positive entries")
    if roi is not None and (len(roi) != len(shape) or any(
            r.start is None or r.stop is None or not 0 <= r.start < r.stop <= n for r, n in zip(roi, shape))):
        raise EvaluationError(f"ROI {tuple(roi)} must give one slice(start, stop) per axis with "
                              f"0 <= start < stop <= size for shape {shape}")
    counts = map_reduce_blocks(partial(_count_region, ignore_gt=tuple(ignore_gt), ignore_seg=tuple(ignore_seg),
                                       with_boxes=with_boxes),
                               BlockGrid(shape, block_shape).regions(roi), BlockCounts.merge,
                               shared=(seg, gt, mask), scheduler=scheduler, fan_in=_MERGE_FAN_IN)
    return counts if counts is not None else BlockCounts.empty(len(shape), with_boxes=with_boxes)
