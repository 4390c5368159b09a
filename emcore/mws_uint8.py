"""Mutex watershed for uint8 affinities: bucket-sorted edges, hashed mutex constraints.

The algorithm is the mutex watershed of Wolf et al. (2018), the same as bioimage-cpp's
``mutex_watershed``: every edge is visited once in descending weight; an attractive edge joins
the clusters of its two voxels unless a mutex constraint separates them, a repulsive (mutex) edge
between two different clusters adds a constraint between them. Weights are those of
:func:`emcore.mws.mutex_watershed`: attractive weight ``a``, repulsive weight ``255 - a`` for
stored ``a = round(255 * affinity)``.

Why a second implementation: stored affinities are uint8, and bioimage-cpp needs them as a
float32 copy (4x the input) plus 16 B per edge for its sort. Here the 256 weight levels order the
edges by a counting sort over the uint8 input itself, and every index is 4 bytes where the
volume allows. On one core both run 40x320x320 noisy affinities in about 1.4 s; inside
``pipeline.segment`` with two worker processes, whose blocks compete for memory bandwidth, the
pipeline ran 2.0-2.4x faster with this kernel (``benchmarks/segment.py``). Ties are broken exactly as
bioimage-cpp breaks them -- by flat edge id ``channel * n_voxels + voxel`` (channel-major, so
attractive channels first) -- so the result is bioimage-cpp's partition on the same quantised
weights (``tests/test_mws.py`` compares the label arrays).

Data structures, for ``n`` voxels:

* union-find ``parent`` with path halving; a merge makes the cluster with the shorter constraint
  list the child (the smaller cluster on equal lists);
* per cluster, a linked list (``head``/``tail``/``next_entry``/``partner``) of the voxels it has a
  constraint with; partners are resolved with ``find`` when read, so lists never need updating;
* a hash set of ``min(r, s) * n + max(r, s)`` keys for constrained root pairs. When root ``c``
  merges into ``r``, the key ``(r, find(p))`` is added for every partner ``p`` in ``c``'s list;
  keys naming a former root are never queried again (queries name two current roots) and are
  dropped when the table grows.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["mutex_watershed_uint8"]

_CHANNEL_BITS = 4  # an edge is coded as voxel << 4 | channel: at most 16 channels
_CHANNEL_MASK = (1 << _CHANNEL_BITS) - 1


@numba.njit(cache=True, nogil=True)
def _find(parent: np.ndarray, x: int) -> int:
    """Root of ``x`` with path halving."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True, nogil=True)
def _hash_slot(table: np.ndarray, key: int) -> int:
    """Slot of ``key`` in the open-addressing ``table`` (a free slot if absent)."""
    mask = table.shape[0] - 1
    slot = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) & mask  # Fibonacci hashing
    while table[slot] != -1 and table[slot] != key:
        slot = (slot + 1) & mask
    return slot


@numba.njit(cache=True, nogil=True)
def _add_key(table: np.ndarray, key: int) -> bool:
    """Insert ``key`` into ``table``; False if it was already there."""
    slot = _hash_slot(table, key)
    if table[slot] == key:
        return False
    table[slot] = key
    return True


@numba.njit(cache=True, nogil=True)
def _rebuild(table: np.ndarray, parent: np.ndarray, n: int, capacity: int) -> np.ndarray:
    """A table of ``capacity`` slots holding the keys of ``table`` whose two ids are still roots."""
    fresh = np.full(capacity, -1, np.int64)
    for key in table:
        if key != -1:
            lo, hi = key // n, key % n
            if parent[lo] == lo and parent[hi] == hi:
                fresh[_hash_slot(fresh, key)] = key
    return fresh


