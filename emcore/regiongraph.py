"""The region graph of segments: its edges from voxels, and the merge rules on it (components,
agglomeration, multicut, size merging).

The rules take node arrays and edge arrays, never voxels, so they run on the small tables of
``pipeline.stitch`` whatever the volume size:

* ``labels``: (n,) segment index of every node (a node is one block's fragment);
* ``edges``: (m, 2) adjacent node pairs; ``edge_sum``/``edge_count``: the sum and number of the
  nearest-neighbour affinities (1 = same object) of the voxel links between the two nodes.

The score of two adjacent segments is the **mean boundary affinity** ``sum / count`` over all voxel
links between them; merging two segments adds the sums and counts of their boundaries with every
third segment, so the score of a merged segment is again a mean over voxel links.

:func:`region_adjacency` builds those tables from a label volume, and
:func:`multicut_segmentation` runs the whole chain (per-slice supervoxels, multicut, size merging)
on a volume in memory: ``pipeline.segment``'s default method on one block, and training's
validation.
"""

from __future__ import annotations

import heapq

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .conventions import FRAGMENT_ID_SHIFT, LOCAL_ID_MASK, affinities_as_float
from .supervoxels import SupervoxelSettings, consecutive_labels, slice_supervoxels

__all__ = ["DEFAULT_BETA", "DEFAULT_MIN_SIZE", "agglomerate", "components", "merge_small_segments", "multicut",
           "multicut_segmentation", "pair_statistics", "reduce_edges", "region_adjacency"]

#: Multicut boundary bias and size merging (voxels) of ``pipeline.segment``'s default, chosen with
#: the supervoxel settings (:class:`emcore.supervoxels.SupervoxelSettings`) on real FIB-SEM (gala-test
#: and the medulla training slices at 30x10x10 nm) and a synthetic slab with the shipped weights:
#: lowest mean VOI of the three (README "Segment"; ``benchmarks/model_quality.py --segment-sweep``).
DEFAULT_BETA = 0.4
DEFAULT_MIN_SIZE = 300


