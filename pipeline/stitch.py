"""Stitching and size merging on small tables: fragment tables -> lookup table.

Two steps, neither reads the fragment or affinity volumes:

1. :func:`stitch_faces` (blockwise, per block ``B`` and each lower face neighbour ``A``): the two
   label slabs pass 1 saved over the box both halo'd blocks cover give a contingency table
   (A label, B label) -> voxel count. **Mutual-majority rule**: a pair is joined only if its count
   exceeds ``majority`` (default 0.5) of the A label's voxels *and* of the B label's voxels in that
   box, so each label joins at most one label per face and one false overlap cannot merge two
   large objects (``halo_uf``, docs/conventions.md §3). A label with no voxel in its own block
   (it exists only in the halo) is never joined: it lies where its block's mutex watershed had the
   least context, and across two faces of one block it could bridge two objects that the
   neighbours' own fragments keep apart (at 100x1024x1024 one such label cost 0.015 ARAND). The
   same slabs give the region adjacency across the face: (A label on the last plane of A, B label
   on the first plane of B) with the sum/count of the NN affinities of those links.
2. :func:`build_lookup` (global, small tables only): union-find (``connected_components``) over
   all joined pairs, then **agglomeration** if ``agglomerate`` is set (adjacent segments merge in
   order of their mean NN affinity on the shared boundary while it exceeds ``agglomerate``,
   :func:`emcore.regiongraph.agglomerate`) or a **multicut** of the region graph if ``multicut``
   (:func:`emcore.regiongraph.multicut`, boundary bias ``beta``), then **size merging**: every
   segment smaller than ``min_size`` voxels (global size, summed over blocks) merges into the
   adjacent segment of highest mean NN affinity on their shared boundary, if that mean exceeds
   ``merge_floor``; rounds repeat on the merged graph until no small segment has such a neighbour.
   Segment id = smallest fragment id of the segment, or 1..K in that order with ``consecutive``.

Node numbering: fragment ``b << 32 | l`` of block ``b`` (``l`` in 1..n_b) is node
``node_offsets[b] + l - 1``; the lookup table stores one value per node so pass 2 maps a block
with one gather.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from emcore.blocks import BlockGrid, load_npz, save_npz_atomic
from emcore.conventions import FRAGMENT_ID_SHIFT, LOCAL_ID_MASK, fragment_block, fragment_ids, fragment_local
from emcore.regiongraph import DEFAULT_BETA, agglomerate, components, merge_small_segments, multicut, pair_statistics

from .fragments import load_slab, table_path

__all__ = ["StitchParams", "stitch_faces", "build_lookup", "face_path", "lookup_path"]


@dataclass(frozen=True)
class StitchParams:
    """Parameters of stitching and size merging (picklable)."""

    workdir: str
    shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    majority: float = 0.5
    agglomerate: float | None = None
    multicut: bool = False
    beta: float = DEFAULT_BETA
    min_size: int = 0
    merge_floor: float = 0.0
    consecutive: bool = False

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.shape, self.block_shape)


def face_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, "faces", f"{index}.npz")


def lookup_path(workdir: str) -> str:
    return os.path.join(workdir, "lookup.npz")


def stitch_faces(params: StitchParams, index: int) -> None:
    """Joined pairs and cross-face adjacency between block ``index`` and its lower neighbours."""
    grid = params.grid
    block = grid.block(index)
    merges, us, vs, ws = [], [], [], []
    mine = load_npz(table_path(params.workdir, index))
    b_sizes = mine["sizes"]
    for axis in range(3):
        lower = grid.neighbour(block, axis, -1)
        if lower is None:
            continue
        b_slab, begin = load_slab(mine, axis, -1)
        theirs = load_npz(table_path(params.workdir, lower))
        a_slab, a_begin = load_slab(theirs, axis, 1)
        a_sizes = theirs["sizes"]
        if a_slab.shape != b_slab.shape or not np.array_equal(begin, a_begin):
            raise ValueError(f"face tables of blocks {lower} and {index} disagree: rerun pass 1 with --overwrite")
        pairs = mutual_majority(a_slab.ravel(), b_slab.ravel(), params.majority)
        pairs = pairs[(a_sizes[pairs[:, 0]] > 0) & (b_sizes[pairs[:, 1]] > 0)]
        merges.append(np.stack([fragment_ids(lower, pairs[:, 0]), fragment_ids(index, pairs[:, 1])], axis=1))
        plane = [slice(bg - o, e - o) for bg, e, o in zip(block.begin, block.end, begin)]
        plane[axis] = block.begin[axis] - int(begin[axis])
        b_plane = tuple(plane)
        plane[axis] -= 1
        us.append(fragment_ids(lower, a_slab[tuple(plane)].ravel()))
        vs.append(fragment_ids(index, b_slab[b_plane].ravel()))
        ws.append(mine[f"face_aff_{axis}"].ravel())
    empty = np.zeros(0, np.uint64)
    stats = pair_statistics(np.concatenate(us or [empty]), np.concatenate(vs or [empty]),
                            np.concatenate(ws or [np.zeros(0)]))
    joined = np.concatenate(merges) if merges else np.zeros((0, 2), np.uint64)
    save_npz_atomic(face_path(params.workdir, index), {"merges": joined, **stats})


def mutual_majority(a: np.ndarray, b: np.ndarray, majority: float = 0.5) -> np.ndarray:
    """Pairs (a, b) whose overlap count exceeds ``majority`` of both labels' counts (background 0 excluded).

    ``a`` and ``b`` are equally long label arrays over the same voxels, values in [0, 2^32) (a
    block's local labels). Returns (k, 2) uint64 pairs. One sort of the combined key
    ``a << 32 | b`` gives the overlap counts; a label's total is the sum of its pairs' counts.
    """
    if len(a) == 0:
        return np.zeros((0, 2), np.uint64)
    keys, counts = np.unique((a.astype(np.uint64) << FRAGMENT_ID_SHIFT) | b.astype(np.uint64), return_counts=True)
    pa, pb = keys >> FRAGMENT_ID_SHIFT, keys & LOCAL_ID_MASK
    starts = np.flatnonzero(np.r_[True, pa[1:] != pa[:-1]])  # keys are sorted by a first
    a_total = np.repeat(np.add.reduceat(counts, starts), np.diff(np.r_[starts, len(pa)]))
    _, b_inverse = np.unique(pb, return_inverse=True)
    b_total = np.bincount(b_inverse, weights=counts)[b_inverse]
    keep = (counts > majority * a_total) & (counts > majority * b_total) & (pa > 0) & (pb > 0)
    return np.stack([pa[keep], pb[keep]], axis=1)


def build_lookup(params: StitchParams) -> dict[str, int]:
    """Global step: union-find over joined pairs, agglomeration or multicut, size merging -> ``lookup.npz``;
    returns counts."""
    n_blocks = params.grid.n_blocks
    n_labels, sizes, edges, sums, counts, merges = [], [], [], [], [], []
    for index in range(n_blocks):
        table, face = load_npz(table_path(params.workdir, index)), load_npz(face_path(params.workdir, index))
        n_labels.append(int(table["n_labels"]))
        sizes.append(table["sizes"][1:])
        edges += [fragment_ids(index, table["edges"]), face["edges"]]
        sums += [table["edge_sum"], face["edge_sum"]]
        counts += [table["edge_count"], face["edge_count"]]
        merges.append(face["merges"])
    node_offsets = np.concatenate([[0], np.cumsum(n_labels)]).astype(np.int64)
    n_nodes = int(node_offsets[-1])
    to_node = _node_mapper(node_offsets)
    joined = to_node(np.concatenate(merges).reshape(-1, 2))
    segments = components(n_nodes, joined)
    node_sizes = np.concatenate(sizes).astype(np.int64)
    edge_nodes = to_node(np.concatenate(edges).reshape(-1, 2))
    edge_sum, edge_count = np.concatenate(sums), np.concatenate(counts)
    n_stitched = len(np.unique(segments[node_sizes > 0]))
    if params.multicut:
        segments = multicut(segments, edge_nodes, edge_sum, edge_count, beta=params.beta)
    elif params.agglomerate is not None:
        segments = agglomerate(segments, edge_nodes, edge_sum, edge_count, threshold=params.agglomerate)
    n_partitioned = len(np.unique(segments[node_sizes > 0]))
    segments = merge_small_segments(segments, node_sizes, edge_nodes, edge_sum, edge_count,
                                    min_size=params.min_size, merge_floor=params.merge_floor)
    values = _segment_ids(segments, node_offsets, node_sizes, params.consecutive)
    save_npz_atomic(lookup_path(params.workdir), {"node_offsets": node_offsets, "values": values})
    n_final = len(np.unique(segments[node_sizes > 0]))
    return {"fragments": int((node_sizes > 0).sum()), "stitched": n_stitched, "partitioned": n_partitioned,
            "segments": n_final}


def _node_mapper(node_offsets: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Function mapping global fragment ids to node indices."""
    def to_node(ids: np.ndarray) -> np.ndarray:
        return node_offsets[fragment_block(ids).astype(np.int64)] + fragment_local(ids).astype(np.int64) - 1
    return to_node


def _segment_ids(segments: np.ndarray, node_offsets: np.ndarray, node_sizes: np.ndarray,
                 consecutive: bool) -> np.ndarray:
    """Output id per node: smallest fragment id of its segment, or 1..K in that order."""
    present = np.unique(segments[node_sizes > 0])
    _, first = np.unique(segments, return_index=True)
    blocks = np.searchsorted(node_offsets, first, side="right") - 1
    min_ids = fragment_ids(blocks, first - node_offsets[blocks] + 1)
    by_segment = np.zeros(int(segments.max(initial=-1)) + 1, np.uint64)
    by_segment[np.unique(segments)] = min_ids
    if consecutive:
        ranks = np.zeros(len(by_segment), np.uint64)
        ranks[present[np.argsort(by_segment[present], kind="stable")]] = np.arange(1, len(present) + 1, dtype=np.uint64)
        by_segment = ranks
    return by_segment[segments]