@numba.njit(cache=True, nogil=True)
def _visit_edges(affinities: np.ndarray, offsets: np.ndarray, strides: np.ndarray, n_attractive: int,
                 mask: np.ndarray, use_mask: bool, next_slot: np.ndarray, order: np.ndarray) -> None:
    """Visit valid edges in edge-id order: count them per level (empty ``order``) or place them.

    Level = ``255 - weight`` (0 = strongest). Counting increments ``next_slot[level]``; placing
    writes the edge code ``v << 4 | c`` at ``order[next_slot[level]]`` and increments it (a stable
    counting sort: within a level, edges keep the visiting order, channel-major).
    """
    n_channels, nz, ny, nx = affinities.shape
    n = nz * ny * nx
    flat = affinities.reshape(n_channels, n)
    place = order.shape[0] > 0
    for c in range(n_channels):
        dz, dy, dx = offsets[c, 0], offsets[c, 1], offsets[c, 2]
        sz, sy, sx = (1, 1, 1) if c < n_attractive else (strides[0], strides[1], strides[2])
        shift = dz * ny * nx + dy * nx + dx
        for z in range(-dz, nz):
            if z % sz:
                continue
            for y in range(-dy, ny):
                if y % sy:
                    continue
                row = (z * ny + y) * nx
                for x in range(-dx, nx):
                    if x % sx:
                        continue
                    v = row + x
                    if use_mask and not (mask[v] and mask[v + shift]):
                        continue
                    a = flat[c, v]
                    level = 255 - a if c < n_attractive else a
                    if place:
                        order[next_slot[level]] = (v << _CHANNEL_BITS) | c
                    next_slot[level] += 1


@numba.njit(cache=True, nogil=True)
def _sorted_edges(affinities: np.ndarray, offsets: np.ndarray, strides: np.ndarray, n_attractive: int,
                  mask: np.ndarray, use_mask: bool) -> np.ndarray:
    """Codes ``v << 4 | c`` of all valid edges by descending weight, ties by edge id ``c * n + v``."""
    counts = np.zeros(256, np.int64)
    _visit_edges(affinities, offsets, strides, n_attractive, mask, use_mask, counts, np.empty(0, np.int64))
    starts = np.zeros(256, np.int64)
    starts[1:] = np.cumsum(counts)[:-1]
    order = np.empty(counts.sum(), np.int64)
    _visit_edges(affinities, offsets, strides, n_attractive, mask, use_mask, starts, order)
    return order


@numba.njit(cache=True, nogil=True)
def _count_repulsive(order: np.ndarray, n_attractive: int) -> int:
    """Number of repulsive edges among the edge codes ``order``."""
    count = 0
    for e in order:
        count += (e & _CHANNEL_MASK) >= n_attractive
    return count