def pair_statistics(u: np.ndarray, v: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Unordered label pairs with the sum and count of ``weights`` per pair.

    Parameters
    ----------
    u, v
        (k,) labels at the two ends of each voxel link (pairs with ``u == v`` or a 0 are dropped).
    weights
        (k,) the link's affinity.

    Returns
    -------
    ``edges`` (m, 2) uint64 pairs (low, high), sorted; ``edge_sum`` (m,) float64 and
    ``edge_count`` (m,) int64 per pair.
    """
    keep = (u != v) & (u > 0) & (v > 0)
    u, v, weights = u[keep], v[keep], weights[keep]
    lo, hi = np.minimum(u, v).astype(np.uint64), np.maximum(u, v).astype(np.uint64)
    if len(lo) == 0:
        return {"edges": np.zeros((0, 2), np.uint64), "edge_sum": np.zeros(0), "edge_count": np.zeros(0, np.int64)}
    if hi.max() < 1 << 32:  # local labels: one 64-bit key per pair sorts ~3x faster than rows
        keys, inverse = np.unique((lo << FRAGMENT_ID_SHIFT) | hi, return_inverse=True)
        unique = np.stack([keys >> FRAGMENT_ID_SHIFT, keys & LOCAL_ID_MASK], axis=1)
    else:
        unique, inverse = np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return {"edges": unique,
            "edge_sum": np.bincount(inverse, weights=weights.astype(np.float64), minlength=len(unique)),
            "edge_count": np.bincount(inverse, minlength=len(unique)).astype(np.int64)}


def region_adjacency(labels: np.ndarray, nn_affs: np.ndarray) -> dict[str, np.ndarray]:
    """The region graph of a label volume: adjacent label pairs with their boundary statistics.

    Parameters
    ----------
    labels
        (z, y, x) integer labels; 0 has no edges.
    nn_affs
        (3, z, y, x) float nearest-neighbour affinities; channel ``axis`` at voxel ``p`` is the
        link from ``p`` to ``p - e_axis`` (offsets (-1, 0, 0), (0, -1, 0), (0, 0, -1)).

    Returns
    -------
    As :func:`pair_statistics`: ``edges``, and the sum and count of the affinities of every
    voxel link between the two labels (``edge_sum``, ``edge_count``).
    """
    us, vs, ws = [], [], []
    for axis in range(3):
        here = [slice(None)] * 3
        there = [slice(None)] * 3
        here[axis], there[axis] = slice(1, None), slice(None, -1)
        u, v = labels[tuple(here)], labels[tuple(there)]
        crossing = u != v  # only links between two labels count; gather just those
        us.append(u[crossing])
        vs.append(v[crossing])
        ws.append(nn_affs[axis][tuple(here)][crossing])
    return pair_statistics(np.concatenate(us), np.concatenate(vs), np.concatenate(ws))


def components(n_nodes: int, pairs: np.ndarray) -> np.ndarray:
    """Connected component of every node given undirected ``pairs`` (k, 2) of node indices."""
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n_nodes, n_nodes))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def reduce_edges(u: np.ndarray, v: np.ndarray, edge_sum: np.ndarray, edge_count: np.ndarray,
                 n_segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sum edge statistics per unordered segment pair (u < v), dropping pairs inside one segment."""
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    keep = lo != hi
    keys, inverse = np.unique(lo[keep] * n_segments + hi[keep], return_inverse=True)
    inverse = inverse.ravel()
    return (keys // n_segments, keys % n_segments, np.bincount(inverse, weights=edge_sum[keep], minlength=len(keys)),
            np.bincount(inverse, weights=edge_count[keep], minlength=len(keys)))


def _segment_graph(labels: np.ndarray, edges: np.ndarray, edge_sum: np.ndarray,
                   edge_count: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Number of segments and the segment pairs (u < v) with float64 boundary sums and counts."""
    n_segments = int(labels.max(initial=-1)) + 1
    return (n_segments, *reduce_edges(labels[edges[:, 0]], labels[edges[:, 1]], edge_sum.astype(np.float64),
                                      edge_count.astype(np.float64), n_segments))


def agglomerate(labels: np.ndarray, edges: np.ndarray, edge_sum: np.ndarray, edge_count: np.ndarray, *,
                threshold: float) -> np.ndarray:
    """Hierarchical agglomeration by mean boundary affinity, stopping at ``threshold``.

    Repeatedly merges the two adjacent segments with the highest mean boundary affinity
    ``sum / count`` while it exceeds ``threshold``; after each merge the boundaries of the merged
    segment are rescored from the added sums and counts. This is the merge rule of waterz's
    ``OneMinus<MeanAffinity>`` scoring on a graph of segments instead of voxels (a waterz threshold
    ``t`` stops where the mean affinity reaches ``1 - t``). Ties go to the pair of smaller segment
    indices, so the result is deterministic.

    Parameters
    ----------
    labels
        (n,) segment index 0..S-1 of every node.
    edges, edge_sum, edge_count
        (m, 2) adjacent node pairs with the sum and count of NN affinities on their boundary.
    threshold
        Merging stops when no adjacent pair has a mean affinity above it (in [0, 1]).

    Returns
    -------
    (n,) segment index of every node after merging (a subset of the input indices).
    """
    n_segments, u, v, sums, counts = _segment_graph(labels, edges, edge_sum, edge_count)
    boundary: dict[int, dict[int, tuple[float, float]]] = {}
    queue = []
    for a, b, total, count in zip(u.tolist(), v.tolist(), sums.tolist(), counts.tolist()):
        boundary.setdefault(a, {})[b] = boundary.setdefault(b, {})[a] = (total, count)
        if total / count > threshold:
            queue.append((-total / count, a, b))
    heapq.heapify(queue)
    merged_into = np.arange(n_segments)
    while queue:
        negative_mean, a, b = heapq.heappop(queue)
        current = boundary.get(a, {}).get(b)
        if current is None or current[0] / current[1] != -negative_mean:
            continue  # a or b merged away, or this boundary was rescored since it was queued
        keep, gone = (a, b) if len(boundary[a]) >= len(boundary[b]) else (b, a)
        merged_into[gone] = keep
        kept = boundary[keep]
        del kept[gone]
        for neighbour, (total, count) in boundary.pop(gone).items():
            if neighbour == keep:
                continue
            theirs = boundary[neighbour]
            del theirs[gone]
            if neighbour in kept:
                total, count = total + kept[neighbour][0], count + kept[neighbour][1]
            kept[neighbour] = theirs[keep] = (total, count)
            if total / count > threshold:
                heapq.heappush(queue, (-total / count, min(keep, neighbour), max(keep, neighbour)))
    while True:
        root = merged_into[merged_into]
        if np.array_equal(root, merged_into):
            return merged_into[labels]
        merged_into = root


def multicut(labels: np.ndarray, edges: np.ndarray, edge_sum: np.ndarray, edge_count: np.ndarray, *,
             beta: float = DEFAULT_BETA) -> np.ndarray:
    """Partition the segments by a multicut of their region graph (elf, Kernighan-Lin from a greedy start).

    The cut probability of two adjacent segments is ``p = 1 - sum / count`` (one minus their mean
    boundary affinity), mapped linearly onto [0.001, 0.999]; the edge cost is
    ``log((1 - p) / p) + log((1 - beta) / beta)`` (positive: join, negative: cut) times
    ``count / max(count)``, so long boundaries weigh more (elf's ``transform_probabilities_to_costs``
    with edge sizes).

    Parameters
    ----------
    labels, edges, edge_sum, edge_count
        The region graph, as for :func:`agglomerate`.
    beta
        Boundary bias in (0, 1): above 0.5 cuts more, below 0.5 joins more.

    Returns
    -------
    (n,) segment index of every node after the multicut (segments without edges stay apart).
    """
    from bioimage_cpp.graph import UndirectedGraph
    from elf.segmentation.multicut import multicut_kernighan_lin, transform_probabilities_to_costs

    n_segments, u, v, sums, counts = _segment_graph(labels, edges, edge_sum, edge_count)
    if len(u) == 0:
        return labels.copy()
    graph = UndirectedGraph(n_segments, np.stack([u, v], axis=1).astype(np.uint64), True)
    costs = transform_probabilities_to_costs(1.0 - sums / counts, beta=beta, edge_sizes=counts)
    return np.asarray(multicut_kernighan_lin(graph, costs)).astype(np.int64)[labels]


def merge_small_segments(labels: np.ndarray, sizes: np.ndarray, edges: np.ndarray, edge_sum: np.ndarray,
                         edge_count: np.ndarray, *, min_size: int, merge_floor: float) -> np.ndarray:
    """Merge segments below ``min_size`` into their best neighbour, in rounds, until none can.

    Parameters
    ----------
    labels
        (n,) segment index 0..S-1 of every node.
    sizes
        (n,) voxel count of every node; segment size is the sum over its nodes.
    edges, edge_sum, edge_count
        (m, 2) adjacent node pairs with the sum and count of NN affinities on their boundary.
    min_size, merge_floor
        A segment with fewer than ``min_size`` voxels merges into the neighbour with the highest
        mean affinity when that mean is above ``merge_floor`` (ties: smaller segment index).

    Returns
    -------
    (n,) segment index of every node after merging (not consecutive).
    """
    labels = labels.copy()
    u, v = labels[edges[:, 0]], labels[edges[:, 1]]
    edge_sum, edge_count = edge_sum.astype(np.float64), edge_count.astype(np.float64)
    while min_size > 0:
        n_segments = int(labels.max(initial=-1)) + 1
        segment_sizes = np.bincount(labels, weights=sizes, minlength=n_segments)
        u, v, edge_sum, edge_count = reduce_edges(u, v, edge_sum, edge_count, n_segments)
        mean = edge_sum / np.maximum(edge_count, 1)
        source = np.concatenate([u, v])
        target = np.concatenate([v, u])
        score = np.concatenate([mean, mean])
        candidate = (segment_sizes[source] < min_size) & (segment_sizes[source] > 0) & (score > merge_floor)
        if not candidate.any():
            break
        source, target, score = source[candidate], target[candidate], score[candidate]
        order = np.lexsort((target, -score, source))
        first = np.ones(len(order), bool)
        first[1:] = source[order][1:] != source[order][:-1]
        best = order[first]
        pairs = np.stack([source[best], target[best]], axis=1)
        merged = components(n_segments, pairs)
        labels, u, v = merged[labels], merged[u], merged[v]
    return labels


def multicut_segmentation(nn_affs: np.ndarray, *, beta: float = DEFAULT_BETA, min_size: int = DEFAULT_MIN_SIZE,
                          supervoxels: SupervoxelSettings = SupervoxelSettings()) -> np.ndarray:
    """Segment a volume in memory: per-slice supervoxels, :func:`multicut`, :func:`merge_small_segments`.

    The same steps as ``pipeline.segment --method multicut`` on one block (``merge_floor`` 0).

    Parameters
    ----------
    nn_affs
        (3, z, y, x) nearest-neighbour affinities (offsets (-1, 0, 0), (0, -1, 0), (0, 0, -1)),
        1 = same object; float in [0, 1] or uint8 (``round(255 a)``).
    beta, min_size
        Multicut boundary bias in (0, 1) and the size (voxels) below which a segment merges.
    supervoxels
        Settings of the per-slice watershed (:class:`emcore.supervoxels.SupervoxelSettings`).

    Returns
    -------
    (z, y, x) uint64 labels 1..K (:func:`emcore.supervoxels.consecutive_labels` of the segments).
    """
    nn_affs = affinities_as_float(nn_affs)
    fragments = slice_supervoxels(nn_affs, supervoxels)
    n_nodes = int(fragments.max())
    graph = region_adjacency(fragments, nn_affs)
    edges = graph["edges"].astype(np.int64) - 1
    segments = multicut(np.arange(n_nodes), edges, graph["edge_sum"], graph["edge_count"], beta=beta)
    sizes = np.bincount(fragments.ravel().astype(np.int64), minlength=n_nodes + 1)[1:]
    segments = merge_small_segments(segments, sizes, edges, graph["edge_sum"], graph["edge_count"],
                                    min_size=min_size, merge_floor=0.0)
    return consecutive_labels(segments)[fragments.astype(np.int64) - 1]
