"""Merge rules on the region graph of segments: components, agglomeration, multicut, size merging.

The graph is given as node arrays and edge arrays, never as voxels, so every rule here runs on the
small tables of :mod:`pipeline.stitch` whatever the volume size:

* ``labels``: (n,) segment index of every node (a node is one block's fragment);
* ``edges``: (m, 2) adjacent node pairs; ``edge_sum``/``edge_count``: the sum and number of the
  nearest-neighbour affinities (1 = same object) of the voxel links between the two nodes.

The score of two adjacent segments is the **mean boundary affinity** ``sum / count`` over all voxel
links between them; merging two segments adds the sums and counts of their boundaries with every
third segment, so the score of a merged segment is again a mean over voxel links.
"""

from __future__ import annotations

import heapq

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["agglomerate", "components", "merge_small_segments", "multicut", "reduce_edges"]


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
             beta: float = 0.5) -> np.ndarray:
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