@numba.njit(cache=True, nogil=True)
def _cluster(order: np.ndarray, shifts: np.ndarray, n_attractive: int, n_mutex: int, mask: np.ndarray,
             use_mask: bool, parent: np.ndarray) -> np.ndarray:
    """Process the sorted edges; flat labels. ``parent`` is ``arange(n)`` in an index type wide
    enough for ``n`` voxels and ``2 * n_mutex`` constraint entries."""
    n = parent.shape[0]
    size = np.ones_like(parent)
    n_entries = np.zeros_like(parent)
    head = np.full_like(parent, -1)
    tail = np.full_like(parent, -1)
    next_entry = np.empty(2 * n_mutex, parent.dtype)
    partner = np.empty(2 * n_mutex, parent.dtype)
    used = 0
    # Distinct constraints are far fewer than mutex edges: start at ~n_mutex / 8 slots and double
    # (dropping stale keys) whenever the table is more than half full.
    table = np.full(max(64, 1 << int(np.ceil(np.log2(n_mutex // 8 + 1)))), -1, np.int64)
    filled = 0
    for e in order:
        c = e & _CHANNEL_MASK
        u = e >> _CHANNEL_BITS
        ru = _find(parent, u)
        rv = _find(parent, u + shifts[c])
        if ru == rv:
            continue
        if c >= n_attractive:  # repulsive: a new constraint between two clusters
            if not _add_key(table, min(ru, rv) * n + max(ru, rv)):
                continue
            filled += 1
            for owner, other in ((ru, rv), (rv, ru)):
                partner[used] = other
                next_entry[used] = -1
                if head[owner] == -1:
                    head[owner] = used
                else:
                    next_entry[tail[owner]] = used
                tail[owner] = used
                n_entries[owner] += 1
                used += 1
        else:  # attractive: merge unless constrained
            if n_entries[ru] > 0 and n_entries[rv] > 0:
                key = min(ru, rv) * n + max(ru, rv)
                if table[_hash_slot(table, key)] == key:
                    continue
            if (n_entries[ru], size[ru]) <= (n_entries[rv], size[rv]):
                child, root = ru, rv
            else:
                child, root = rv, ru
            parent[child] = root
            size[root] += size[child]
            entry = head[child]
            while entry != -1:
                other = _find(parent, partner[entry])
                filled += _add_key(table, min(root, other) * n + max(root, other))
                entry = next_entry[entry]
            if head[child] != -1:
                if head[root] == -1:
                    head[root] = head[child]
                else:
                    next_entry[tail[root]] = head[child]
                tail[root] = tail[child]
                n_entries[root] += n_entries[child]
        if 2 * filled > table.shape[0]:
            table = _rebuild(table, parent, n, 2 * table.shape[0])
            filled = np.count_nonzero(table != -1)
    labels = np.zeros(n, np.uint64)
    root_label = np.zeros_like(parent)
    next_label = 0
    for v in range(n):
        if use_mask and not mask[v]:
            continue
        r = _find(parent, v)
        if root_label[r] == 0:
            next_label += 1
            root_label[r] = next_label
        labels[v] = root_label[r]
    return labels


def mutex_watershed_uint8(affinities: np.ndarray, offsets: np.ndarray, strides: tuple[int, int, int],
                          mask: np.ndarray | None = None, n_attractive: int = 3) -> np.ndarray:
    """Mutex watershed of (C, z, y, x) uint8 affinities (``round(255 a)``, 1 = same object).

    Parameters
    ----------
    affinities
        (C, z, y, x) uint8; channel ``k`` links voxel ``p`` with ``p + offsets[k]``.
    offsets
        (C, 3) non-positive (dz, dy, dx) offsets; the first ``n_attractive`` are attractive.
    strides
        Regular (z, y, x) grid ``::s`` of the repulsive edges kept (all attractive edges are kept).
    mask
        Optional (z, y, x) boolean foreground; False voxels get label 0 and no edges.

    Returns
    -------
    (z, y, x) uint64 labels, consecutive from 1 in raster order of first appearance.
    """
    if np.any(np.asarray(offsets) > 0):
        raise ValueError(f"offsets must be non-positive (dz, dy, dx), got {np.asarray(offsets).tolist()}")
    if affinities.shape[0] > 1 << _CHANNEL_BITS:
        raise ValueError(f"at most {1 << _CHANNEL_BITS} affinity channels are supported, got {affinities.shape[0]}")
    use_mask = mask is not None
    flat_mask = np.ascontiguousarray(mask, dtype=np.bool_).ravel() if use_mask else np.ones(1, np.bool_)
    offsets = np.asarray(offsets, np.int64)
    _, nz, ny, nx = affinities.shape
    order = _sorted_edges(np.ascontiguousarray(affinities), offsets, np.asarray(strides, np.int64), n_attractive,
                          flat_mask, use_mask)
    n_mutex = _count_repulsive(order, n_attractive)
    n_voxels = nz * ny * nx
    # 4-byte voxel and constraint-entry indices halve the memory the random accesses touch
    parent = np.arange(n_voxels, dtype=np.int32 if max(n_voxels, 2 * n_mutex) < 2 ** 31 else np.int64)
    shifts = offsets[:, 0] * ny * nx + offsets[:, 1] * nx + offsets[:, 2]
    return _cluster(order, shifts, n_attractive, n_mutex, flat_mask, use_mask, parent).reshape(nz, ny, nx)
